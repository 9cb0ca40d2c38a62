"""The other nodes as this node sees them: links, last reported state, silence.

:class:`Membership` owns the node-to-node transport. It tracks each peer's link and the
last STATE the peer sent, sends this node's STATE (when it changes, and as the
keepalive), drops peers that stay silent for KeepaliveInterval x KeepaliveLimit, and
applies a new nodes list (``reloadnodes``).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass, field

from pyctdb import __version__
from pyctdb.common.config import nodes_changes, read_nodes
from pyctdb.common.logsetup import NOTICE
from pyctdb.errors import ConfigError, ControlError
from pyctdb.protocol import frames
from pyctdb.rules import election, nodeflags
from pyctdb.server.transport import Transport

log = logging.getLogger(__name__)

#: Seconds the leader waits, after a peer's silence passed KeepaliveInterval x
#: KeepaliveLimit, before its addresses may move: the peer's guard (or the peer itself)
#: drops them at that silence, and this covers the guard's wake-up and the netlink calls.
FENCE_MARGIN = 0.25


def nodes_digest(nodes) -> str:
    text = "\n".join(n.address if not n.deleted else "#" for n in nodes)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Peer:
    """Another node as this one knows it: its link, process instance, last STATE, and
    when it was last heard from or went down."""

    pnn: int
    address: str
    link_up: bool = False
    instance: str = ""
    state: dict = None
    last_heard: float = 0.0
    down_since: float = field(default_factory=time.monotonic)
    #: its HELLO said a guard fences it (:mod:`pyctdb.server.guard`)
    guarded: bool = False
    #: its addresses are known to be gone: its link ended with a clean end of stream
    #: from its guard, or with a BYE that said so
    released: bool = False
    released_at: float = 0.0
    #: it acknowledges keepalives (its HELLO says so); ``acked``: the send time of this
    #: node's newest keepalive it acknowledged (None: none since its link came up)
    acks: bool = False
    acked: float = None
    up_since: float = 0.0


class Membership:
    """The peers of this node: their links (from the transport), the STATE each last
    sent, when each was last heard from; this node's STATE sent to them; the nodes
    list. Frames other than STATE and BYE go to :attr:`frame_handlers`."""

    def __init__(self, config, me, tunables, clock, state_payload, on_change):
        """``state_payload()``: this node's STATE fields but ``connected``;
        ``on_change()``: something the cycle acts on changed (a link, a peer's state)."""
        self.config = config
        self.pnn = me.pnn
        self.address = me.address
        self.tunables = tunables
        self.clock = clock
        self.instance = secrets.token_hex(8)
        self.nodes = list(config.nodes)
        self.digest = nodes_digest(self.nodes)
        # (a peer not heard since this node started may still serve its addresses: its
        # silence counts from now)
        self.peers = {n.pnn: Peer(n.pnn, n.address, last_heard=clock()) for n in self.nodes
                      if not n.deleted and n.pnn != self.pnn}
        #: MsgType -> sync callable(src_pnn, payload) for the frame types other than
        #: STATE and BYE; run on the event loop, after the stale-instance check
        self.frame_handlers = {}
        #: callables(pnn, reason) run when a peer's link goes down
        self.link_lost = []
        #: the controls this part serves (op -> handler), for the cluster's Controls
        self.control_handlers = {"reload_nodes": self._ctl_reload_nodes}
        #: callables(sent_at) run when this node's keepalive goes out (the guard's
        #: deadline)
        self.on_keepalive = []
        #: whether a guard fences this node (said in the HELLO)
        self.guarded = lambda: False
        #: callables() run when a peer acknowledged a newer keepalive (the lease)
        self.on_ack = []
        self._state_fields = state_payload
        self._on_change = on_change
        self._last_sent = None
        self._last_sent_at = -1e9
        self.transport = Transport(
            pnn=self.pnn, address=self.address, port=config.port,
            nodes={n.pnn: n.address for n in self.nodes if not n.deleted},
            hello=self._hello, on_frame=self._on_frame, on_link_up=self._on_link_up,
            on_link_down=self._on_link_down,
            # (the transport key; configurations made by hand in tests may lack it)
            keys=getattr(config, "transport_keys", ()),
            key_file=getattr(config, "transport_key_file", None))

    # -- tunables ------------------------------------------------------------------------
    @property
    def keepalive_interval(self) -> float:
        return float(self.tunables.get("KeepaliveInterval"))

    @property
    def keepalive_window(self) -> float:
        return self.keepalive_interval * int(self.tunables.get("KeepaliveLimit"))

    # -- transport callbacks -------------------------------------------------------------
    def _hello(self):
        return {"pnn": self.pnn, "address": self.address, "instance": self.instance,
                "nodes_digest": self.digest, "agent_version": __version__,
                "guard": bool(self.guarded()), "acks": True}

    def _on_link_up(self, pnn, hello):
        peer = self.peers.get(pnn)
        if peer is None:  # deleted by reloadnodes meanwhile
            return
        peer.link_up = True
        peer.guarded = hello.get("guard") is True
        peer.acks = hello.get("acks") is True
        peer.acked = None
        peer.up_since = self.clock()
        peer.released = False
        peer.instance = hello["instance"]
        peer.state = None
        peer.last_heard = self.clock()
        log.info("node %d (%s) connected", pnn, peer.address)
        self.transport.send(pnn, frames.MsgType.STATE, self.state_payload())
        self._on_change()

    def _on_link_down(self, pnn, reason):
        peer = self.peers.get(pnn)
        if peer is None:  # deleted by reloadnodes meanwhile
            return
        was = peer.link_up
        peer.link_up = False
        peer.state = None
        peer.down_since = self.clock()
        peer.acked = None
        if peer.guarded and self.transport.clean_close.get(pnn):
            peer.released = True
        if peer.released:
            peer.released_at = peer.down_since
        if was:
            log.warning("node %d (%s) is DISCONNECTED: %s%s", pnn, peer.address, reason,
                        "; its addresses are gone" if peer.released else "")
        for callback in self.link_lost:
            callback(pnn, reason)
        self._on_change()

    def _on_frame(self, pnn, frame):
        peer = self.peers.get(pnn)
        if peer is None:  # deleted by reloadnodes meanwhile
            return
        p = frame.payload
        if not peer.instance or p.get("instance") != peer.instance:
            return  # a stale frame from an older process of that node (or none yet)
        peer.last_heard = self.clock()
        if frame.type == frames.MsgType.STATE:
            old = peer.state
            peer.state = p
            if peer.acks and isinstance(p.get("ts"), (int, float)):
                self.transport.send(pnn, frames.MsgType.ACK, {
                    "pnn": self.pnn, "instance": self.instance, "ts": p["ts"]})
            if old is None or any(old.get(k) != v for k, v in p.items()
                                  if k not in ("connected", "ts")):
                self._on_change()
        elif frame.type == frames.MsgType.ACK:
            ts = float(p["ts"])
            if ts <= self.clock() + 1.0 and (peer.acked is None or ts > peer.acked):
                peer.acked = ts
                for callback in self.on_ack:
                    callback()
        elif frame.type == frames.MsgType.BYE:
            log.info("node %d is shutting down", pnn)
            peer.released = p.get("released") is True
            peer.released_at = self.clock()
            self.transport.drop(pnn, "node shut down")
        else:
            handler = self.frame_handlers.get(frame.type)
            if handler is not None:
                handler(pnn, p)

    # -- what the peers are --------------------------------------------------------------
    def is_connected(self, pnn) -> bool:
        peer = self.peers.get(pnn)
        return peer is not None and peer.link_up

    def state_of(self, pnn):
        """The last STATE node ``pnn`` sent (None: none since its link came up)."""
        peer = self.peers.get(pnn)
        return peer.state if peer is not None else None

    def connected(self) -> set:
        """The PNNs of the peers whose link is up."""
        return {p.pnn for p in self.peers.values() if p.link_up}

    def peer_flags(self, peer) -> int:
        if not peer.link_up:
            return nodeflags.DISCONNECTED
        if peer.state is None:
            return nodeflags.UNKNOWN
        return int(peer.state["flags"])

    def heard_all(self) -> bool:
        """Every peer is connected and has sent its state."""
        return all(p.link_up and p.state is not None for p in self.peers.values())

    def has_quorum(self) -> bool:
        """More than half of the non-deleted nodes are connected (this one included)."""
        total = 1 + len(self.peers)
        seen = 1 + sum(1 for p in self.peers.values() if p.link_up and p.state is not None)
        return 2 * seen > total

    def active_members(self, my_flags) -> list:
        """The active nodes (this one if ``my_flags`` say so), by PNN."""
        members = [self.pnn] if nodeflags.is_active(my_flags) else []
        for p in self.peers.values():
            if p.link_up and p.state is not None and nodeflags.is_active(self.peer_flags(p)):
                members.append(p.pnn)
        return sorted(members)

    def lmaster_capability(self) -> dict:
        """{pnn: can be a location master} of the peers that sent their state."""
        return {p.pnn: bool(p.state.get("lmaster_capable", True))
                for p in self.peers.values() if p.state is not None}

    def peer_views(self) -> tuple:
        """The peers as the election sees them."""
        views = []
        for p in self.peers.values():
            st = p.state or {}
            views.append(election.PeerView(
                pnn=p.pnn, connected=p.link_up and p.state is not None,
                flags=self.peer_flags(p), claims_leader=bool(st.get("is_leader")),
                leader_capable=bool(st.get("leader_capable", True))))
        return tuple(views)

    def lease_inputs(self, released_for) -> tuple:
        """``(acks, released_until)`` of the connected and the released peers, for
        :func:`pyctdb.rules.lease.expiry`; a released peer counts for ``released_for``
        seconds after it went."""
        acks = [p.acked for p in self.peers.values() if p.link_up and p.acked is not None]
        released = [p.released_at + released_for for p in self.peers.values()
                    if not p.link_up and p.released]
        return acks, released

    def missing_all_released(self) -> bool:
        """Some peers are missing from this node's majority, and every one of them is
        known to have dropped its addresses and stopped (its guard closed its links, or
        it said BYE). False when a missing peer is merely silent, or still linked but
        not heard from (no state yet)."""
        missing = [p for p in self.peers.values() if not (p.link_up and p.state is not None)]
        return bool(missing) and all(not p.link_up and p.released for p in missing)

    def held(self, now) -> dict:
        """{pnn: until when} of the peers that are down but may still serve their
        addresses (address fencing): neither released nor silent for KeepaliveInterval
        x KeepaliveLimit + :data:`FENCE_MARGIN`, after which a peer's guard (or the peer
        itself) has dropped them."""
        out = {}
        for p in self.peers.values():
            if not p.link_up and not p.released:
                until = p.last_heard + self.keepalive_window + FENCE_MARGIN
                if until > now:
                    out[p.pnn] = until
        return out

    # -- keepalive -----------------------------------------------------------------------
    def silent_deadline(self):
        """When the first connected peer would count as silent (None: no peer is
        connected)."""
        heard = [p.last_heard for p in self.peers.values() if p.link_up]
        if not heard:
            return None
        return min(heard) + self.keepalive_window + 0.002

    def drop_silent(self, now) -> list:
        """Drop the peers silent for KeepaliveInterval x KeepaliveLimit, and those that
        speak but have acknowledged none of this node's keepalives for that long (this
        node's frames do not reach them: a half-open connection, or a one-way cut); their
        PNNs. The outgoing loop then connects again."""
        dropped = []
        for peer in self.peers.values():
            # (a peer that is paused stops both: it is not heard within a keepalive
            # interval by then, and the silence rule below applies)
            deaf_for = now - (peer.acked or peer.up_since)
            if (peer.link_up and peer.acks
                    and deaf_for > self.keepalive_window + self.keepalive_interval
                    and now - peer.last_heard <= self.keepalive_interval):
                log.warning("node %d (%s) acknowledged none of this node's keepalives for "
                            "%.1fs though it speaks: this node's frames do not reach it; "
                            "connecting again", peer.pnn, peer.address, deaf_for)
                self.transport.drop(peer.pnn, "keepalives not acknowledged")
                dropped.append(peer.pnn)
            if peer.link_up and now - peer.last_heard > self.keepalive_window:
                log.warning("node %d (%s) silent for %.1fs (KeepaliveInterval %s x "
                            "KeepaliveLimit %s): dropping it", peer.pnn, peer.address,
                            now - peer.last_heard, self.tunables.get("KeepaliveInterval"),
                            self.tunables.get("KeepaliveLimit"))
                self.transport.drop(peer.pnn, "keepalive timeout")
                dropped.append(peer.pnn)
        return dropped

    def state_payload(self) -> dict:
        return {**self._state_fields(),
                "connected": sorted(p.pnn for p in self.peers.values() if p.link_up)}

    def broadcast_state(self, now, force=False):
        """Send this node's STATE to every peer when it changed (or ``force``), else when
        the keepalive is due."""
        payload = self.state_payload()
        # A change of the "connected" list alone does not trigger a send (it is news to
        # nobody, and during formation it would multiply the traffic by N); it goes out
        # with the next keepalive.
        changed = self._last_sent is None or any(
            payload[k] != self._last_sent.get(k) for k in payload if k != "connected")
        if force or changed or now - self._last_sent_at >= self.keepalive_interval:
            # (the send time, echoed by the peers' ACKs: this node's lease; the real
            # time, not the cycle's ``now``, which may be older)
            payload["ts"] = self.clock()
            self.transport.broadcast(frames.MsgType.STATE, payload)
            self._last_sent = payload
            self._last_sent_at = now
            for callback in self.on_keepalive:
                callback(payload["ts"])

    # -- the nodes list ------------------------------------------------------------------
    def reload_nodes(self, new_nodes):
        """Apply a new nodes list (``reloadnodes``, CTDB's rules: nodes.changes). New
        nodes are connected to and join as any returning node does; deleted ones are
        disconnected and forgotten. Returns [(pnn, change)]; ValueError (nothing
        changed) if the change is not allowed."""
        changes, errors = nodes_changes(self.nodes, new_nodes)
        if not errors and (self.pnn, "DELETED") in changes:
            errors = [f"this node ({self.pnn}) is deleted in the new nodes list: stop it "
                      "instead"]
        if errors:
            raise ValueError("; ".join(errors))
        self.nodes = list(new_nodes)
        self.digest = nodes_digest(self.nodes)
        for n in self.nodes:
            if not n.deleted and n.pnn != self.pnn and n.pnn not in self.peers:
                self.peers[n.pnn] = Peer(n.pnn, n.address)
        self.transport.set_nodes({n.pnn: n.address for n in self.nodes if not n.deleted})
        for pnn, what in changes:
            if what == "DELETED":
                self.peers.pop(pnn, None)
        done = [f"{p} {w}" for p, w in changes if w != "unchanged"]
        log.log(NOTICE, "nodes list reloaded: %d nodes%s", len(self.nodes),
                f" ({', '.join(done)})" if done else ", no change")
        self._on_change()
        return changes

    async def _ctl_reload_nodes(self, src, args):
        """reloadnodes on this node: read the nodes list again; it must be the one the
        asking node read (``digest``), so that every node moves to the same list."""
        try:
            new = read_nodes(self.config)
        except ConfigError as exc:
            raise ControlError(self.pnn, str(exc)) from None
        if nodes_digest(new) != args["digest"]:
            raise ControlError(self.pnn, f"the nodes list on node {self.pnn} "
                               f"({self.config.nodes_source}) differs from node {src}'s: "
                               "copy the same file to every node first")
        try:
            changes = self.reload_nodes(new)
        except ValueError as exc:
            raise ControlError(self.pnn, str(exc)) from None
        return {"changes": changes}
