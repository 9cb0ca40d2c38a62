"""Controls: requests from one node to another, answered with a result or an error code.

A CONTROL frame names an ``op`` and its ``args``; the receiving node runs the handler
registered for ``op`` and answers with a REPLY: ``ok: true`` and the ``result``, or
``ok: false``, the ``error`` text and its ``code`` (an errno name: EINVAL for arguments the
handler refused, ENOSYS for an op it does not know, the handler's own code for a
:class:`~pyctdb.errors.ControlError`, EIO for anything else).
"""

from __future__ import annotations

import asyncio
import logging
import time

from pyctdb.errors import ControlError, PyctdbError
from pyctdb.protocol import controls as control_defs
from pyctdb.protocol import frames
from pyctdb.server import tasks

log = logging.getLogger(__name__)

#: What a handler of :attr:`Controls.control_now` returns when the control cannot be
#: answered at once: it is then served by the op's handler in a task, as any other.
LATER = object()
#: Exceptions of a handler that mean the caller's arguments were wrong (EINVAL).
ARGUMENT_ERRORS = (ValueError, TypeError, KeyError)
#: Seconds between two warnings about malformed frames from one node.
MALFORMED_LOG_INTERVAL = 30.0


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expire(fut, exc):
    if not fut.done():
        fut.set_exception(exc)


