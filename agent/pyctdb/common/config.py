"""pyctdb's configuration: the files in the configuration directory.

``/etc/pyctdb`` by default, holding, in CTDB's formats:

* ``nodes`` -- the private address of every node, one a line (required);
* ``public_addresses`` -- ``IP/MASKBITS IFACE[,IFACE...]`` lines (optional);
* ``pyctdb.conf`` -- an INI file like CTDB's ``ctdb.conf`` (optional);
* ``pyctdb.tunables`` -- ``NAME=VALUE`` lines like CTDB's ``ctdb.tunables`` (optional);
* ``cluster.key`` -- the transport key file (pyctdb's own, optional: see
  :func:`read_transport_keys`).

A CTDB configuration directory (``/etc/ctdb``) is read as it is: ``ctdb.conf`` and
``ctdb.tunables`` stand for pyctdb's two files when those are absent (both of one kind
in one directory is an error), and then the defaults are CTDB's own (its database
directories under ``/var/lib/ctdb``, its log file): :data:`LAYOUTS`.

Every problem is reported as a :class:`ConfigError` naming the file and line, what is
wrong and what would be accepted. Loading never applies part of a file: it returns a
complete :class:`Config` or raises.
"""

from __future__ import annotations

import binascii
import difflib
import ipaddress
import os
import stat
import re
import shlex
import socket
import subprocess
from dataclasses import dataclass, field

from pyctdb.common.tunables import parse_tunables
from pyctdb.errors import ConfigError

__all__ = ["DEFAULT_CONFIG_DIR", "ConfigError", "NodeEntry", "PublicAddress", "Config",
           "parse_conf", "parse_nodes", "parse_public_addresses", "load_config",
           "read_public_addresses", "public_address", "read_transport_keys",
           "resolve_node_address", "OPTIONS", "LAYOUTS", "config_files"]

DEFAULT_CONFIG_DIR = "/etc/pyctdb"
CONF_FILE = "pyctdb.conf"
NODES_FILE = "nodes"
PUBLIC_ADDRESSES_FILE = "public_addresses"
TUNABLES_FILE = "pyctdb.tunables"
CTDB_CONF_FILE = "ctdb.conf"
CTDB_TUNABLES_FILE = "ctdb.tunables"
#: The transport key file's default name in the configuration directory.
KEY_FILE = "cluster.key"
#: Shortest key (bytes) of a transport key file, and the most keys it may hold.
MIN_KEY_BYTES = 32
MAX_KEYS = 2

#: Seconds a ``nodes list = !command`` may run.
NODES_COMMAND_TIMEOUT = 10

LOG_LEVELS = ("ERROR", "WARNING", "NOTICE", "INFO", "DEBUG")
SYSLOG_METHODS = ("nonblocking", "udp", "udp-rfc5424")
IFNAMSIZ = 16  # Linux: interface names are at most IFNAMSIZ - 1 bytes


@dataclass(frozen=True)
class NodeEntry:
    pnn: int
    address: str | None
    deleted: bool = False


@dataclass(frozen=True)
class PublicAddress:
    address: str
    prefix: int
    interfaces: tuple = ()

    def __str__(self):
        return f"{self.address}/{self.prefix} {','.join(self.interfaces)}"


# -- values -----------------------------------------------------------------------------
def _quote(s: str) -> str:
    return '"' + s + '"'


