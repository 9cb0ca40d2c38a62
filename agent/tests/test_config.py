"""Configuration files: nodes, public_addresses, pyctdb.conf, and loading a directory."""

import os
import socket
import sys

import pytest

from pyctdb.common import config as C
from pyctdb.common.config import (Config, NodeEntry, PublicAddress, load_config, parse_conf,
                                  parse_nodes, parse_public_addresses, resolve_node_address)
from pyctdb.errors import ConfigError

NODES = "/etc/pyctdb/nodes"
PA = "/etc/pyctdb/public_addresses"
CONF = "/etc/pyctdb/pyctdb.conf"


def raises_at(path, line, fragment, fn, *args):
    """Assert ``fn(*args)`` raises ConfigError at ``path:line`` mentioning ``fragment``."""
    with pytest.raises(ConfigError) as ei:
        fn(*args)
    e = ei.value
    assert (e.path, e.line) == (path, line), str(e)
    prefix = f"{path}:{line}: " if line is not None else f"{path}: "
    assert str(e).startswith(prefix), str(e)
    assert fragment in str(e), str(e)
    return e


# -- ConfigError ------------------------------------------------------------------------
def test_config_error_str():
    assert str(ConfigError("/a/b", 7, "bad")) == "/a/b:7: bad"
    assert str(ConfigError("/a/b", None, "bad")) == "/a/b: bad"
    assert str(ConfigError(None, None, "bad")) == "bad"
    e = ConfigError("/a/b", 3, "oops")
    assert (e.path, e.line, e.message) == ("/a/b", 3, "oops")
    assert isinstance(e, Exception)


# -- nodes ------------------------------------------------------------------------------
def test_nodes_simple():
    assert parse_nodes("10.0.0.1\n10.0.0.2\n10.0.0.3\n", NODES) == [
        NodeEntry(0, "10.0.0.1", False), NodeEntry(1, "10.0.0.2", False),
        NodeEntry(2, "10.0.0.3", False)]


def test_nodes_whitespace_and_blank_lines():
    text = "\n  10.0.0.1  \n\n\t10.0.0.2\t\n\n\n"
    assert parse_nodes(text, NODES) == [NodeEntry(0, "10.0.0.1", False),
                                        NodeEntry(1, "10.0.0.2", False)]


def test_nodes_deleted_keep_their_pnn():
    text = "10.0.0.1\n#10.0.0.2\n\n  # 10.0.0.3 gone\n10.0.0.4\n#\n10.0.0.5\n"
    nodes = parse_nodes(text, NODES)
    assert nodes == [NodeEntry(0, "10.0.0.1", False), NodeEntry(1, None, True),
                     NodeEntry(2, None, True), NodeEntry(3, "10.0.0.4", False),
                     NodeEntry(4, None, True), NodeEntry(5, "10.0.0.5", False)]
    assert [n.pnn for n in Config(nodes=nodes).active_nodes()] == [0, 3, 5]


def test_nodes_deleted_address_may_be_reused():
    nodes = parse_nodes("#10.0.0.1\n10.0.0.1\n", NODES)
    assert nodes == [NodeEntry(0, None, True), NodeEntry(1, "10.0.0.1", False)]


def test_nodes_ipv6_normalised():
    nodes = parse_nodes("FD00:0:0::0001\n2001:db8::a\n10.0.0.1\n", NODES)
    assert [n.address for n in nodes] == ["fd00::1", "2001:db8::a", "10.0.0.1"]


def test_nodes_loopback_allowed():
    assert parse_nodes("127.0.0.1\n127.0.0.2\n::1\n", NODES)[2].address == "::1"


@pytest.mark.parametrize("text,line,fragment", [
    ("10.0.0.1\n10.0.0.300\n", 2, 'invalid IP address "10.0.0.300"'),
    ("10.0.0.1\n\nnode2.example.com\n", 3, 'invalid IP address "node2.example.com"'),
    ("10.0.0.1/24\n", 1, 'invalid IP address "10.0.0.1/24"'),
    ("10.0.0.1 10.0.0.2\n", 1, 'invalid IP address "10.0.0.1 10.0.0.2"'),
    ("10.0.0.1\n0.0.0.0\n", 2, "unspecified address"),
    ("::\n", 1, "unspecified address"),
    ("224.0.0.1\n", 1, '"224.0.0.1" is a multicast address; a node address must be a '
                       'unicast address'),
    ("ff02::1\n", 1, "multicast"),
    ("255.255.255.255\n", 1, "broadcast"),
    ("10.0.0.1\n#x\n10.0.0.1\n", 3, 'duplicate node address "10.0.0.1" (already on '
                                    'line 1 as PNN 0)'),
    ("fd00::1\nfd00:0::0:1\n", 2, 'duplicate node address "fd00::1"'),
])
def test_nodes_errors(text, line, fragment):
    raises_at(NODES, line, fragment, parse_nodes, text, NODES)


