"""pyctdbd: the pyctdb cluster agent.

    pyctdbd [--config-dir DIR] [--socket PATH] [--check-config] [--log-stderr]
    pyctdbd --drop-public-ips [--config-dir DIR] [--socket PATH]

Runs in the foreground (systemd ``Type=notify``): it reports ``READY=1`` once this node
has joined the cluster (a leader is known, the leader's generation adopted and recovery
mode is NORMAL). SIGTERM/SIGINT shut it down cleanly: it says BYE to its peers, lets go
of the cluster lock and removes its socket. Exit codes: 0 clean stop, 1 runtime failure,
2 bad configuration or arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys

from pyctdb import __version__
from pyctdb.common.config import load_config, resolve_node_address
from pyctdb.common.logsetup import setup as setup_logging
from pyctdb.common.tunables import Tunables
from pyctdb.errors import ApiError, ConfigError
from pyctdb.protocol.api import DEFAULT_SOCKET
from pyctdb.protocol.fastpath import WAIT_FILE
from pyctdb.server.cluster import Cluster
from pyctdb.server.clusterlock import make_lock
from pyctdb.server.db.databases import Databases
from pyctdb.server.db.dirlock import DirectoryInUse, DirectoryLocks
from pyctdb.server.events import (EventRunner, Monitor, Notifications, run_start_events,
                                  script_environment)
from pyctdb.server.failover import Failover
from pyctdb.server.fencing import Fencing
from pyctdb.server.guard import Guard, scope_argv
from pyctdb.server.loopwatch import LoopWatch
from pyctdb.server.hosted import drop_addresses, hosted_ips_path
from pyctdb.server.messaging import Messaging
from pyctdb.server.sdnotify import notify
from pyctdb.server.api.operations import NodeOperations
from pyctdb.server.api.registry_ops import TunablesWatcher  # [pyctdb:tunables] of the registry
from pyctdb.server.api.server import ApiServer
from pyctdb.server.ctdbsocket import DEFAULT_PATH as CTDB_SOCKET, CtdbSocketServer

log = logging.getLogger(__name__)

#: Allocations between two passes of the garbage collector's youngest generation
#: (Python's default: 700): a pass costs about the same however many objects died.
GC_THRESHOLD = 20_000


def parse_args(argv):
    p = argparse.ArgumentParser(prog="pyctdbd", description="pyctdb cluster agent")
    p.add_argument("--config-dir", default=os.environ.get("PYCTDB_CONFIG_DIR")
                   or os.environ.get("CTDB_BASE") or "/etc/pyctdb",
                   help="configuration directory: pyctdb's, or CTDB's as it is (default "
                        "$PYCTDB_CONFIG_DIR, else $CTDB_BASE, else /etc/pyctdb)")
    p.add_argument("--socket", default=None,
                   help=f"API socket to serve (default $PYCTDB_SOCKET or {DEFAULT_SOCKET})")
    p.add_argument("--ctdb-socket", default=None,
                   help="CTDB's socket, where CTDB's client protocol is served (default "
                        f"$CTDB_SOCKET or {CTDB_SOCKET}; 'none': not served)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration, print a summary and exit (0 = valid, "
                        "2 = invalid)")
    p.add_argument("--drop-public-ips", action="store_true",
                   help="remove this node's public addresses (those of the public_addresses "
                        "file and those the agent recorded as hosted, e.g. added with addip) "
                        "from its interfaces and exit (for systemd's ExecStopPost, so a "
                        "killed agent leaves none behind); give the agent's --socket")
    p.add_argument("--log-stderr", action="store_true",
                   help="log to standard error instead of the configured location")
    p.add_argument("--version", action="version", version=f"pyctdbd {__version__}")
    return p.parse_args(argv)


def load(args):
    """Load and check everything; return ``(config, me, tunables)`` or raise ConfigError."""
    config = load_config(args.config_dir, keys=not args.drop_public_ips)
    me = resolve_node_address(config)
    tunables = Tunables(config.tunables)
    return config, me, tunables


def socket_path_of(args):
    return args.socket or os.environ.get("PYCTDB_SOCKET") or DEFAULT_SOCKET


def ctdb_socket_of(args):
    """CTDB's socket path, or None (not served)."""
    path = args.ctdb_socket or os.environ.get("CTDB_SOCKET") or CTDB_SOCKET
    return None if path == "none" else path


