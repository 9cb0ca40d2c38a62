"""The cluster registry on this node: its node operations (``conf_*``, docs/api.md) and
the watcher that applies the registry's ``[pyctdb:tunables]`` to this node's tunables.

The registry lives in the persistent database ``pyctdb_registry.tdb`` (attached on every
node at the first change); every change is one persistent transaction. Errors:
RegistryError (EINVAL), DbError, ApiError, with their codes."""

from __future__ import annotations

import asyncio
import logging

from pyctdb.errors import ApiError, DbError
from pyctdb.rules import records as record_rules
from pyctdb.rules import registry

log = logging.getLogger(__name__)


class RegistryOperations:
    """Reads and changes the registry (in ``databases``, a Databases, or None: this
    agent runs without them) as ``net conf`` does; a change is a read-modify-write
    retried when another node changed the registry meanwhile."""

    CONFLICT_RETRIES = 20

    def __init__(self, databases):
        self.databases = databases
        self._lock = asyncio.Lock()  # read-modify-write of this node's requests, one at a time

    def _db(self):
        if self.databases is None:
            raise ApiError("EIO", "this agent runs without the database layer")
        return self.databases

    async def _records(self):
        db = self._db()
        try:
            db.find(registry.DB_NAME)
        except DbError as exc:
            if exc.code == "ENOENT":
                return []  # no registry yet: an empty configuration
            raise
        return [(k, r.value) for k, r in await db.traverse(registry.DB_NAME)]

    async def _current(self):
        recs = await self._records()
        return recs, registry.decode(recs)

    def _seqnum(self):
        try:
            return self._db().find(registry.DB_NAME)[1]["seqnum"]
        except DbError:
            return 0

    async def _commit(self, writes, expect):
        """One transaction: ``writes`` [(key, value bytes or None)], computed from the
        registry at sequence number ``expect``; DbError EBUSY if another node changed it
        since."""
        if not writes:
            return self._seqnum()
        db = self._db()
        try:
            db.find(registry.DB_NAME)
        except DbError as exc:
            if exc.code != "ENOENT":
                raise
            await db.attach(registry.DB_NAME, True)
        return await db.commit(registry.DB_NAME, writes, expect_seqnum=expect)

    async def _read_modify_write(self, change, check=False):
        """``change(recs)`` -> (writes, result) from the registry's records, committed
        only if no other writer changed the registry in between; on a conflict it is read
        and computed again (concurrent edits on several nodes both take effect, the
        second on top of the first). ``check``: compute, commit nothing. Returns
        (result, seqnum, writes)."""
        for attempt in range(self.CONFLICT_RETRIES):
            async with self._lock:
                seq = self._seqnum()
                writes, result = change(await self._records())
                if not writes or check:
                    return result, seq, writes
                try:
                    return result, await self._commit(writes, seq), writes
                except DbError as exc:
                    if exc.code != "EBUSY" or attempt == self.CONFLICT_RETRIES - 1:
                        raise
                    log.info("registry: changed by another node meanwhile (%s); again",
                             exc.message)
            await asyncio.sleep(0.01 * (attempt + 1))  # our copy catches up meanwhile

    def _section_writes(self, recs, old, new):
        """The write that turns section ``old`` into ``new`` (either may be None)."""
        if new is None:
            return [(registry.key_of(old["name"]), None)] if old is not None else []
        if old == new:
            return []
        k = registry.key_of(new["name"])
        orders = registry.orders(recs)
        order = orders.get(k, max(orders.values(), default=0) + 1)
        value = registry.encode(new, order)
        try:
            record_rules.check_value(value)
        except ValueError as exc:
            raise registry.RegistryError(f"section [{new['name']}]: {exc}") from None
        return [(k, value)]

    @staticmethod
    def _show(sec):
        return None if sec is None else {"name": sec["name"], "params": sec["params"],
                                         "text": registry.format_section(sec)}

    async def conf_list(self):
        self._db()
        _recs, secs = await self._current()
        return {"sections": secs, "text": registry.format_config(secs),
                "seqnum": self._seqnum()}

    async def conf_showsection(self, section):
        self._db()
        _recs, secs = await self._current()
        sec = registry.find(secs, section)
        if sec is None:
            raise ApiError("ENOENT", f"error getting share parameters: section "
                                     f"'{registry.section_name(section)}' does not exist")
        return self._show(sec)

    async def _existing(self, section, param):
        """(section, value) of a set parameter; net conf's errors otherwise."""
        _recs, secs = await self._current()
        sec = registry.find(secs, section)
        if sec is None:
            raise ApiError("ENOENT", f"Error: given service "
                                     f"'{registry.section_name(section)}' does not exist.")
        value = registry.get_param(sec, param)
        if value is None:
            raise ApiError("ENOENT", f"Error: given parameter "
                                     f"'{registry.param_name(sec['name'], param)}' is not set.")
        return sec, value

    async def conf_getparm(self, section, param):
        self._db()
        sec, value = await self._existing(section, param)
        return {"section": sec["name"], "param": registry.param_name(sec["name"], param),
                "value": value}

    async def conf_update(self, section, set=None, delete=None, exclusive=False,
                          delete_section=False, check=False):
        """Change one section in one transaction: set ``set`` ({param: value}), delete
        the parameters ``delete``, keep only ``set`` (``exclusive``) or remove the
        section (``delete_section``). ``check``: compute, change nothing."""
        self._db()
        if set is not None and not isinstance(set, dict):
            raise registry.RegistryError("set must be an object {param: value}")
        if delete is not None and not (isinstance(delete, list) and all(
                isinstance(p, str) for p in delete)):
            raise registry.RegistryError("delete must be a list of parameter names")

        def change(recs):
            old = registry.find(registry.decode(recs), section)
            if delete_section:
                registry.section_name(section)
                new = None
            else:
                new = registry.update_section(old, section, set, delete, bool(exclusive))
            return self._section_writes(recs, old, new), (old, new)

        (old, new), seq, writes = await self._read_modify_write(change, check)
        if writes and not check:
            log.warning("registry: section [%s] %s (seqnum %d)",
                        registry.section_name(section),
                        "deleted" if new is None else "changed", seq)
        return {"changed": bool(writes), "section": registry.section_name(section),
                "before": self._show(old), "after": self._show(new), "seqnum": seq}

    async def conf_setparm(self, section, param, value):
        self._db()
        return await self.conf_update(section, set={param: value})

    async def conf_delparm(self, section, param):
        self._db()
        await self._existing(section, param)
        return await self.conf_update(section, delete=[param])

    async def conf_delsection(self, section):
        self._db()
        _recs, secs = await self._current()
        if registry.find(secs, section) is None:
            raise ApiError("ENOENT", f"Error deleting share "
                                     f"{registry.section_name(section)}: no such section")
        return await self.conf_update(section, delete_section=True)

    async def conf_drop(self):
        self._db()
        def change(recs):
            return [(k, None) for k, _v in recs if k.startswith(registry.PREFIX)], None

        _none, seq, writes = await self._read_modify_write(change)
        log.warning("registry dropped (%d sections, seqnum %d)", len(writes), seq)
        return {"sections": len(writes), "seqnum": seq}

    async def conf_import(self, text, source="<input>", section=None, test=False):
        """Replace the configuration with smb.conf-style ``text`` (only ``section`` of
        it: replace that section), as ``net conf import``; one transaction."""
        self._db()
        if not isinstance(text, str) or not isinstance(source, str):
            raise registry.RegistryError("text and source must be strings")
        secs = registry.parse(text, source)
        if section is not None:
            want = registry.find(secs, section)
            if want is None:
                raise ApiError("ENOENT", f"Share {registry.section_name(section)} not found "
                                         f"in file {source}")
            secs = [want]

        def change(recs):
            if section is None:
                writes = {k: None for k, _v in recs if k.startswith(registry.PREFIX)}
                for i, s in enumerate(secs, 1):
                    writes[registry.key_of(s["name"])] = registry.encode(s, i)
                writes = list(writes.items())
            else:
                old = registry.find(registry.decode(recs), section)
                writes = self._section_writes(recs, old, secs[0])
            for k, v in writes:
                if v is not None:
                    try:
                        record_rules.check_value(v)
                    except ValueError as exc:
                        raise registry.RegistryError(
                            f"{source}: section {k[len(registry.PREFIX):]!r}: {exc}") from None
            return writes, None

        _none, seq, _writes = await self._read_modify_write(change, bool(test))
        if not test:
            log.warning("registry: imported %d sections from %s (seqnum %d)", len(secs),
                        source, seq)
        return {"sections": secs, "text": registry.format_config(secs), "test": bool(test),
                "seqnum": seq}



