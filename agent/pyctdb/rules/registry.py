"""The cluster registry: smb.conf-style configuration kept in a persistent clustered
database, as Samba's ``net conf`` keeps smb.conf in its clustered registry.tdb
(docs/databases.md, "Cluster registry").

Pure functions: parse an smb.conf-style file, validate, format, and the key layout in the
database. The API and the tunables watcher are in ``server/api/conf_commands.py``.

A configuration is a list of sections ``{"name": str, "params": [[param, value], ...]}``
in order (``global`` first). Section and parameter names are kept in lower case with
single spaces, as ``net conf setparm`` lower-cases them; the parameters of the section
``[pyctdb:tunables]`` are tunable names (CTDB's spelling, e.g. ``KeepaliveInterval``),
checked with pyctdb.tunables.
"""

from __future__ import annotations

import json
import re

from pyctdb.common import tunables
from pyctdb.errors import PyctdbError

#: The persistent database holding the registry (Samba: registry.tdb).
DB_NAME = "pyctdb_registry.tdb"
#: Key prefix of a section record: ``smbconf/<section name>`` (Samba:
#: ``HKLM\\Software\\Samba\\smbconf\\<section>``).
PREFIX = b"smbconf/"
GLOBAL = "global"
#: The section whose parameters override the tunables of every node.
TUNABLES_SECTION = "pyctdb:tunables"
MAX_SECTION = 255


class RegistryError(PyctdbError, ValueError):
    """Bad input (a file position in the message for a parsed file)."""

    code = "EINVAL"


_SPACES = re.compile(r"\s+")


def section_name(name) -> str:
    """The stored form of a section name (lower case, single spaces); RegistryError
    for an empty or impossible one."""
    if not isinstance(name, str):
        raise RegistryError("section name must be a string")
    n = _SPACES.sub(" ", name.strip()).lower()
    if not n:
        raise RegistryError("empty section name")
    if any(c in n for c in "[]\n\r\0"):
        raise RegistryError(f"invalid section name {name!r}: no '[', ']' or newline")
    if len(n.encode()) > MAX_SECTION:
        raise RegistryError(f"section name {name!r} is too long (at most {MAX_SECTION} "
                            "bytes)")
    return n


def param_name(section: str, name) -> str:
    """The stored form of parameter ``name`` of ``section`` (stored form): lower case,
    single spaces; in the tunables section the tunable's own name."""
    if not isinstance(name, str):
        raise RegistryError("parameter name must be a string")
    n = _SPACES.sub(" ", name.strip())
    if not n:
        raise RegistryError("empty parameter name")
    if any(c in n for c in "=\n\r\0") or n.startswith(("[", "#", ";")):
        raise RegistryError(f"invalid parameter name {name!r}")
    if section == TUNABLES_SECTION:
        try:
            t = tunables.lookup(n)
        except KeyError as exc:
            raise RegistryError(str(exc)) from None
        if t.obsolete:
            raise RegistryError(f"obsolete tunable {t.name}: it has no effect")
        return t.name
    return n.lower()


def param_value(section: str, param: str, value) -> str:
    """The stored form of a value (text, surrounding blanks removed); a tunable's value
    is checked (the text is kept as given)."""
    if isinstance(value, bool):
        value = "yes" if value else "no"
    elif isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        raise RegistryError(f"value of {param!r} must be text, not {type(value).__name__}")
    v = value.strip()
    if any(c in v for c in "\n\r\0"):
        raise RegistryError(f"value of {param!r} must be one line")
    if section == TUNABLES_SECTION:
        try:
            tunables.parse_value(tunables.lookup(param), v)
        except ValueError as exc:
            raise RegistryError(str(exc)) from None
    return v