@pytest.mark.parametrize("text,fragment", [
    ("", "no nodes"), ("\n\n  \n", "no nodes"), ("#10.0.0.1\n#10.0.0.2\n",
                                                  "only deleted (#) nodes"),
])
def test_nodes_need_an_active_node(text, fragment):
    raises_at(NODES, None, fragment, parse_nodes, text, NODES)


# -- public_addresses -------------------------------------------------------------------
def test_public_addresses():
    text = ("# public addresses\n"
            "10.0.1.10/24 eth1\n"
            "\n"
            "   10.0.1.11/24\teth1,eth2   \n"
            "FD00:1::0A/64 bond0.100\n"
            "192.168.7.1/32 a-b_c@d\n")
    assert parse_public_addresses(text, PA) == [
        PublicAddress("10.0.1.10", 24, ("eth1",)),
        PublicAddress("10.0.1.11", 24, ("eth1", "eth2")),
        PublicAddress("fd00:1::a", 64, ("bond0.100",)),
        PublicAddress("192.168.7.1", 32, ("a-b_c@d",)),
    ]
    assert str(PublicAddress("10.0.1.11", 24, ("eth1", "eth2"))) == "10.0.1.11/24 eth1,eth2"


def test_public_addresses_empty():
    assert parse_public_addresses("", PA) == []
    assert parse_public_addresses("# nothing\n\n", PA) == []


@pytest.mark.parametrize("text,line,fragment", [
    ("10.0.1.10/24\n", 1, 'missing interface after "10.0.1.10/24"'),
    ("10.0.1.10 eth1\n", 1, 'missing mask bits in "10.0.1.10"'),
    ("\n10.0.1.300/24 eth1\n", 2, 'invalid IP address "10.0.1.300"'),
    ("0.0.0.0/0 eth1\n", 1, "unspecified address"),
    ("239.1.1.1/24 eth1\n", 1, "multicast"),
    ("10.0.1.10/33 eth1\n", 1, 'invalid mask bits "33" for 10.0.1.10 (expected 1 to 32)'),
    ("10.0.1.10/0 eth1\n", 1, "expected 1 to 32"),
    ("10.0.1.10/ eth1\n", 1, 'invalid mask bits ""'),
    ("10.0.1.10/2x eth1\n", 1, 'invalid mask bits "2x"'),
    ("10.0.1.10/-1 eth1\n", 1, "invalid mask bits"),
    ("fd00::1/129 eth1\n", 1, "expected 1 to 128"),
    ("10.0.1.10/24 eth1 eth2\n", 1, 'unexpected "eth2"'),
    ("10.0.1.10/24 eth1, eth2\n", 1, 'unexpected "eth2"'),
    ("10.0.1.10/24 eth1,\n", 1, "empty interface name"),
    ("10.0.1.10/24 ,eth1\n", 1, "empty interface name"),
    ("10.0.1.10/24 eth1,,eth2\n", 1, "empty interface name"),
    ("10.0.1.10/24 abcdefghijklmnop\n", 1, 'interface name "abcdefghijklmnop" is too '
                                           'long (16 bytes; at most 15)'),
    ("10.0.1.10/24 eth1:0\n", 1, 'invalid interface name "eth1:0"'),
    ("10.0.1.10/24 eth/1\n", 1, 'invalid interface name "eth/1"'),
    ("10.0.1.10/24 ..\n", 1, 'invalid interface name ".."'),
    ("10.0.1.10/24 eth1,eth1\n", 1, 'interface "eth1" is listed twice'),
    ("10.0.1.10/24 eth1\n# c\n10.0.1.10/16 eth2\n", 3, 'duplicate public address '
                                                     '"10.0.1.10" (already on line 1)'),
])
def test_public_addresses_errors(text, line, fragment):
    raises_at(PA, line, fragment, parse_public_addresses, text, PA)


def test_public_addresses_15_char_interface_ok():
    assert parse_public_addresses("10.0.0.1/8 abcdefghijklmno\n", PA)[0].interfaces == (
        "abcdefghijklmno",)