def event_loop():
    """The event loop the agent runs on: ``(name, factory)``. uvloop (libuv) when it is
    installed — a dependency of the package: it halves the event loop's own cost per
    message — else asyncio's; ``PYCTDB_EVENT_LOOP=asyncio`` chooses asyncio's. Only the
    agent's loop: threads that make their own loops (pyroute2's) keep asyncio's."""
    want = os.environ.get("PYCTDB_EVENT_LOOP", "uvloop")
    if want != "asyncio" and hasattr(asyncio, "Runner"):  # (Python 3.11)
        try:  # (an optional dependency, imported only when it is used)
            import uvloop
        except ImportError:
            pass
        else:
            return f"uvloop {uvloop.__version__}", uvloop.new_event_loop
    return "asyncio", None


def guard_argv(config, socket_path, log_location):
    """The command line of this agent's guard (:mod:`pyctdb.server.guard`), in a scope
    unit of its own under systemd (:func:`pyctdb.server.guard.scope_argv`)."""
    return scope_argv(os.getpid()) + [
        sys.executable, "-m", "pyctdb.server.guard", "--config-dir", config.config_dir,
        "--hosted-file", hosted_ips_path(socket_path), "--log-location", log_location,
        "--log-level", config.log_level]


async def _serve(config, me, tunables, socket_path, ring, log_location, ctdb_path=None):
    lock = make_lock(config.cluster_lock)
    cluster = Cluster(config, me, tunables, lock=lock)
    script_env = script_environment(config, ctdb_path or None)
    events = EventRunner(config.config_dir, tunables, env=script_env)
    notifications = Notifications(config.config_dir, env=script_env)
    monitor = Monitor(cluster, events, tunables, notify=notifications)
    failover = Failover(cluster, config, tunables, events=events,
                        hosted_file=hosted_ips_path(socket_path))
    # The guard drops this node's addresses (and kills the lock helper) when the agent is
    # killed or paused; the lease drops them when the node loses the majority.
    # (guard_argv may try systemd-run once: off the loop)
    argv = await asyncio.get_running_loop().run_in_executor(
        None, guard_argv, config, socket_path, log_location)
    guard = Guard(argv, on_dropped=lambda addrs, why: fencing.guard_dropped(addrs, why))
    fencing = Fencing(cluster, failover.local, guard)
    cluster.leadership.step_down_hooks.append(lambda term: fencing.update())
    cluster.leadership.lock_hooks.append(guard.lock_holder)
    databases = Databases(cluster, config)
    # (the client fast path's gate closes when this node is fenced: its clients stop
    # writing before another node can take their records)
    databases.gate.limit = fencing.bound
    databases.gate.renew = fencing.renew_interval
    cluster.membership.on_keepalive.append(lambda sent_at: databases.gate.extend())
    guard.argv += ["--gate-file", os.path.join(databases.stores[False].path, WAIT_FILE)]
    databases.open()
    watcher = TunablesWatcher(databases, tunables, cluster)
    # The leader's recovery, in CTDB's order: the startrecovery event on every member
    # (the takeover run starts then, beside the databases' recovery), the databases;
    # in the new generation the databases are thawed before the recovered event.
    cluster.set_recovery_steps(during=(failover.start_recovery, databases.recover),
                               after=(databases.recovered, failover.recovered))
    # Every cycle, after the election: the leader's takeover runs and the node's address
    # checks, the databases (an inactive node's copies, vacuuming), the registry's tunables.
    cluster.set_cycle_tasks((failover.on_cycle, databases.on_cycle, watcher.on_cycle))
    ops = NodeOperations(cluster, tunables, log_buffer=ring, failover=failover, events=events,
                         databases=databases, messaging=Messaging(cluster))
    api = ApiServer(socket_path, ops)
    # CTDB's own client protocol, for CTDB's tool (and Samba's daemons, to come)
    # (every node answers what other nodes' CTDB sockets forward to it)
    ctdb_sock = CtdbSocketServer(ctdb_path or "", ops)
    failover.local.on_released.append(ctdb_sock.released)  # (smbd ends its sessions)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def ready():
        notify(f"READY=1\nSTATUS=joined: node {cluster.pnn}, leader {cluster.leader}, "
               f"generation {cluster.generation}")
    cluster.on_joined.append(ready)

    try:
        await api.start()
    except ApiError as exc:
        log.error("%s", exc.message)
        print(f"pyctdbd: {exc.message}", file=sys.stderr)
        return 1
    if ctdb_path:
        try:
            await ctdb_sock.start()
        except (ApiError, OSError) as exc:
            log.error("CTDB socket %s not served: %s", ctdb_path,
                      getattr(exc, "message", None) or exc)
            ctdb_path = None
    # CTDB's init and setup events, before the node joins (either failing stops it)
    why = await run_start_events(events, notifications)
    if why is not None:
        if ctdb_path:
            await ctdb_sock.stop()
        await api.stop()
        databases.close()
        log.error("%s", why)
        print(f"pyctdbd: {why}", file=sys.stderr)
        return 1
    guard.start()
    watch = LoopWatch(loop)  # (a stall of the loop is logged with where it is)
    watch.start()
    try:
        await cluster.start()
    except OSError as exc:
        watch.stop()
        await guard.stop(drop=False)
        if ctdb_path:
            await ctdb_sock.stop()
        await api.stop()
        msg = f"cannot listen on {me.address}:{config.port}: {exc.strerror or exc}"
        log.error("%s", msg)
        print(f"pyctdbd: {msg}", file=sys.stderr)
        return 1
    monitor.start()
    # The objects made so far live as long as the agent: left out of the cyclic garbage
    # collector's passes, which the hot paths (each request makes a few short-lived
    # cycles: futures, tasks) would otherwise make walk them again and again.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    notify(f"STATUS=node {cluster.pnn} ({me.address}) waiting to join")
    await stop.wait()
    log.warning("shutting down (signal received)")
    notify("STOPPING=1")
    await failover.evacuate(timeout=10.0)
    # (as ctdbd: a stopping node releases what it still hosts, before its BYE says so)
    await failover.local.drop_all("the agent stops")
    await guard.stop(drop=True)
    await fencing.stop()
    await monitor.stop()
    await notifications.stop()
    await failover.stop()
    try:
        await asyncio.wait_for(events.run("shutdown"), 10)
    except Exception as exc:
        log.error("shutdown event: %s", exc)
    await cluster.stop(released=True)
    if ctdb_path:
        await ctdb_sock.stop()
    await api.stop()
    databases.close()
    watch.stop()
    log.warning("stopped")
    return 0


