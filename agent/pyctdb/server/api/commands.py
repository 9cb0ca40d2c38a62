"""The JSON API's commands (docs/api.md) but the databases' (db_commands.py): each
command's name and the node operation it calls, with the request's ``args`` as keyword
arguments. What is the JSON API's own is here: an admin command per action, the answer
``message_send`` with ``quiet`` does not get."""

from __future__ import annotations

from pyctdb.errors import ApiError

#: a handler's result for a request that gets no answer (``message_send`` with ``quiet``)
NO_ANSWER = object()

#: the registry's commands: RegistryOperations' methods of the same names
CONF_COMMANDS = ("conf_list", "conf_showsection", "conf_getparm", "conf_update",
                 "conf_setparm", "conf_delparm", "conf_delsection", "conf_drop",
                 "conf_import")


def node_commands(ops) -> dict:
    """The commands on the node and the cluster: information, tunables, administration,
    public addresses, events."""
    info, tunables, admin, ips, events = (ops.info, ops.tunables, ops.admin, ops.ips,
                                          ops.events)

    def act(action):
        async def handler(pnn=None):
            return await admin.act(action, pnn)
        handler.__name__ = action
        return handler

    return {
        "ping": info.ping, "version": info.version, "status": info.status,
        "listnodes": info.listnodes, "pnn": info.pnn, "leader": info.leader,
        "uptime": info.uptime, "log": info.log,
        "getdebug": info.getdebug, "setdebug": info.setdebug,
        "listvars": tunables.listvars, "getvar": tunables.getvar,
        "setvar": tunables.setvar,
        "disable": act("disable"), "enable": act("enable"), "stop": act("stop"),
        "continue": act("continue"), "ban": admin.ban, "unban": act("unban"),
        "recover": admin.recover, "reloadnodes": admin.reloadnodes,
        "ip": ips.ip, "moveip": ips.moveip, "addip": ips.addip, "delip": ips.delip,
        "reloadips": ips.reloadips, "ipreallocate": ips.ipreallocate,
        "event_status": events.event_status, "event_run": events.event_run,
        "event_script": events.event_script,
    }


def message_commands(ops):
    """The messaging commands, and those of them that take the connection (``conn``)."""
    messages = ops.messages

    def message_send(pnn, srvid, data="", quiet=False):
        if not isinstance(quiet, bool):
            raise ApiError("EINVAL", "quiet must be true or false")
        res = messages.send(pnn, srvid, data)
        return NO_ANSWER if quiet else res  # quiet: answered only when it fails

    cmds = {"message_register": messages.register, "message_deregister": messages.deregister,
            "message_send": message_send, "message_check": messages.check,
            "message_status": messages.status}
    return cmds, {"message_register", "message_deregister"}


def conf_commands(ops) -> dict:
    """The cluster registry's commands (``conf_*``)."""
    return {name: getattr(ops.registry, name) for name in CONF_COMMANDS}