# -- pyctdb.conf ------------------------------------------------------------------------
FULL_CONF = """\
# pyctdb configuration
; semicolon comment
[logging]
    location = syslog:udp
    log level = debug

[cluster]
    transport = tcp
    node address = 10.0.0.2
    cluster lock = !/usr/libexec/ctdb/ctdb_mutex_fcntl_helper /shared/.lock
    leader timeout = 10
    leader capability = no
    nodes list = /shared/nodes
    port = 5000

[database]
    volatile database directory = /srv/db/volatile
    persistent database directory = /srv/db/persistent/
    state database directory = /srv/db/state
    lock debug script = debug_locks.sh
    tdb mutexes = off

[event]
    debug script = debug-hung-script.sh

[failover]
    disabled = yes

[legacy]
    realtime scheduling = FALSE
    lmaster capability = 0
    start as stopped = on
    start as disabled = 1
    script log level = info
"""


def test_parse_conf_empty():
    assert parse_conf("", CONF) == {}
    assert parse_conf("# just comments\n; and these\n\n[cluster]\n", CONF) == {}


def test_parse_conf_full():
    assert parse_conf(FULL_CONF, CONF) == {
        ("logging", "location"): "syslog:udp",
        ("logging", "log level"): "DEBUG",
        ("cluster", "transport"): "tcp",
        ("cluster", "node address"): "10.0.0.2",
        ("cluster", "cluster lock"):
            "!/usr/libexec/ctdb/ctdb_mutex_fcntl_helper /shared/.lock",
        ("cluster", "leader timeout"): 10,
        ("cluster", "leader capability"): False,
        ("cluster", "nodes list"): "/shared/nodes",
        ("cluster", "port"): 5000,
        ("database", "volatile database directory"): "/srv/db/volatile",
        ("database", "persistent database directory"): "/srv/db/persistent",
        ("database", "state database directory"): "/srv/db/state",
        ("database", "lock debug script"): "debug_locks.sh",
        ("database", "tdb mutexes"): False,
        ("event", "debug script"): "debug-hung-script.sh",
        ("failover", "disabled"): True,
        ("legacy", "realtime scheduling"): False,
        ("legacy", "lmaster capability"): False,
        ("legacy", "start as stopped"): True,
        ("legacy", "start as disabled"): True,
        ("legacy", "script log level"): "INFO",
    }


def test_parse_conf_names_are_case_and_space_insensitive():
    text = "[  CLUSTER ]\n  Node\t  ADDRESS=fd00::0001\nLEADER   timeout   =   7  \n"
    assert parse_conf(text, CONF) == {("cluster", "node address"): "fd00::1",
                                      ("cluster", "leader timeout"): 7}


def test_parse_conf_repeated_section_is_fine():
    text = "[cluster]\nport = 1\n[logging]\nlog level = INFO\n[cluster]\nleader timeout=2\n"
    assert parse_conf(text, CONF) == {("cluster", "port"): 1,
                                      ("logging", "log level"): "INFO",
                                      ("cluster", "leader timeout"): 2}


@pytest.mark.parametrize("value", ["file:/var/log/x.log", "syslog", "syslog:nonblocking",
                                   "syslog:udp", "syslog:udp-rfc5424", "stderr"])
def test_parse_conf_log_locations(value):
    assert parse_conf(f"[logging]\nlocation = {value}\n", CONF) == {
        ("logging", "location"): value}


@pytest.mark.parametrize("word,value", [
    ("true", True), ("TRUE", True), ("yes", True), ("On", True), ("1", True),
    ("false", False), ("No", False), ("off", False), ("0", False)])
def test_parse_conf_booleans(word, value):
    assert parse_conf(f"[failover]\ndisabled = {word}\n", CONF) == {
        ("failover", "disabled"): value}


def test_parse_conf_optional_empty_means_none():
    text = "[cluster]\nnode address =\ncluster lock = \n[event]\ndebug script=\n"
    assert parse_conf(text, CONF) == {("cluster", "node address"): None,
                                      ("cluster", "cluster lock"): None,
                                      ("event", "debug script"): None}


def test_parse_conf_recovery_lock_alias():
    assert parse_conf("[cluster]\nrecovery lock = /shared/lock\n", CONF) == {
        ("cluster", "recovery lock"): "/shared/lock"}


def test_parse_conf_hex_port():
    assert parse_conf("[cluster]\nport = 0x1000\n", CONF) == {("cluster", "port"): 4096}


