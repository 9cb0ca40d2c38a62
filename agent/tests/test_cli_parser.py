"""The tool's parser: only the called command's is built, and it answers the same."""

import pytest

from pyctdb.tools import cli


@pytest.mark.parametrize("argv, word", [
    (["status"], "status"),
    (["--socket", "/x", "-X", "status"], "status"),
    (["-n", "2", "ping"], "ping"),
    (["-t", "3", "--json", "getvar", "MonitorInterval"], "getvar"),
    (["--socket=/x", "ip", "all"], "ip"),
    (["-X"], None),
    ([], None),
])
def test_the_command_word_is_found_past_the_common_options(argv, word):
    assert cli.command_word(argv) == word


def test_one_command_s_parser_parses_as_the_whole_one():
    argv = ["-X", "-t", "3", "getvar", "MonitorInterval"]
    whole = vars(cli.build_parser().parse_args(argv))
    one = vars(cli.build_parser(cli.command_word(argv)).parse_args(argv))
    assert one == whole == {"X": True, "timeout": 3.0, "command": "getvar",
                            "name": "MonitorInterval"}
    sub = cli.build_parser("getvar")._subparsers._group_actions[0].choices
    assert list(sub) == ["getvar"]


def test_an_unknown_command_gets_the_whole_parser_s_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["nosuchcommand"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nosuchcommand'" in err and "'status'" in err


def test_a_command_s_usage_error_is_its_own(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["getvar"])
    assert e.value.code == 2
    assert "usage: pyctdb getvar" in capsys.readouterr().err
