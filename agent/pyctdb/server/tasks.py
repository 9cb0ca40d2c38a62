"""Background tasks started one way: a strong reference is kept while they run, and a
crash is logged instead of vanishing with the task.

``asyncio`` keeps only a weak reference to a task, so a task nobody holds may be
garbage-collected mid-flight, and an exception nobody awaits is reported (if at all)
when the task object is destroyed. ``spawn`` fixes both for fire-and-forget work.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

# Tasks started without an owner: held here until they finish.
_running: set = set()


def _done(task: asyncio.Task, holder: set) -> None:
    holder.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, asyncio.CancelledError):
        log.error("task %s failed: %s", task.get_name(), exc,
                  exc_info=(type(exc), exc, exc.__traceback__))


def spawn(coro, name=None, owner=None) -> asyncio.Task:
    """Start ``coro`` as a task named ``name`` and keep it referenced until it ends:
    in ``owner`` (a set) when given, else in a module-level set. An exception other
    than cancellation is logged at ERROR with its traceback on ``pyctdb.server.tasks``."""
    task = asyncio.ensure_future(coro)
    if name is not None:
        task.set_name(name)
    holder = _running if owner is None else owner
    holder.add(task)
    task.add_done_callback(lambda t: _done(t, holder))
    return task