class TunablesWatcher:
    """Applies the registry's ``[pyctdb:tunables]`` to ``tunables`` whenever the
    registry's sequence number on this node changes (checked each cluster cycle: one dict
    lookup). A tunable the registry stops setting goes back to the value it had before
    the registry set it (the tunables file's or a ``setvar``'s)."""

    def __init__(self, databases, tunables, cluster=None):
        self.db = databases
        self.tunables = tunables
        self.cluster = cluster
        self.seen = None
        self.base = {}  # tunable -> its value before the registry set it
        self.applied = {}

    def on_cycle(self, now=None):
        st = self.db.stores[True]
        meta = st.meta.get(registry.DB_NAME)
        seq = None if meta is None else meta["seqnum"]
        if seq == self.seen:
            return
        self.seen = seq
        if meta is None or registry.DB_NAME in st.damaged:
            want = {}
        else:
            try:
                recs = [(k, r.value) for k, r in st.items(registry.DB_NAME) if not r.deleted]
                want = registry.tunables_of(registry.decode(recs))
            except Exception as exc:  # noqa: BLE001 - keep the node's tunables as they are
                log.error("registry (seqnum %s): tunables not applied: %s", seq, exc)
                return
        self.apply(want)

    def apply(self, want):
        changed = []
        for name in list(self.base):
            if name not in want:
                self.tunables.set(name, self.base.pop(name))
                changed.append(f"{name}={self.tunables.get(name)} (registry entry removed)")
        for name, value in want.items():
            if name not in self.base:
                self.base[name] = self.tunables.get(name)
            if self.tunables.get(name) != value:
                self.tunables.set(name, value)
                changed.append(f"{name}={value}")
        self.applied = dict(want)
        if changed:
            log.warning("tunables from the cluster registry: %s", ", ".join(changed))
            if self.cluster is not None:
                self.cluster.kick()
