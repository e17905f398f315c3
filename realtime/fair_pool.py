"""A thread pool whose callers take turns: each owner (a session) has its own queue, served round robin.

The emotion reader and the prosody are shared by every session and run a few calls at a time. In a plain
ThreadPoolExecutor (first come, first served) a session that floods texts or clips puts its whole backlog
ahead of another session's next reaction (docs/security.md: ttff 140 -> 744 ms under a `say` flood). Here a
worker takes the next call from the next owner in the ring, so a session's call waits for at most one call
of each other session with work queued, whatever their backlogs.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor, Future
from typing import Any

_Job = tuple[Future, Callable[..., Any], tuple, dict]


class FairPool(Executor):
    """`workers` threads serving per-owner queues in turn; `lane(owner)` is the Executor one owner submits to.

    submit() on the pool itself queues under the owner None (callers without a session, such as warm-ups)."""

    def __init__(self, workers: int, name: str) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._cond = threading.Condition()
        self._queues: dict[Hashable, deque[_Job]] = {}
        self._ring: deque[Hashable] = deque()  # owners with queued work, in serving order
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def lane(self, owner: Hashable) -> Lane:
        return Lane(self, owner)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return self.submit_as(None, fn, *args, **kwargs)

    def submit_as(self, owner: Hashable, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            q = self._queues.get(owner)
            if q is None:
                q = self._queues[owner] = deque()
                self._ring.append(owner)
            q.append((fut, fn, args, kwargs))
            self._cond.notify()
        return fut

    def queued(self) -> dict[Hashable, int]:
        """Calls waiting per owner (not those running)."""
        with self._cond:
            return {o: len(q) for o, q in self._queues.items()}

    def _next(self) -> _Job | None:
        with self._cond:
            self._cond.wait_for(lambda: self._ring or self._closed)
            if not self._ring:
                return None
            owner = self._ring.popleft()
            q = self._queues[owner]
            job = q.popleft()
            if q:
                self._ring.append(owner)  # its next call waits for one turn of every other owner
            else:
                del self._queues[owner]
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            fut, fn, args, kwargs = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # the caller gets it through the future, as from any Executor
                fut.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._closed = True
            if cancel_futures:
                for q in self._queues.values():
                    for fut, *_ in q:
                        fut.cancel()
                self._queues.clear()
                self._ring.clear()
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                t.join()


class Lane(Executor):
    """One owner's door into a FairPool (what loop.run_in_executor takes); shutting a lane down does nothing."""

    def __init__(self, pool: FairPool, owner: Hashable) -> None:
        self.pool, self.owner = pool, owner

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return self.pool.submit_as(self.owner, fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None  # the pool is shared: its owner (Pools) shuts it down