@pytest.mark.parametrize("text,line,fragment", [
    ("[cluster]\nnode adress = 10.0.0.1\n", 2,
     'unknown option "node adress" in section [cluster] (known: cluster lock, '
     'leader capability, '),
    ("[cluster]\nnode adress = 10.0.0.1\n", 2, 'did you mean "node address"?'),
    ("[cluster]\nlog level = DEBUG\n", 2, '"log level" belongs in [logging]'),
    ("\n[foobar]\n", 2, "unknown section [foobar] (known: [logging], [cluster], "
                        "[database], [event], [failover], [legacy])"),
    ("[cluster\n", 1, 'malformed section header "[cluster"'),
    ("# c\nport = 1\n", 2, 'option "port" is outside a section'),
    ("[cluster]\nport\n", 2, 'expected "option = value" or "[section]", not "port"'),
    ("[cluster]\n= 5\n", 2, 'missing option name before "="'),
    ("[cluster]\nport = 1\n\n[cluster]\nPort=2\n", 5,
     'option "port" in [cluster] is set twice (first on line 2)'),
    ("[cluster]\ncluster lock = /a\nrecovery lock = /b\n", 3,
     'both "cluster lock" and "recovery lock" are set (the other on line 2)'),
    ("[cluster]\nrecovery lock = /a\ncluster lock = /b\n", 3, 'keep only "cluster lock"'),
    ("[cluster]\nport =\n", 2, 'missing value for "port" in [cluster] (default: 4379)'),
    ("[failover]\ndisabled =\n", 2, "default: false"),
    ("[logging]\nlocation = /var/log/x\n", 2, 'invalid log location "/var/log/x"'),
    ("[logging]\nlocation = file:\n", 2, "expected file:/ABSOLUTE/PATH"),
    ("[logging]\nlocation = file:log.txt\n", 2, "must be an absolute path"),
    ("[logging]\nlocation = syslog:tcp\n", 2, 'unknown syslog method "tcp" (expected '
                                              'one of nonblocking, udp, udp-rfc5424)'),
    ("[logging]\nlog level = LOUD\n", 2, 'invalid log level "LOUD" (expected one of '
                                         'ERROR, WARNING, NOTICE, INFO, DEBUG)'),
    ("[legacy]\nscript log level = 3\n", 2, "invalid log level"),
    ("[cluster]\ntransport = ib\n", 2, 'unsupported transport "ib" (only tcp'),
    ("[cluster]\nnode address = 10.0.0.256\n", 2, 'invalid IP address "10.0.0.256"'),
    ("[cluster]\nnode address = 0.0.0.0\n", 2, "unspecified address"),
    ("[cluster]\ncluster lock = shared/lock\n", 2,
     "neither an absolute path nor a !command"),
    ("[cluster]\ncluster lock = !\n", 2, "empty command"),
    ("[cluster]\ncluster lock = !helper 'unbalanced\n", 2, "cannot parse command"),
    ("[cluster]\nnodes list = nodes\n", 2, "neither an absolute path nor a !command"),
    ("[cluster]\nleader timeout = 0\n", 2, "0 is out of range (expected an integer from "
                                          "1 to 3600 seconds)"),
    ("[cluster]\nleader timeout = 3601\n", 2, "out of range"),
    ("[cluster]\nleader timeout = 5s\n", 2, 'invalid number "5s"'),
    ("[cluster]\nleader timeout = -1\n", 2, "invalid number"),
    ("[cluster]\nport = 0\n", 2, "expected an integer from 1 to 65535"),
    ("[cluster]\nport = 65536\n", 2, "expected an integer from 1 to 65535"),
    ("[cluster]\nleader capability = maybe\n", 2, 'invalid boolean "maybe" (expected '
                                                  'true/false, yes/no, on/off or 1/0)'),
    ("[database]\nstate database directory = state\n", 2, "not an absolute path"),
    ("[database]\ntdb mutexes = 2\n", 2, "invalid boolean"),
    ("[logging]\nlog level = DEBUG # loud\n", 2, 'invalid log level "DEBUG # loud"'),
])
def test_parse_conf_errors(text, line, fragment):
    raises_at(CONF, line, fragment, parse_conf, text, CONF)


def test_parse_conf_error_names_option():
    e = raises_at(CONF, 2, "[cluster] port:", parse_conf, "[cluster]\nport = x\n", CONF)
    assert "port" in e.message


# -- load_config ------------------------------------------------------------------------
def write(d, name, text):
    p = os.path.join(str(d), name)
    with open(p, "w") as f:
        f.write(text)
    return p