def drop_public_ips(config, hosted_file):
    """Remove from this host's interfaces every address of the public_addresses file and
    every address recorded in ``hosted_file`` (what the agent hosted, including runtime
    additions); the record is then removed, or keeps what could not be removed."""
    removed, errors = drop_addresses({pa.address: pa.prefix for pa in config.public_addresses},
                                     hosted_file, rewrite=True)
    for what in removed:
        print(f"pyctdbd: removed {what}")
    for err in errors:
        print(f"pyctdbd: {err}", file=sys.stderr)
    return 1 if errors else 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config, me, tunables = load(args)
    except ConfigError as exc:
        print(f"pyctdbd: {exc}", file=sys.stderr)
        return 2
    if args.drop_public_ips:
        return drop_public_ips(config, hosted_ips_path(socket_path_of(args)))
    if args.check_config:
        active = [n for n in config.nodes if not n.deleted]
        print(f"{config.conf_path}: OK: {len(config.nodes)} nodes ({len(active)} active) "
              f"from {config.nodes_source}; this node is PNN {me.pnn} ({me.address}); "
              f"{len(config.public_addresses)} public addresses; cluster lock: "
              f"{config.cluster_lock or 'none'}")
        return 0
    log_location = "stderr" if args.log_stderr else config.log_location
    ring = setup_logging(log_location, config.log_level)
    socket_path = socket_path_of(args)
    loop_name, loop_factory = event_loop()
    log.warning("pyctdbd %s starting: node %d (%s), config %s, socket %s, event loop %s",
                __version__, me.pnn, me.address, args.config_dir, socket_path, loop_name)
    dirs = DirectoryLocks((config.volatile_db_dir, config.persistent_db_dir,
                           config.state_db_dir))
    try:
        dirs.acquire()
    except DirectoryInUse as exc:
        log.error("%s", exc.message)
        print(f"pyctdbd: {exc.message}", file=sys.stderr)
        return 1
    try:
        if loop_factory is None:
            return asyncio.run(_serve(config, me, tunables, socket_path, ring, log_location,
                                      ctdb_socket_of(args)))
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(_serve(config, me, tunables, socket_path, ring, log_location,
                                      ctdb_socket_of(args)))
    except KeyboardInterrupt:
        return 0
    finally:
        dirs.release()


if __name__ == "__main__":
    sys.exit(main())
