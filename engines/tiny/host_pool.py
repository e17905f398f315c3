"""A chunk's per-avatar host work in worker processes: the motion engine on a GPU, where the host is the limit.

At 200 streams over 16 avatars an H100 draws and composes a chunk of 800 frames in ~45 ms, but the host took ~250 ms
to plan it: the cut-out's plan (cutout_torch's, numpy over an avatar's frames, ~4 ms an avatar) and the effects'
placements (EffectLayer.placements_many, ~4.5 ms an avatar) are Python over small arrays, held to one core by the GIL
(docs/bench/cutout_triton_2026-12-07). A GPU machine has cores to spare (16 beside an H100 here), so each avatar's work
runs in a worker process, avatars spread over the workers: the same functions on the same numbers, so the same
results to the bit, pickled back.

A worker keeps the state of each avatar it was given (an avatar's host half: its layers' numbers, its effect layer),
sent once; the parent names each owner by a serial number no other object gets (an id() is reused once its object
is gone) and tells the worker to drop it when the owner is collected. Workers are plain subprocesses
(`python -m avatarcast.engines.tiny.host_pool FD`) talking over a socket pair: no fork of a process that holds CUDA,
and no re-import of the parent's __main__ as multiprocessing's spawn does. A worker that dies ends its socket, and the
parent's call raises HostPoolError (the engine then plans in its own process from there on, and logs why).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import traceback
import weakref
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NoReturn

from avatarcast.engines.backends.host import available_cores
from avatarcast.engines.errors import EngineError

log = logging.getLogger(__name__)

# workers by default on a machine with `cores`: the cores the serving threads leave (the engine thread, the collector,
# the event loop, ASR) up to 8 (an avatar's plan is a few ms: past 8 workers the parent's own part is the limit)
MIN_CORES = 6  # fewer and the pool is not worth its processes (~300 MB each: numpy and torch imported)


def default_workers(cores: int | None = None) -> int:
    """Workers for this machine (`cores`: the cores this process may run on): 0 (plan in-process) under MIN_CORES
    cores, else cores - 4, at most 8."""
    n = available_cores() if cores is None else cores
    return 0 if n < MIN_CORES else min(8, n - 4)


class HostPoolError(EngineError, RuntimeError):
    """A worker could not do its jobs (it died, or a job raised: the worker's traceback is in the message). The
    engine catches it and plans in its own process from then on; a caller of the pool itself sees it as an engine
    error (engine_unavailable)."""


@dataclass(frozen=True)
class Job:
    """fn(state, *args) for one owner: in-process the owner is the state; in a worker, pack(owner), sent once.
    fn and pack's results must pickle (fn: a module-level function)."""

    fn: Callable[..., Any]
    owner: Any  # weakly referenced (a prepared avatar's part)
    pack: Callable[[Any], Any]
    args: tuple = ()


def run_here(jobs: Sequence[Job]) -> list[Any]:
    """The jobs in this process, in order."""
    return [j.fn(j.owner, *j.args) for j in jobs]


class HostPool:
    """`workers` worker processes; `submit` sends jobs and returns a function that waits for their results. Not
    thread-safe: one thread submits and collects (the engine's)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"a host pool needs 1 worker or more, not {workers}")
        self._conns: list[Connection] = []
        self._procs: list[subprocess.Popen] = []
        for _ in range(workers):
            mine, theirs = socket.socketpair()
            env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            proc = subprocess.Popen(
                [sys.executable, "-m", "avatarcast.engines.tiny.host_pool", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=env,
            )
            theirs.close()
            self._conns.append(Connection(mine.detach()))
            self._procs.append(proc)
        self._serials: dict[int, tuple[weakref.ref, int]] = {}  # id(owner) -> (a weak reference to it, its serial)
        self._next = itertools.count(1)
        self._home: dict[int, int] = {}  # serial -> worker
        self._sent: set[int] = set()
        self._drops: list[list[int]] = [[] for _ in range(workers)]
        # owners are collected on any thread, and on this one in the middle of a submit (a collection it sets off):
        # re-entrant
        self._drop_lock = threading.RLock()
        self._tickets = itertools.count()
        self._waiting: list[deque[int]] = [deque() for _ in range(workers)]  # tickets sent to each, oldest first
        self._got: dict[tuple[int, int], list[Any]] = {}  # (ticket, worker) -> results received early
        self._broken: str | None = None
        self._finalizer = weakref.finalize(self, _stop, self._conns, self._procs)

    @property
    def workers(self) -> int:
        return len(self._conns)

    def _serial(self, owner: Any) -> int:
        # by identity (an avatar's dataclass compares by value, and its arrays do not hash); the weak reference says
        # whether an id is still its owner's
        seen = self._serials.get(id(owner))
        if seen is not None and seen[0]() is owner:
            return seen[1]
        s = next(self._next)
        self._serials[id(owner)] = (weakref.ref(owner), s)
        load = Counter(self._home.values())
        self._home[s] = min(range(self.workers), key=lambda w: load[w])  # the worker with the fewest owners
        # through a weak reference to the pool: the owners (an engine's avatars) keep neither it nor its workers alive
        weakref.finalize(owner, _dropped, weakref.ref(self), id(owner), s)
        return s

    def _drop(self, key: int, serial: int) -> None:
        with self._drop_lock:
            if self._serials.get(key, (None, None))[1] == serial:
                del self._serials[key]
            w = self._home.pop(serial, None)
            if w is not None and serial in self._sent:
                self._sent.discard(serial)
                self._drops[w].append(serial)

    def submit(self, jobs: Sequence[Job]) -> Callable[[], list[Any]]:
        """Send the jobs to their owners' workers; the function returned waits for the results, in the jobs' order.

        Raises:
            HostPoolError: a worker is gone (here or when waiting), or a job raised there.
        """
        if self._broken is not None:
            raise HostPoolError(self._broken)
        per: list[list[tuple]] = [[] for _ in range(self.workers)]
        where = []
        with self._drop_lock:  # the owners' bookkeeping, which `_drop` changes
            for j in jobs:
                s = self._serial(j.owner)
                w = self._home[s]
                state = None if s in self._sent else j.pack(j.owner)
                self._sent.add(s)
                where.append((w, len(per[w])))
                per[w].append((s, j.fn, state, j.args))
        ticket = next(self._tickets)
        busy = [w for w in range(self.workers) if per[w]]
        for w in busy:
            # one message in a worker at a time: a worker sending a result larger than its socket's buffer waits for
            # us to read it, and our send of a message larger than the buffer (an avatar's state, many streams'
            # motions) would wait for it to read: both would wait forever
            while self._waiting[w]:
                self._receive(w)
            with self._drop_lock:
                drops, self._drops[w] = self._drops[w], []
            self._send(w, (drops, per[w]))
            self._waiting[w].append(ticket)

        def results() -> list[Any]:
            got = {w: self._take(ticket, w) for w in busy}
            return [got[w][k] for w, k in where]

        return results

    def _send(self, w: int, msg: Any) -> None:
        try:
            self._conns[w].send(msg)
        except (OSError, EOFError) as exc:
            self._fail(f"host worker {w} is gone ({exc})")

    def _take(self, ticket: int, w: int) -> list[Any]:
        """Ticket's results from worker w, reading (and keeping) those of older tickets first."""
        while (ticket, w) not in self._got:
            self._receive(w)
        return self._got.pop((ticket, w))

    def _receive(self, w: int) -> None:
        """Worker w's answer to its oldest message, kept for its ticket."""
        try:
            status, out = self._conns[w].recv()
        except (OSError, EOFError) as exc:
            self._fail(f"host worker {w} is gone (exit code {self._procs[w].poll()}; {exc!r})")
        self._got[(self._waiting[w].popleft(), w)] = out
        if status != "ok":
            self._fail(f"host worker {w} failed a job:\n{out}")

    def _fail(self, why: str) -> NoReturn:
        self._broken = why
        self.close()
        raise HostPoolError(why)

    def close(self) -> None:
        """Stop the workers (they also stop when this process ends: their sockets close)."""
        self._finalizer()


def _dropped(pool: weakref.ref, key: int, serial: int) -> None:
    """An owner was collected: its pool, if it is still there, tells the owner's worker with its next jobs."""
    p = pool()
    if p is not None:
        p._drop(key, serial)


def _stop(conns: list[Connection], procs: list[subprocess.Popen]) -> None:
    for c in conns:
        try:
            c.send(None)
        except (OSError, EOFError):
            pass
        c.close()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _serve(conn: Connection) -> None:
    """A worker: run each message's jobs on the states it keeps, answer ("ok", results) or ("error", traceback)."""
    states: dict[int, Any] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        drops, jobs = msg
        for s in drops:
            states.pop(s, None)
        try:
            out = []
            for serial, fn, state, args in jobs:
                if state is not None:
                    states[serial] = state
                out.append(fn(states[serial], *args))
            conn.send(("ok", out))
        except Exception:
            conn.send(("error", traceback.format_exc()))


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