@pytest.fixture
def etc(tmp_path):
    write(tmp_path, "nodes", "10.0.0.1\n10.0.0.2\n#10.0.0.3\n10.0.0.4\n")
    return tmp_path


def test_load_defaults(etc):
    c = load_config(str(etc))
    d = str(etc)
    assert c.config_dir == d
    assert c.conf_path == os.path.join(d, "pyctdb.conf")
    assert c.nodes_source == os.path.join(d, "nodes")
    assert [n.pnn for n in c.active_nodes()] == [0, 1, 3]
    assert c.nodes[2] == NodeEntry(2, None, True)
    assert c.public_addresses == []
    assert c.tunables == {}
    assert c.log_location == "file:/var/log/pyctdb.log"
    assert c.log_level == "NOTICE"
    assert c.transport == "tcp"
    assert c.node_address is None
    assert c.cluster_lock is None
    assert c.leader_timeout == 5
    assert c.leader_capability is True
    assert c.port == 4379
    assert c.volatile_db_dir == "/var/lib/pyctdb/volatile"
    assert c.persistent_db_dir == "/var/lib/pyctdb/persistent"
    assert c.state_db_dir == "/var/lib/pyctdb/state"
    assert c.failover_disabled is False
    assert c.lmaster_capability is True
    assert c.start_as_stopped is False
    assert c.start_as_disabled is False
    assert c.realtime_scheduling is True
    assert c.script_log_level == "ERROR"
    assert c.event_debug_script is None
    assert c.lock_debug_script is None
    assert c.tdb_mutexes is True


def test_config_dataclass_defaults_match_load(etc):
    loaded = load_config(str(etc))
    built = Config(config_dir=str(etc), nodes=loaded.nodes)
    assert built == loaded
    assert Config().conf_path == "/etc/pyctdb/pyctdb.conf"
    assert Config().nodes_source == "/etc/pyctdb/nodes"
    assert C.DEFAULT_CONFIG_DIR == "/etc/pyctdb"


