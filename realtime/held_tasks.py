"""Tasks that must run to the end after their caller has gone: held here until done.

The event loop keeps only weak references to tasks, so a close that nobody awaits (a WebRTC peer's,
scheduled from a callback) or that its caller stops awaiting (a cancelled socket handler's) could
be collected half way; one set for all of them keeps each alive until it finishes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

_held: set[asyncio.Task] = set()


def run_held(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
    """Start `coro` as a task kept alive until it is done; await it (shielded) or let it run."""
    task = asyncio.create_task(coro, name=name)
    _held.add(task)
    task.add_done_callback(_held.discard)
    return task