class Controls:
    """Sends controls to other nodes and awaits their replies, and serves the controls
    other nodes send to this one with the handlers in :attr:`control_handlers`."""

    def __init__(self, pnn, instance, send, is_connected):
        """``send(pnn, msg_type, payload) -> bool`` sends a frame; ``is_connected(pnn)``
        says whether node ``pnn``'s link is up."""
        self.pnn = pnn
        self.instance = instance
        self._send = send
        self._is_connected = is_connected
        #: op -> async handler(src_pnn, args) -> result (JSON-able); see :meth:`call`
        self.control_handlers = {"ping": self._ctl_ping}
        #: op -> handler(src_pnn, args) -> result, or LATER: tried first, on the loop,
        #: for the controls of the hot path (record migration) that can usually be
        #: answered without waiting for anything; spares a task per control
        self.control_now = {}
        self._req_ids = iter(range(1, 2 ** 62))
        self._pending = {}  # req_id -> (pnn, Future)
        self._tasks = set()  # controls being served
        self._malformed_logged = {}  # src pnn -> when a malformed frame was last logged

    # -- asking -------------------------------------------------------------------------
    async def call(self, pnn, op, args=None, timeout=5.0):
        """Ask node ``pnn`` to run ``op``; return its result or raise ControlError (its
        ``code``: the node's answer, ENOTCONN when not connected, ETIMEDOUT).

        To this node itself the handler is called directly (its exceptions as raised)."""
        if pnn == self.pnn:
            handler = self.control_handlers.get(op)
            if handler is None:
                raise ControlError(pnn, f"unknown control {op!r}", code="ENOSYS")
            return await handler(self.pnn, dict(args or {}))
        if not self._is_connected(pnn):
            raise ControlError(pnn, f"node {pnn} is not connected", code="ENOTCONN")
        req_id = next(self._req_ids)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending[req_id] = (pnn, fut)
        # (a timer on the future, not asyncio.wait_for: no second task per control)
        timer = loop.call_later(timeout, _expire, fut, ControlError(
            pnn, f"control {op} timed out after {timeout}s", code="ETIMEDOUT"))
        try:
            if not self._send(pnn, frames.MsgType.CONTROL, {
                    "pnn": self.pnn, "instance": self.instance, "req_id": req_id, "op": op,
                    "args": dict(args or {})}):
                raise ControlError(pnn, f"node {pnn} is not connected", code="ENOTCONN")
            return await fut
        finally:
            timer.cancel()
            self._pending.pop(req_id, None)

    def on_link_lost(self, pnn, reason):
        """Node ``pnn``'s link went down (``reason``): the controls waiting for its reply
        fail with ``node PNN disconnected`` (ENOTCONN)."""
        for _req_id, (dst, fut) in list(self._pending.items()):
            if dst == pnn and not fut.done():
                fut.set_exception(ControlError(pnn, f"node {pnn} disconnected",
                                               code="ENOTCONN"))

    def on_reply(self, pnn, p):
        """A REPLY frame from node ``pnn``."""
        if not (_is_int(p.get("req_id")) and isinstance(p.get("ok"), bool)):
            self._malformed(pnn, "REPLY", p)
            return
        entry = self._pending.get(p["req_id"])
        if entry is not None and entry[0] == pnn and not entry[1].done():
            if p["ok"]:
                entry[1].set_result(p.get("result"))
            else:
                code = p.get("code")
                entry[1].set_exception(ControlError(
                    pnn, p.get("error") or "failed",
                    code=code if isinstance(code, str) and code else "EIO"))

    # -- serving ------------------------------------------------------------------------
    def on_control(self, pnn, p):
        """A CONTROL frame from node ``pnn``: answered at once by its ``control_now``
        handler when it can, else served in a task of its own."""
        if not (_is_int(p.get("req_id")) and isinstance(p.get("op"), str)
                and isinstance(p.get("args"), dict)):
            self._malformed(pnn, "CONTROL", p)
            return
        now = self.control_now.get(p["op"])
        if now is not None:
            reply = self._answer(pnn, p, lambda: self._checked(now, pnn, p["op"], p["args"]))
            if reply is not None:
                self._send(pnn, frames.MsgType.REPLY, reply)
                return
        tasks.spawn(self._serve(pnn, p), name=f"control-{p['op']}", owner=self._tasks)

    @staticmethod
    def _checked(handler, pnn, op, args):
        if op in control_defs.CONTROLS:
            control_defs.validate_request(op, args)
        return handler(pnn, args)

    def _malformed(self, pnn, kind, p):
        """Log (once per node and interval, without a traceback) and drop."""
        now = time.monotonic()
        if now - self._malformed_logged.get(pnn, -1e9) >= MALFORMED_LOG_INTERVAL:
            self._malformed_logged[pnn] = now
            log.warning("dropping a malformed %s frame from node %d (req_id, op, args or "
                        "ok missing or of the wrong type): %.200r", kind, pnn, p)

    async def _serve(self, pnn, p):
        try:
            result = await self._run(pnn, p["op"], p["args"])
        except Exception as exc:  # (mapped by _answer, below)
            reply = self._answer(pnn, p, None, exc)
        else:
            reply = self._reply(p, ok=True, result=result)
        self._send(pnn, frames.MsgType.REPLY, reply)

    def _reply(self, p, **fields):
        return {"pnn": self.pnn, "instance": self.instance, "req_id": p["req_id"], **fields}

    def _answer(self, pnn, p, run, exc=None):
        """The REPLY to control ``p`` from ``run()`` (None when it returns LATER), or
        from the exception ``exc`` (or ``run``'s): an error is mapped by its type."""
        op = p["op"]
        try:
            if exc is not None:
                raise exc
            result = run()
            return None if result is LATER else self._reply(p, ok=True, result=result)
        except control_defs.ControlArgumentError as exc:
            log.info("control %s from node %d refused: %s", op, pnn, exc.message)
            return self._reply(p, ok=False, error=exc.message, code=exc.code)
        except PyctdbError as exc:  # an error of ours: its code says what it is
            return self._reply(p, ok=False, error=exc.message or str(exc), code=exc.code)
        except ValueError as exc:  # the caller's mistake: no traceback
            log.info("control %s from node %d failed: %s", op, pnn, exc)
            return self._reply(p, ok=False, error=str(exc), code="EINVAL")
        except ARGUMENT_ERRORS as exc:  # (TypeError, KeyError: the name says more)
            log.info("control %s from node %d failed: %s: %s", op, pnn,
                     type(exc).__name__, exc)
            return self._reply(p, ok=False, error=f"{type(exc).__name__}: {exc}",
                               code="EINVAL")
        except Exception as exc:  # a failing handler answers, it does not kill the daemon
            log.error("control %s from node %d failed", op, pnn,
                      exc_info=(type(exc), exc, exc.__traceback__))
            return self._reply(p, ok=False, error=f"{type(exc).__name__}: {exc}",
                               code="EIO")

    async def _run(self, pnn, op, args):
        handler = self.control_handlers.get(op)
        if handler is None:
            raise ControlError(self.pnn, f"unknown control {op!r}", code="ENOSYS")
        # The one place where a request's arguments are checked against the control's
        # definition (pyctdb.protocol.controls) before its handler runs: refused ones
        # answer EINVAL. An op with a handler but no definition yet is served unchecked.
        if op in control_defs.CONTROLS:
            control_defs.validate_request(op, args)
        return await handler(pnn, args)

    async def _ctl_ping(self, src, args):
        return {"pnn": self.pnn, "time": time.time()}

    async def stop(self):
        """Cancel the controls being served."""
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
