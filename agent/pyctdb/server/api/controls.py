"""Operations that act on a node of the cluster (``pnn``): which node, and the control
that runs there, its failure mapped to an error code by type."""

from __future__ import annotations

from pyctdb.errors import ApiError, ControlError


class NodeControls:
    """Runs a control on a node for a client's request: checks the PNN it names and
    turns a failed control into an ApiError by its code (EINVAL: the caller's mistake;
    ENOTCONN: the node is not connected; else EIO)."""

    def __init__(self, cluster):
        self.cluster = cluster

    def target(self, pnn):
        """The PNN a command acts on: this node when ``pnn`` is None; ApiError for a PNN
        that is not a node of the cluster."""
        c = self.cluster
        if pnn is None:
            return c.pnn
        if isinstance(pnn, bool) or not isinstance(pnn, int):
            raise ApiError("EINVAL", f"pnn must be an integer, not {pnn!r}")
        node = next((n for n in c.nodes if n.pnn == pnn), None)
        if node is None:
            raise ApiError("ENOENT", f"node {pnn} does not exist (nodes: "
                           f"{', '.join(str(n.pnn) for n in c.nodes if not n.deleted)})")
        if node.deleted:
            raise ApiError("ENOENT", f"node {pnn} is deleted")
        return pnn

    async def on_node(self, pnn, op, args, timeout=10.0):
        """Run control ``op`` on node ``pnn`` (this node: directly). A ValueError of the
        handler, here or there, is the caller's mistake (EINVAL)."""
        try:
            return await self.cluster.control(pnn, op, args, timeout=timeout)
        except ValueError as exc:
            raise ApiError("EINVAL", str(exc)) from None
        except ControlError as exc:
            if exc.code == "EINVAL":
                raise ApiError("EINVAL", exc.message) from None
            if exc.code == "ENOTCONN" and pnn != self.cluster.pnn:
                raise ApiError("ENOTCONN", f"node {pnn} is not connected") from None
            raise ApiError("EIO", str(exc)) from None