def test_load_full(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    write(shared, "nodes", "10.0.0.1\n10.0.0.2\n")
    write(tmp_path, "pyctdb.conf", FULL_CONF.replace("/shared/nodes",
                                                     str(shared / "nodes")))
    write(tmp_path, "public_addresses", "10.0.1.10/24 eth1\n10.0.1.11/24 eth1,eth2\n")
    write(tmp_path, "pyctdb.tunables", "KeepaliveInterval=0.2\nkeepalivelimit=0x4\n")
    c = load_config(str(tmp_path))
    assert c.nodes_source == str(shared / "nodes")
    assert c.node_address == "10.0.0.2"
    assert c.cluster_lock.startswith("!/usr/libexec/ctdb/ctdb_mutex_fcntl_helper")
    assert (c.leader_timeout, c.leader_capability, c.port) == (10, False, 5000)
    assert (c.log_location, c.log_level) == ("syslog:udp", "DEBUG")
    assert c.persistent_db_dir == "/srv/db/persistent"
    assert c.lock_debug_script == "debug_locks.sh"
    assert c.event_debug_script == "debug-hung-script.sh"
    assert c.tdb_mutexes is False and c.failover_disabled is True
    assert (c.realtime_scheduling, c.lmaster_capability) == (False, False)
    assert (c.start_as_stopped, c.start_as_disabled) == (True, True)
    assert c.script_log_level == "INFO"
    assert c.public_addresses == [PublicAddress("10.0.1.10", 24, ("eth1",)),
                                  PublicAddress("10.0.1.11", 24, ("eth1", "eth2"))]
    assert c.tunables == {"KeepaliveInterval": 0.2, "KeepaliveLimit": 4}


def test_load_recovery_lock_alias(etc):
    write(etc, "pyctdb.conf", "[cluster]\nrecovery lock = /shared/.lock\n")
    assert load_config(str(etc)).cluster_lock == "/shared/.lock"


def test_load_missing_nodes_file(tmp_path):
    path = os.path.join(str(tmp_path), "nodes")
    e = raises_at(path, None, "nodes file not found", load_config, str(tmp_path))
    assert path in str(e)


def test_load_missing_config_dir(tmp_path):
    missing = os.path.join(str(tmp_path), "nope")
    raises_at(os.path.join(missing, "nodes"), None, "not found", load_config, missing)


def test_load_missing_nodes_list_file(etc):
    write(etc, "pyctdb.conf", "[cluster]\nnodes list = /nonexistent/pyctdb-nodes\n")
    raises_at("/nonexistent/pyctdb-nodes", None, "nodes file not found", load_config,
              str(etc))


def test_load_unreadable_file(etc):
    os.mkdir(os.path.join(str(etc), "pyctdb.conf"))  # reading a directory fails
    e = raises_at(os.path.join(str(etc), "pyctdb.conf"), None, "cannot read:", load_config,
                  str(etc))
    assert "directory" in str(e).lower()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_load_permission_denied(etc):
    p = write(etc, "public_addresses", "10.0.1.10/24 eth1\n")
    os.chmod(p, 0)
    raises_at(p, None, "cannot read: Permission denied", load_config, str(etc))


def test_load_not_utf8(etc):
    with open(os.path.join(str(etc), "pyctdb.conf"), "wb") as f:
        f.write(b"[cluster]\n\nport = \xff\n")
    raises_at(os.path.join(str(etc), "pyctdb.conf"), 3, "not valid UTF-8", load_config,
              str(etc))


@pytest.mark.parametrize("name,text,line,fragment", [
    ("nodes", "10.0.0.1\n10.0.0.300\n", 2, 'invalid IP address "10.0.0.300"'),
    ("public_addresses", "10.0.1.1/24\n", 1, "missing interface"),
    ("pyctdb.tunables", "\nBogus=1\n", 2, 'no such tunable "Bogus"'),
    ("pyctdb.conf", "[cluster]\n\nnode adress = 10.0.0.1\n", 3, "unknown option"),
])
def test_load_reports_file_and_line(etc, name, text, line, fragment):
    p = write(etc, name, text)
    raises_at(p, line, fragment, load_config, str(etc))


def test_load_node_address_must_be_a_node(etc):
    p = write(etc, "pyctdb.conf", "[logging]\nlog level = INFO\n[cluster]\n"
                                  "node address = 10.0.0.9\n")
    e = raises_at(p, 4, '[cluster] node address "10.0.0.9" is not a node in', load_config,
                  str(etc))
    assert "10.0.0.1, 10.0.0.2, 10.0.0.4" in str(e)


def test_load_node_address_may_not_be_deleted_node(etc):
    p = write(etc, "pyctdb.conf", "[cluster]\nnode address = 10.0.0.3\n")
    raises_at(p, 2, "is not a node in", load_config, str(etc))


def test_load_node_address_normalised(tmp_path):
    write(tmp_path, "nodes", "fd00::1\nfd00::2\n")
    write(tmp_path, "pyctdb.conf", "[cluster]\nnode address = FD00:0::2\n")
    c = load_config(str(tmp_path))
    assert c.node_address == "fd00::2"
    assert resolve_node_address(c) == NodeEntry(1, "fd00::2", False)


def test_load_nodes_list_command(tmp_path):
    write(tmp_path, "pyctdb.conf",
          "[cluster]\nnodes list = !printf '10.0.0.1\\n#10.0.0.2\\n10.0.0.3\\n'\n")
    c = load_config(str(tmp_path))
    assert c.nodes_source == "!printf '10.0.0.1\\n#10.0.0.2\\n10.0.0.3\\n'"
    assert c.nodes == [NodeEntry(0, "10.0.0.1", False), NodeEntry(1, None, True),
                       NodeEntry(2, "10.0.0.3", False)]


def test_load_nodes_list_echo(tmp_path):
    write(tmp_path, "pyctdb.conf", "[cluster]\nnodes list = !echo 10.0.0.7\n")
    c = load_config(str(tmp_path))
    assert c.nodes == [NodeEntry(0, "10.0.0.7", False)]
    assert c.nodes_source == "!echo 10.0.0.7"


def test_load_nodes_list_command_bad_output(tmp_path):
    write(tmp_path, "pyctdb.conf", "[cluster]\nnodes list = !echo 10.0.0.1 10.0.0.2\n")
    raises_at("!echo 10.0.0.1 10.0.0.2", 1, 'invalid IP address "10.0.0.1 10.0.0.2"',
              load_config, str(tmp_path))


def test_load_nodes_list_command_fails(tmp_path):
    conf = write(tmp_path, "pyctdb.conf",
                 f"[cluster]\n\nnodes list = !{sys.executable} -c "
                 f"\"import sys; sys.stderr.write('no cluster here\\n'); sys.exit(3)\"\n")
    e = raises_at(conf, 3, "exited with status 3: no cluster here", load_config,
                  str(tmp_path))
    assert "nodes list command" in str(e) and sys.executable in str(e)


def test_load_nodes_list_command_missing(tmp_path):
    conf = write(tmp_path, "pyctdb.conf",
                 "[cluster]\nnodes list = !/nonexistent/list-nodes --all\n")
    raises_at(conf, 2, 'nodes list command "/nonexistent/list-nodes --all" could not be '
                       'run', load_config, str(tmp_path))


def test_load_nodes_list_command_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "NODES_COMMAND_TIMEOUT", 0.3)
    conf = write(tmp_path, "pyctdb.conf", "[cluster]\nnodes list = !sleep 5\n")
    raises_at(conf, 2, "did not finish within 0.3 s", load_config, str(tmp_path))