def parse(text: str, source: str = "<input>") -> list:
    """Parse smb.conf-style ``text``: ``[section]`` headers, ``name = value`` lines,
    ``#`` and ``;`` comments, a trailing ``\\`` continues a line. Parameters before the
    first section belong to ``[global]`` and a repeated section or parameter adds to or
    overrides the earlier one, as Samba reads smb.conf. RegistryError ``SOURCE:LINE:
    message`` for anything else."""
    sections = {}  # name -> {param: value} (insertion ordered)
    current = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        lineno = i + 1
        line = lines[i]
        i += 1
        while line.rstrip().endswith("\\") and i < len(lines):
            line = line.rstrip()[:-1].rstrip() + " " + lines[i].lstrip()
            i += 1
        s = line.strip()
        if not s or s[0] in "#;":
            continue

        def bad(msg):
            return RegistryError(f"{source}:{lineno}: {msg}")
        if s.startswith("["):
            if not s.endswith("]"):
                raise bad(f'section header without "]": {s!r}')
            try:
                current = section_name(s[1:-1])
            except RegistryError as exc:
                raise bad(str(exc)) from None
            sections.setdefault(current, {})
            continue
        if "=" not in s:
            raise bad(f'expected "name = value" or "[section]", not {s!r}')
        name, _, value = s.partition("=")
        sec = current or GLOBAL
        try:
            p = param_name(sec, name)
            v = param_value(sec, p, value)
        except RegistryError as exc:
            raise bad(f"[{sec}] {exc}") from None
        params = sections.setdefault(sec, {})
        params.pop(p, None)  # a repeated parameter: the last one counts, in its place
        params[p] = v
    return ordered([{"name": n, "params": [[k, v] for k, v in ps.items()]}
                    for n, ps in sections.items()])


def ordered(sections: list) -> list:
    """``global`` first, the others in their order."""
    return sorted(sections, key=lambda s: s["name"] != GLOBAL)


def format_section(sec: dict) -> str:
    """``net conf showshare``'s form: ``[name]`` then ``\\tparam = value`` lines."""
    return f"[{sec['name']}]\n" + "".join(f"\t{k} = {v}\n" for k, v in sec["params"])


def format_config(sections: list) -> str:
    """``net conf list``'s form: every section, each followed by an empty line."""
    return "".join(format_section(s) + "\n" for s in ordered(sections))


def find(sections: list, name: str):
    n = section_name(name)
    return next((s for s in sections if s["name"] == n), None)


def get_param(sec: dict, param: str):
    p = param_name(sec["name"], param)
    return next((v for k, v in sec["params"] if k == p), None)


def update_section(sec, name: str, set_params=None, delete=None, exclusive=False):
    """The section ``name`` (or None: it is deleted) after setting ``set_params``
    ({param: value} or [[param, value]]), deleting the parameters ``delete``, and with
    ``exclusive`` removing every parameter not in ``set_params``. ``sec`` is the
    current section or None. RegistryError for a bad name or value (nothing applied)."""
    n = section_name(name)
    items = list(set_params.items()) if isinstance(set_params, dict) else \
        list(set_params or [])
    want = []
    for item in items:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise RegistryError("params must be pairs of [param, value]")
        p = param_name(n, item[0])
        want.append((p, param_value(n, p, item[1])))
    gone = {param_name(n, p) for p in (delete or [])}
    params = dict(sec["params"]) if sec else {}
    if exclusive:
        keep = {p for p, _ in want}
        params = {k: v for k, v in params.items() if k in keep}
    for p in gone:
        params.pop(p, None)
    for p, v in want:
        params[p] = v
    if sec is None and not want:
        return None  # nothing to create
    # (deleting the last parameters leaves an empty section, as net conf delparm)
    return {"name": n, "params": [[k, v] for k, v in params.items()]}


# -- the records in the database ------------------------------------------------------
def key_of(name: str) -> bytes:
    return PREFIX + section_name(name).encode()


def encode(sec: dict, order: int) -> bytes:
    return json.dumps({"name": sec["name"], "order": order, "params": sec["params"]},
                      separators=(",", ":")).encode()


def decode(records) -> list:
    """The configuration from ``[(key, value bytes)]`` (the database's live records);
    records that are not sections are ignored."""
    secs = []
    for k, v in records:
        if not k.startswith(PREFIX):
            continue
        d = json.loads(v.decode())
        secs.append((d.get("order", 0), {"name": d["name"],
                                         "params": [list(p) for p in d["params"]]}))
    secs.sort(key=lambda t: t[0])
    return ordered([s for _, s in secs])


def orders(records) -> dict:
    out = {}
    for k, v in records:
        if k.startswith(PREFIX):
            out[k] = json.loads(v.decode()).get("order", 0)
    return out


def tunables_of(sections: list) -> dict:
    """``{tunable: value}`` of the tunables section (values parsed); RegistryError
    naming the first bad entry."""
    sec = next((s for s in sections if s["name"] == TUNABLES_SECTION), None)
    out = {}
    for k, v in (sec["params"] if sec else []):
        try:
            t = tunables.lookup(k)
            out[t.name] = tunables.parse_value(t, v)
        except (KeyError, ValueError) as exc:
            raise RegistryError(f"[{TUNABLES_SECTION}] {k} = {v}: {exc}") from None
    return out