def _parse_unicast(text: str, what: str) -> str:
    """A normalised unicast IP address, or ValueError saying why not."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid IP address {_quote(text)} (expected an IPv4 address "
                         "such as 10.0.0.1 or an IPv6 address such as fd00::1)") from None
    problem = None
    if addr.is_unspecified:
        problem = "the unspecified address"
    elif addr.is_multicast:
        problem = "a multicast address"
    elif addr.version == 4 and addr == ipaddress.IPv4Address("255.255.255.255"):
        problem = "the broadcast address"
    if problem:
        raise ValueError(f"{_quote(text)} is {problem}; {what} must be a unicast address")
    return str(addr)


_BOOLS = {"true": True, "yes": True, "on": True, "1": True,
          "false": False, "no": False, "off": False, "0": False}


def _bool(value: str) -> bool:
    try:
        return _BOOLS[value.lower()]
    except KeyError:
        raise ValueError(f"invalid boolean {_quote(value)} (expected true/false, yes/no, "
                         "on/off or 1/0)") from None


def _int_range(lo, hi, unit=""):
    def conv(value: str) -> int:
        v = None
        if re.fullmatch(r"[0-9]+", value):
            v = int(value, 10)
        elif re.fullmatch(r"0[xX][0-9a-fA-F]+", value):
            v = int(value, 16)
        if v is None:
            raise ValueError(f"invalid number {_quote(value)} (expected an integer from "
                             f"{lo} to {hi}{unit})")
        if not lo <= v <= hi:
            raise ValueError(f"{v} is out of range (expected an integer from {lo} to "
                             f"{hi}{unit})")
        return v
    return conv


def _abspath(value: str) -> str:
    if "\0" in value or not os.path.isabs(value):
        raise ValueError(f"{_quote(value)} is not an absolute path (expected a path "
                         "starting with /)")
    return os.path.normpath(value)


def _command(value: str) -> str:
    """``!command args``: checked to split like a shell command line."""
    try:
        argv = shlex.split(value[1:])
    except ValueError as exc:
        raise ValueError(f"cannot parse command {_quote(value)}: {exc}") from None
    if not argv:
        raise ValueError(f"empty command {_quote(value)} (expected !COMMAND ARGS)")
    return value


def _path_or_command(value: str) -> str:
    if value.startswith("!"):
        return _command(value)
    try:
        return _abspath(value)
    except ValueError:
        raise ValueError(
            f"{_quote(value)} is neither an absolute path nor a !command "
            "(expected e.g. /shared/lock or !/usr/libexec/helper ARGS)") from None


def _location(value: str) -> str:
    if value == "stderr" or value == "syslog":
        return value
    if value.startswith("syslog:"):
        method = value[len("syslog:"):]
        if method in SYSLOG_METHODS:
            return value
        raise ValueError(f"unknown syslog method {_quote(method)} (expected one of "
                         f"{', '.join(SYSLOG_METHODS)})")
    if value.startswith("file:"):
        path = value[len("file:"):]
        if path and "\0" not in path and os.path.isabs(path):
            return value
        raise ValueError(f"{_quote(value)}: the log file must be an absolute path "
                         "(expected file:/ABSOLUTE/PATH)")
    raise ValueError(f"invalid log location {_quote(value)} (expected file:/PATH, syslog, "
                     "syslog:nonblocking, syslog:udp, syslog:udp-rfc5424 or stderr)")


def _log_level(value: str) -> str:
    up = value.upper()
    if up not in LOG_LEVELS:
        raise ValueError(f"invalid log level {_quote(value)} (expected one of "
                         f"{', '.join(LOG_LEVELS)})")
    return up


def _transport(value: str) -> str:
    if value.lower() != "tcp":
        raise ValueError(f"unsupported transport {_quote(value)} (only tcp is supported)")
    return "tcp"


def _node_address(value: str) -> str:
    return _parse_unicast(value, "the node address")


def _string(value: str) -> str:
    return value


@dataclass(frozen=True)
class Option:
    section: str
    name: str
    default: object
    convert: object
    attr: str | None  # Config attribute; None for options folded into another
    optional: bool = False  # default None; an empty value means "none"


def _dir(sub, var="/var/lib/pyctdb"):
    return f"{var}/{sub}"


#: The defaults that depend on whose layout a configuration directory has: pyctdb's
#: own (``pyctdb.conf``), or CTDB's (``ctdb.conf``: ctdbd's compiled-in defaults on
#: Debian, so that a node set up for CTDB keeps its paths).
LAYOUTS = {
    "pyctdb": {"log_location": "file:/var/log/pyctdb.log",
               "volatile_db_dir": _dir("volatile"), "persistent_db_dir": _dir("persistent"),
               "state_db_dir": _dir("state")},
    "ctdb": {"log_location": "file:/var/log/ctdb/log.ctdb",
             "volatile_db_dir": _dir("volatile", "/var/lib/ctdb"),
             "persistent_db_dir": _dir("persistent", "/var/lib/ctdb"),
             "state_db_dir": _dir("state", "/var/lib/ctdb")},
}


#: Every pyctdb.conf option, in documentation order. ``nodes list``'s default depends
#: on the configuration directory and is filled in by :func:`load_config`.
OPTIONS = (
    Option("logging", "location", "file:/var/log/pyctdb.log", _location, "log_location"),
    Option("logging", "log level", "NOTICE", _log_level, "log_level"),
    Option("cluster", "transport", "tcp", _transport, "transport"),
    Option("cluster", "node address", None, _node_address, "node_address", True),
    Option("cluster", "cluster lock", None, _path_or_command, "cluster_lock", True),
    Option("cluster", "recovery lock", None, _path_or_command, None, True),
    Option("cluster", "leader timeout", 5, _int_range(1, 3600, " seconds"),
           "leader_timeout"),
    Option("cluster", "leader capability", True, _bool, "leader_capability"),
    Option("cluster", "nodes list", None, _path_or_command, None),
    Option("cluster", "port", 4379, _int_range(1, 65535), "port"),
    Option("cluster", "transport key file", None, _abspath, "transport_key_file", True),
    Option("database", "volatile database directory", _dir("volatile"), _abspath,
           "volatile_db_dir"),
    Option("database", "persistent database directory", _dir("persistent"), _abspath,
           "persistent_db_dir"),
    Option("database", "state database directory", _dir("state"), _abspath,
           "state_db_dir"),
    Option("database", "lock debug script", None, _string, "lock_debug_script", True),
    Option("database", "tdb mutexes", True, _bool, "tdb_mutexes"),
    Option("event", "debug script", None, _string, "event_debug_script", True),
    Option("failover", "disabled", False, _bool, "failover_disabled"),
    Option("legacy", "realtime scheduling", True, _bool, "realtime_scheduling"),
    Option("legacy", "lmaster capability", True, _bool, "lmaster_capability"),
    Option("legacy", "start as stopped", False, _bool, "start_as_stopped"),
    Option("legacy", "start as disabled", False, _bool, "start_as_disabled"),
    Option("legacy", "script log level", "ERROR", _log_level, "script_log_level"),
)

_OPTIONS = {(o.section, o.name): o for o in OPTIONS}
SECTIONS = tuple(dict.fromkeys(o.section for o in OPTIONS))


# -- pyctdb.conf ------------------------------------------------------------------------
def _norm(name: str) -> str:
    """Option and section names: case-insensitive, runs of whitespace are one space."""
    return " ".join(name.split()).lower()


def _parse_conf(text: str, path: str):
    """``({(section, option): value}, {(section, option): line})``."""
    values = {}
    lines = {}
    section = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(path, lineno, f"malformed section header {_quote(line)} "
                                  "(expected [SECTION])")
            name = _norm(line[1:-1])
            if name not in SECTIONS:
                raise ConfigError(path, lineno, f"unknown section [{line[1:-1].strip()}] "
                                  f"(known: {', '.join('[%s]' % s for s in SECTIONS)})")
            section = name
            continue
        if "=" not in line:
            raise ConfigError(path, lineno, f"expected \"option = value\" or \"[section]\", "
                              f"not {_quote(line)}")
        key, _, value = line.partition("=")
        name, value = _norm(key), value.strip()
        if not name:
            raise ConfigError(path, lineno, f"missing option name before \"=\" in "
                              f"{_quote(line)}")
        if section is None:
            raise ConfigError(path, lineno, f"option {_quote(name)} is outside a section "
                              "(put it after a [section] header, e.g. [cluster])")
        opt = _OPTIONS.get((section, name))
        if opt is None:
            raise ConfigError(path, lineno, _unknown_option(name, section))
        k = (section, name)
        if name in ("cluster lock", "recovery lock"):
            other = (section, "recovery lock" if name == "cluster lock" else "cluster lock")
            if other in lines:
                raise ConfigError(
                    path, lineno, f"both \"cluster lock\" and \"recovery lock\" are set "
                    f"(the other on line {lines[other]}); \"recovery lock\" is a deprecated "
                    "name for \"cluster lock\": keep only \"cluster lock\"")
        if k in lines:
            raise ConfigError(path, lineno, f"option {_quote(name)} in [{section}] is set "
                              f"twice (first on line {lines[k]}); keep one of the lines")
        lines[k] = lineno
        if not value:
            if opt.optional:
                values[k] = None
                continue
            raise ConfigError(path, lineno, f"missing value for {_quote(name)} in "
                              f"[{section}] (default: {_default_text(opt)})")
        try:
            values[k] = opt.convert(value)
        except ValueError as exc:
            raise ConfigError(path, lineno, f"[{section}] {name}: {exc}") from None
    return values, lines


def _unknown_option(name: str, section: str) -> str:
    names = sorted(o.name for o in OPTIONS if o.section == section)
    msg = (f"unknown option {_quote(name)} in section [{section}] "
           f"(known: {', '.join(names)})")
    elsewhere = [o.section for o in OPTIONS if o.name == name]
    if elsewhere:
        return msg + f"; {_quote(name)} belongs in [{elsewhere[0]}]"
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
    if close:
        return msg + f"; did you mean {_quote(close[0])}?"
    return msg


def _default_text(opt: Option) -> str:
    if opt.name == "nodes list":
        return "the nodes file in the configuration directory"
    d = opt.default
    if d is None:
        return "none"
    if isinstance(d, bool):
        return "true" if d else "false"
    return str(d)


def parse_conf(text: str, path: str) -> dict:
    """Parse pyctdb.conf text: ``{(section, option): value}`` for the options it sets,
    validated and converted (names in lower case, single-spaced). ``recovery lock`` is
    kept under its own name; :func:`load_config` folds it into ``cluster lock``."""
    return _parse_conf(text, path)[0]


# -- nodes ------------------------------------------------------------------------------
def parse_nodes(text: str, path: str) -> list:
    """Parse a nodes file (CTDB's format) into ``[NodeEntry]``.

    One address a line, surrounding whitespace ignored; blank lines are skipped and take
    no PNN; a line starting with ``#`` is a deleted node that keeps its PNN, so that the
    nodes after it keep theirs.
    """
    nodes = []
    seen = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        pnn = len(nodes)
        if line.startswith("#"):
            nodes.append(NodeEntry(pnn, None, True))
            continue
        try:
            address = _parse_unicast(line, "a node address")
        except ValueError as exc:
            raise ConfigError(path, lineno, str(exc)) from None
        if address in seen:
            first_line, first_pnn = seen[address]
            raise ConfigError(path, lineno, f"duplicate node address {_quote(address)} "
                              f"(already on line {first_line} as PNN {first_pnn}); every "
                              "node needs its own address")
        seen[address] = (lineno, pnn)
        nodes.append(NodeEntry(pnn, address, False))
    if not seen:
        what = "no nodes" if not nodes else "only deleted (#) nodes"
        raise ConfigError(path, None, f"{what}: list the private address of every node, "
                          "one per line")
    return nodes


# -- public_addresses -------------------------------------------------------------------
_IFNAME_BAD = re.compile(r"[/:\s]")


def _check_ifname(name: str):
    if not name:
        return "empty interface name"
    if len(name.encode()) > IFNAMSIZ - 1:
        return (f"interface name {_quote(name)} is too long ({len(name.encode())} bytes; "
                f"at most {IFNAMSIZ - 1})")
    if name in (".", ".."):
        return f"invalid interface name {_quote(name)}"
    if _IFNAME_BAD.search(name) or not name.isprintable():
        return (f"invalid interface name {_quote(name)} (it may not contain \"/\", \":\", "
                "whitespace or control characters)")
    return None


def parse_public_addresses(text: str, path: str) -> list:
    """Parse a public_addresses file (CTDB's format): ``IP/MASKBITS IFACE[,IFACE...]``
    lines, ``#`` comments and blank lines ignored."""
    result = []
    seen = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) == 1:
            raise ConfigError(path, lineno, f"missing interface after {_quote(fields[0])} "
                              "(expected IP/MASKBITS IFACE[,IFACE...], e.g. "
                              "10.0.1.10/24 eth1)")
        if len(fields) > 2:
            raise ConfigError(path, lineno, f"unexpected {_quote(' '.join(fields[2:]))} "
                              "(expected IP/MASKBITS IFACE[,IFACE...]; separate interfaces "
                              "with commas, without spaces)")
        addr_text, ifaces_text = fields
        ip_text, slash, mask_text = addr_text.partition("/")
        if not slash:
            raise ConfigError(path, lineno, f"missing mask bits in {_quote(addr_text)} "
                              "(expected IP/MASKBITS, e.g. 10.0.1.10/24)")
        try:
            address = _parse_unicast(ip_text, "a public address")
        except ValueError as exc:
            raise ConfigError(path, lineno, str(exc)) from None
        bits = 32 if ipaddress.ip_address(address).version == 4 else 128
        if not re.fullmatch(r"[0-9]{1,3}", mask_text) or not 1 <= int(mask_text) <= bits:
            raise ConfigError(path, lineno, f"invalid mask bits {_quote(mask_text)} for "
                              f"{address} (expected 1 to {bits})")
        ifaces = ifaces_text.split(",")
        for name in ifaces:
            problem = _check_ifname(name)
            if problem:
                raise ConfigError(path, lineno, f"{problem} in {_quote(ifaces_text)} "
                                  "(expected interface names separated by commas, e.g. "
                                  "eth1,eth2)")
        dups = sorted({n for n in ifaces if ifaces.count(n) > 1})
        if dups:
            raise ConfigError(path, lineno, f"interface {_quote(dups[0])} is listed twice "
                              f"in {_quote(ifaces_text)}")
        if address in seen:
            raise ConfigError(path, lineno, f"duplicate public address {_quote(address)} "
                              f"(already on line {seen[address]})")
        seen[address] = lineno
        result.append(PublicAddress(address, int(mask_text), tuple(ifaces)))
    return result


def read_public_addresses(config_dir: str = DEFAULT_CONFIG_DIR) -> list:
    """The public addresses of ``config_dir``'s public_addresses file ([] without one);
    ConfigError naming file and line for a bad one. Also what ``reloadips`` re-reads."""
    pa_path = os.path.join(config_dir, PUBLIC_ADDRESSES_FILE)
    text = _read(pa_path, optional=True)
    return parse_public_addresses(text, pa_path) if text is not None else []


def public_address(address, prefix, interfaces) -> PublicAddress:
    """One public address given as values (``addip``), checked exactly as a line of the
    public_addresses file is; ValueError saying what is wrong."""
    if not isinstance(address, str) or not address.strip():
        raise ValueError("address must be an IP address, e.g. 10.0.1.10")
    if isinstance(prefix, bool) or not isinstance(prefix, int):
        raise ValueError(f"prefix must be a number of mask bits, not {prefix!r}")
    if isinstance(interfaces, str):
        interfaces = interfaces.split(",")
    if (not isinstance(interfaces, (list, tuple)) or not interfaces
            or not all(isinstance(i, str) for i in interfaces)):
        raise ValueError("interfaces must be a non-empty list of interface names")
    # (whitespace would split the line the checks below parse)
    if any(ch.isspace() for ch in address):
        raise ValueError(f"invalid IP address {_quote(address)}")
    for name in interfaces:
        if not name or any(ch.isspace() for ch in name):
            raise ValueError(_check_ifname(name))
    try:
        return parse_public_addresses(f"{address}/{prefix} {','.join(interfaces)}",
                                      "addip")[0]
    except ConfigError as exc:
        raise ValueError(exc.message) from None


# -- the whole configuration ------------------------------------------------------------
@dataclass
class Config:
    config_dir: str = DEFAULT_CONFIG_DIR
    conf_path: str = ""
    nodes: list = field(default_factory=list)
    nodes_source: str = ""  # a path, or "!command"
    public_addresses: list = field(default_factory=list)
    tunables: dict = field(default_factory=dict)  # overrides from the tunables file only
    log_location: str = "file:/var/log/pyctdb.log"
    log_level: str = "NOTICE"
    transport: str = "tcp"
    node_address: str | None = None
    cluster_lock: str | None = None
    leader_timeout: int = 5
    leader_capability: bool = True
    port: int = 4379
    volatile_db_dir: str = _dir("volatile")
    persistent_db_dir: str = _dir("persistent")
    state_db_dir: str = _dir("state")
    failover_disabled: bool = False
    lmaster_capability: bool = True
    start_as_stopped: bool = False
    start_as_disabled: bool = False
    realtime_scheduling: bool = True
    script_log_level: str = "ERROR"
    event_debug_script: str | None = None
    lock_debug_script: str | None = None
    tdb_mutexes: bool = True
    #: the transport key file read (None: no key, the transport is not authenticated)
    transport_key_file: str | None = None
    #: its keys: the first is used to connect, all are accepted from peers
    transport_keys: tuple = ()

    #: whose files the configuration directory has: "pyctdb" or "ctdb" (:data:`LAYOUTS`)
    layout: str = "pyctdb"

    def __post_init__(self):
        if not self.conf_path:
            self.conf_path = os.path.join(self.config_dir, CONF_FILE)
        if not self.nodes_source:
            self.nodes_source = os.path.join(self.config_dir, NODES_FILE)

    def active_nodes(self) -> list:
        """The nodes that are not deleted."""
        return [n for n in self.nodes if not n.deleted]


def _read(path: str, optional: bool, missing_message: str = "file not found"):
    """The text of ``path``; None when missing and ``optional``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if optional:
            return None
        raise ConfigError(path, None, missing_message) from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(path, line, "not valid UTF-8 text") from None


def _run_nodes_command(command: str, conf_path: str, line):
    """Run ``nodes list = !command``; its standard output, or ConfigError."""
    argv = shlex.split(command[1:])
    where = f"[cluster] nodes list command {_quote(command[1:])}"
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=NODES_COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ConfigError(conf_path, line, f"{where} did not finish within "
                          f"{NODES_COMMAND_TIMEOUT} s") from None
    except OSError as exc:
        raise ConfigError(conf_path, line, f"{where} could not be run: "
                          f"{exc.strerror or exc}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = f": {err[-1]}" if err else ""
        status = (f"was killed by signal {-proc.returncode}" if proc.returncode < 0
                  else f"exited with status {proc.returncode}")
        raise ConfigError(conf_path, line, f"{where} {status}{detail}")
    try:
        return proc.stdout.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(conf_path, line, f"{where} printed text that is not valid "
                          "UTF-8") from None


def read_nodes(config: Config) -> list:
    """Read the nodes list again from where ``config`` took it (``reloadnodes``)."""
    source = config.nodes_source
    if source.startswith("!"):
        return parse_nodes(_run_nodes_command(source, config.conf_path, None), source)
    text = _read(source, optional=False, missing_message="nodes file not found")
    return parse_nodes(text, source)


def nodes_changes(old, new):
    """What ``reloadnodes`` would do going from nodes list ``old`` to ``new`` (both
    ``[NodeEntry]``), with CTDB's rules: nodes are added at the end and deleted by
    commenting them out (``#``), so that no node changes PNN; a node keeps its address.
    Returns ``(changes, errors)``: changes ``[(pnn, "unchanged"|"NEW"|"DELETED")]`` for
    every PNN of ``new``, errors a list of messages (empty when the change is allowed)."""
    changes, errors = [], []
    if len(new) < len(old):
        return [], [f"the new nodes list has {len(new)} entries, the running one "
                    f"{len(old)}: delete a node by commenting it out (#), so that the "
                    "nodes after it keep their PNNs"]
    for n in new:
        o = old[n.pnn] if n.pnn < len(old) else None
        if o is None or o.deleted:
            changes.append((n.pnn, "unchanged" if n.deleted else "NEW"))
        elif n.deleted:
            changes.append((n.pnn, "DELETED"))
        elif n.address != o.address:
            errors.append(f"node {n.pnn} changed its address from {o.address} to "
                          f"{n.address}: delete the node and add the new address at the end")
        else:
            changes.append((n.pnn, "unchanged"))
    return changes, errors


def load_config(config_dir: str = DEFAULT_CONFIG_DIR, *, keys: bool = True) -> Config:
    """Read and check every file of ``config_dir``; a :class:`Config` or ConfigError.
    ``keys=False``: the transport key file is not read (``pyctdbd --drop-public-ips``,
    which must work whatever became of it)."""
    layout, conf_path, tun_path = config_files(config_dir)
    text = _read(conf_path, optional=True)
    values, lines = _parse_conf(text, conf_path) if text is not None else ({}, {})

    kwargs = {}
    defaults = LAYOUTS[layout]
    for opt in OPTIONS:
        if opt.attr is not None:
            kwargs[opt.attr] = values.get((opt.section, opt.name),
                                          defaults.get(opt.attr, opt.default))
    # "recovery lock" is CTDB's deprecated name; the parser refuses both together.
    if ("cluster", "recovery lock") in values:
        kwargs["cluster_lock"] = values[("cluster", "recovery lock")]

    nodes_key = ("cluster", "nodes list")
    nodes_source = values.get(nodes_key) or os.path.join(config_dir, NODES_FILE)
    if nodes_source.startswith("!"):
        out = _run_nodes_command(nodes_source, conf_path, lines.get(nodes_key))
        nodes = parse_nodes(out, nodes_source)
    else:
        text = _read(nodes_source, optional=False,
                     missing_message="nodes file not found (it must list the private "
                     "address of every node, one per line)")
        nodes = parse_nodes(text, nodes_source)

    node_address = kwargs["node_address"]
    if node_address is not None:
        active = [n.address for n in nodes if not n.deleted]
        if node_address not in active:
            raise ConfigError(conf_path, lines.get(("cluster", "node address")),
                              f"[cluster] node address {_quote(node_address)} is not a "
                              f"node in {nodes_source} (nodes: {', '.join(active)})")

    key_opt = ("cluster", "transport key file")
    if not keys:
        key_file, keys = None, ()
    elif key_opt in values:  # set (an empty value: no key even if cluster.key exists)
        key_file = values[key_opt]
        keys = (read_transport_keys(key_file, conf_path, lines[key_opt])
                if key_file is not None else ())
    else:
        key_file = os.path.join(config_dir, KEY_FILE)
        keys = read_transport_keys(key_file) if os.path.lexists(key_file) else ()
    kwargs["transport_key_file"] = key_file if keys else None
    kwargs["transport_keys"] = keys

    public_addresses = read_public_addresses(config_dir)

    text = _read(tun_path, optional=True)
    tunables = parse_tunables(text, tun_path) if text is not None else {}

    return Config(config_dir=config_dir, conf_path=conf_path, nodes=nodes,
                  nodes_source=nodes_source, public_addresses=public_addresses,
                  tunables=tunables, layout=layout, **kwargs)


def config_files(config_dir: str) -> tuple:
    """``(layout, configuration file, tunables file)`` of ``config_dir``: pyctdb's
    (``pyctdb.conf``, ``pyctdb.tunables``), or CTDB's (``ctdb.conf``,
    ``ctdb.tunables``) when pyctdb's configuration file is absent and CTDB's is there.
    Both of a kind is a ConfigError: which one counts would be a guess."""
    def exists(name):
        return os.path.lexists(os.path.join(config_dir, name))
    for mine, ctdbs in ((CONF_FILE, CTDB_CONF_FILE), (TUNABLES_FILE, CTDB_TUNABLES_FILE)):
        if exists(mine) and exists(ctdbs):
            raise ConfigError(os.path.join(config_dir, ctdbs), None,
                              f"both {mine} and {ctdbs} are in {config_dir}: keep one "
                              f"({ctdbs} is read only when there is no {mine})")
    if not exists(CONF_FILE) and exists(CTDB_CONF_FILE):
        return ("ctdb", os.path.join(config_dir, CTDB_CONF_FILE),
                os.path.join(config_dir, CTDB_TUNABLES_FILE))
    tunables = TUNABLES_FILE
    if not exists(TUNABLES_FILE) and exists(CTDB_TUNABLES_FILE):
        tunables = CTDB_TUNABLES_FILE
    return ("pyctdb", os.path.join(config_dir, CONF_FILE),
            os.path.join(config_dir, tunables))


def _decode_key(text: str):
    """A key line's bytes: hex (only hex digits, even length) or base64; None if neither."""
    if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", text):
        return bytes.fromhex(text)
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


def read_transport_keys(path: str, conf_path: str = None, conf_line=None) -> tuple:
    """The keys of a transport key file: one or two lines, each a key of at least 32
    bytes written as hex or base64 (``#`` comments and blank lines are ignored). The
    first key is the one this node connects with; every key is accepted from peers (two
    during a rotation). The file must be a regular file owned by the agent's user with
    mode 0600 or stricter. Any problem is a ConfigError naming the file (and line)."""
    where = (f" (set by [cluster] transport key file in {conf_path}:{conf_line})"
             if conf_path else "")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        if conf_path:
            raise ConfigError(conf_path, conf_line, f"[cluster] transport key file "
                              f"{_quote(path)} not found") from None
        raise ConfigError(path, None, "transport key file not found") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read the transport key file: "
                          f"{exc.strerror or exc}{where}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(path, None, f"the transport key file is not a regular "
                              f"file{where}")
        if st.st_mode & 0o077:
            raise ConfigError(path, None, f"the transport key file has mode "
                              f"{stat.S_IMODE(st.st_mode):04o}, which lets its group or "
                              f"others access it: it must be 0600 or 0400 (chmod 600 "
                              f"{path}){where}")
        if st.st_uid != os.geteuid():
            raise ConfigError(path, None, f"the transport key file is owned by uid "
                              f"{st.st_uid}, not by the agent's user (uid {os.geteuid()})"
                              f"{where}")
        try:
            data = os.read(fd, 65536)
        except OSError as exc:
            raise ConfigError(path, None, f"cannot read the transport key file: "
                              f"{exc.strerror or exc}{where}") from None
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(path, line, "not ASCII text: a key is written as hex or "
                          "base64") from None
    keys, seen = [], {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key = _decode_key(line)
        if key is None:
            raise ConfigError(path, lineno, "a key must be written as hex (e.g. openssl "
                              "rand -hex 32) or base64 (e.g. openssl rand -base64 32), "
                              "one key a line")
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(path, lineno, f"key of {len(key)} bytes is too short: at "
                              f"least {MIN_KEY_BYTES} random bytes (e.g. openssl rand "
                              "-hex 32)")
        if key in seen:
            raise ConfigError(path, lineno, f"the same key as on line {seen[key]}")
        if len(keys) == MAX_KEYS:
            raise ConfigError(path, lineno, f"more than {MAX_KEYS} keys: the file holds "
                              "the key in use and, during a rotation, one more")
        seen[key] = lineno
        keys.append(key)
    if not keys:
        raise ConfigError(path, None, f"the transport key file holds no key (one key a "
                          f"line, hex or base64){where}")
    return tuple(keys)


def can_bind(address: str) -> bool:
    """Whether ``address`` is an address of this host (CTDB's test: bind to it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
    except OSError:
        return False
    return True


def resolve_node_address(config: Config, try_bind=None) -> NodeEntry:
    """This node's entry: the one for ``[cluster] node address`` if set, else the first
    node that is not deleted and whose address can be bound here, as CTDB does.
    ``try_bind(address) -> bool`` replaces the bind test (for tests)."""
    if config.node_address is not None:
        for n in config.active_nodes():
            if n.address == config.node_address:
                return n
        raise ConfigError(config.conf_path, None,
                          f"[cluster] node address {_quote(config.node_address)} is not a "
                          f"node in {config.nodes_source}")
    test = try_bind or can_bind
    for n in config.active_nodes():
        if test(n.address):
            return n
    raise ConfigError(None, None, f"none of the addresses in {config.nodes_source} is an "
                      "address of this host; set [cluster] node address")