def test_load_nodes_list_command_default_timeout():
    assert C.NODES_COMMAND_TIMEOUT == 10


# -- resolve_node_address ---------------------------------------------------------------
def cfg(nodes_text, **kw):
    return Config(config_dir="/etc/pyctdb", nodes=parse_nodes(nodes_text, NODES), **kw)


def test_resolve_configured_address():
    c = cfg("10.0.0.1\n10.0.0.2\n", node_address="10.0.0.2")
    assert resolve_node_address(c, try_bind=lambda a: False) == NodeEntry(1, "10.0.0.2",
                                                                          False)


def test_resolve_configured_address_not_in_nodes():
    c = cfg("10.0.0.1\n", node_address="10.0.0.9")
    with pytest.raises(ConfigError, match="is not a node in /etc/pyctdb/nodes"):
        resolve_node_address(c)


def test_resolve_first_bindable_skipping_deleted():
    c = cfg("10.0.0.1\n#10.0.0.2\n10.0.0.3\n10.0.0.4\n")
    tried = []

    def try_bind(addr):
        tried.append(addr)
        return addr in ("10.0.0.3", "10.0.0.4")

    assert resolve_node_address(c, try_bind=try_bind) == NodeEntry(2, "10.0.0.3", False)
    assert tried == ["10.0.0.1", "10.0.0.3"]


def test_resolve_none_bindable():
    c = cfg("10.0.0.1\n10.0.0.2\n")
    with pytest.raises(ConfigError) as ei:
        resolve_node_address(c, try_bind=lambda a: False)
    assert str(ei.value) == ("none of the addresses in /etc/pyctdb/nodes is an address of "
                             "this host; set [cluster] node address")


def _nonlocal_bind():
    try:
        with open("/proc/sys/net/ipv4/ip_nonlocal_bind") as f:
            return f.read().strip() != "0"
    except OSError:
        return False


def foreign_addresses(n):
    """``n`` documentation addresses (RFC 5737) that are not addresses of this host."""
    candidates = [f"{net}.{i}" for net in ("198.51.100", "203.0.113", "192.0.2")
                  for i in range(1, 20)]
    found = [a for a in candidates if not C.can_bind(a)][:n]
    if len(found) < n:
        pytest.skip("no non-local documentation addresses here")
    return found


@pytest.mark.skipif(_nonlocal_bind(), reason="net.ipv4.ip_nonlocal_bind is set")
def test_resolve_by_real_bind_on_loopback():
    # all of 127.0.0.0/8 is local on Linux
    (foreign,) = foreign_addresses(1)
    c = cfg(f"{foreign}\n#127.0.0.1\n127.0.0.2\n127.0.0.3\n")
    assert resolve_node_address(c) == NodeEntry(2, "127.0.0.2", False)


@pytest.mark.skipif(_nonlocal_bind(), reason="net.ipv4.ip_nonlocal_bind is set")
def test_resolve_by_real_bind_none_local():
    a, b = foreign_addresses(2)
    c = cfg(f"{a}\n{b}\n", nodes_source="!list-nodes")
    with pytest.raises(ConfigError, match="none of the addresses in !list-nodes is an "
                                          "address of this host"):
        resolve_node_address(c)


def test_can_bind():
    assert C.can_bind("127.0.0.1")
    assert C.can_bind("127.0.0.2")
    if socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
        except OSError:
            pass
        else:
            assert C.can_bind("::1")
    if not _nonlocal_bind():
        assert not C.can_bind(foreign_addresses(1)[0])


def test_resolve_with_loaded_config(tmp_path):
    write(tmp_path, "nodes", "127.0.0.11\n127.0.0.12\n127.0.0.13\n")
    write(tmp_path, "pyctdb.conf", "[cluster]\nnode address = 127.0.0.12\n")
    c = load_config(str(tmp_path))
    assert resolve_node_address(c) == NodeEntry(1, "127.0.0.12", False)


