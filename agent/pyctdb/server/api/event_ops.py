"""Node operations on event scripts: an event's last result, running an event, listing,
enabling and disabling scripts (errors: EventError, EINVAL or ENOENT)."""

from __future__ import annotations

from pyctdb.errors import ApiError
from pyctdb.server.events import EVENTS


class EventOperations:
    """The event runner (``runner``, an EventRunner) for clients."""

    def __init__(self, runner):
        self.runner = runner

    def event_status(self, event="monitor"):
        if event not in EVENTS:
            raise ApiError("EINVAL", f"unknown event {event!r}")
        res = self.runner.last.get(event)
        if res is None:
            raise ApiError("ENOENT", f"event {event} has not run yet")
        return res

    async def event_run(self, event, args=(), timeout=None):
        return await self.runner.run(event, *list(args), timeout=timeout)

    def event_script(self, action, script=None):
        if action == "list":
            return {"scripts": self.runner.script_list()}
        if action not in ("enable", "disable") or not script:
            raise ApiError("EINVAL", "usage: event_script action=list|enable|disable script=NAME")
        return self.runner.set_enabled(script, action == "enable")
