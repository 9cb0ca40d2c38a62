"""Samba for the tests: a clustered smb.conf of a node (its CTDB socket, directories of
its own), as the tests of Samba on pyctdb write it."""

from __future__ import annotations

import os


def write_smb_conf(d, ctdb_socket, global_extra="", shares=""):
    """Write ``d/smb.conf`` for a clustered Samba (``clustering = yes``, registry
    configuration) on the CTDB socket ``ctdb_socket``, with its lock, state, cache,
    private and pid directories under ``d``; ``global_extra`` lines go in ``[global]``
    (before ``include = registry``, which comes last: smbd takes the directories from
    the lines before it), ``shares`` after it. Returns the file's path.

    ``lock/msg.lock`` is made beforehand: smbd makes it in the lock directory of its
    start, before it reads smb.conf, and would not find it in ``lock directory``."""
    for sub in ("lock/msg.lock", "state", "cache", "private", "run", "ncalrpc"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    path = os.path.join(d, "smb.conf")
    with open(path, "w") as f:
        f.write(f"""[global]
clustering = yes
ctdbd socket = {ctdb_socket}
lock directory = {d}/lock
state directory = {d}/state
cache directory = {d}/cache
private dir = {d}/private
pid directory = {d}/run
ncalrpc dir = {d}/ncalrpc
log file = {d}/log.%m
{global_extra}
include = registry
{shares}""")
    return path