def test_nodes_changes_as_ctdb_reloadnodes():
    from pyctdb.common.config import nodes_changes, parse_nodes

    def nodes(text):
        return parse_nodes(text, "nodes")
    old = nodes("10.0.0.1\n10.0.0.2\n10.0.0.3\n")
    assert nodes_changes(old, old) == ([(0, "unchanged"), (1, "unchanged"),
                                        (2, "unchanged")], [])
    assert nodes_changes(old, nodes("10.0.0.1\n10.0.0.2\n10.0.0.3\n10.0.0.4\n"))[0][3] == \
        (3, "NEW")
    ch, err = nodes_changes(old, nodes("10.0.0.1\n#10.0.0.2\n10.0.0.3\n"))
    assert (ch, err) == ([(0, "unchanged"), (1, "DELETED"), (2, "unchanged")], [])
    # a deleted node stays deleted; its slot may take a node again (NEW)
    gone = nodes("10.0.0.1\n#10.0.0.2\n10.0.0.3\n")
    assert nodes_changes(gone, gone)[0][1] == (1, "unchanged")
    assert nodes_changes(gone, nodes("10.0.0.1\n10.0.0.9\n10.0.0.3\n"))[0][1] == (1, "NEW")
    _ch, err = nodes_changes(old, nodes("10.0.0.1\n10.0.0.3\n"))
    assert len(err) == 1 and "commenting it out" in err[0]
    _ch, err = nodes_changes(old, nodes("10.0.0.1\n10.0.0.5\n10.0.0.3\n"))
    assert err == ["node 1 changed its address from 10.0.0.2 to 10.0.0.5: delete the node "
                   "and add the new address at the end"]


# -- a CTDB configuration directory, as it is --------------------------------------------
def test_a_ctdb_directory_is_read_with_ctdbs_names_and_defaults(etc):
    write(etc, "ctdb.conf", "[logging]\n\tlocation = syslog\n\tlog level = NOTICE\n"
                            "[cluster]\n\tcluster lock = /shared/.lock\n")
    write(etc, "ctdb.tunables", "MonitorInterval=20\n")
    c = load_config(str(etc))
    assert c.layout == "ctdb"
    assert c.conf_path == os.path.join(str(etc), "ctdb.conf")
    assert c.log_location == "syslog" and c.cluster_lock == "/shared/.lock"
    assert c.tunables == {"MonitorInterval": 20}
    # ctdbd's own defaults, so that a node set up for CTDB keeps its files
    assert (c.volatile_db_dir, c.persistent_db_dir, c.state_db_dir) == (
        "/var/lib/ctdb/volatile", "/var/lib/ctdb/persistent", "/var/lib/ctdb/state")
    write(etc, "ctdb.conf", "")
    assert load_config(str(etc)).log_location == "file:/var/log/ctdb/log.ctdb"


def test_debians_own_ctdb_conf_is_accepted_as_it_is(etc):
    """The ctdb.conf Debian's ctdb package installs, byte for byte."""
    if not os.path.exists("/etc/ctdb/ctdb.conf"):
        pytest.skip("Debian's ctdb package is not installed")
    write(etc, "ctdb.conf", open("/etc/ctdb/ctdb.conf").read())
    c = load_config(str(etc))
    assert c.layout == "ctdb" and c.log_location == "syslog" and c.log_level == "NOTICE"


def test_pyctdb_and_ctdb_files_side_by_side_are_refused(etc):
    write(etc, "pyctdb.conf", "")
    write(etc, "ctdb.conf", "")
    with pytest.raises(ConfigError) as e:
        load_config(str(etc))
    assert "both pyctdb.conf and ctdb.conf" in e.value.message
    os.unlink(os.path.join(str(etc), "ctdb.conf"))
    write(etc, "pyctdb.tunables", "")
    write(etc, "ctdb.tunables", "")
    with pytest.raises(ConfigError) as e:
        load_config(str(etc))
    assert "both pyctdb.tunables and ctdb.tunables" in e.value.message


def test_pyctdb_conf_beside_ctdb_tunables_reads_both(etc):
    write(etc, "pyctdb.conf", "")
    write(etc, "ctdb.tunables", "MonitorInterval=7\n")
    c = load_config(str(etc))
    assert c.layout == "pyctdb" and c.tunables == {"MonitorInterval": 7}
    assert c.volatile_db_dir == "/var/lib/pyctdb/volatile"
