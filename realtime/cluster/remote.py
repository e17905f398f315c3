"""RemoteScheduler: the Scheduler protocol (realtime/scheduler.py) the Hub, the runners and admission control use
(`submit`, `queue_depth`, `busy_fraction`, `busy_by_session`, `ladder`, `stream_chunk_s`, the background lane),
with every chunk job sent to an engine replica through a Serve handle.

Affinity: each request names its session (`handle.options(session_id=...)`), and the engine
deployment routes with Serve's consistent-hash router, so a session's chunks go to one replica
(and batch there with its neighbours) for as long as the replica set does not change.
Failover: the request carries the stream state, so when the replica dies the same chunk is sent
again (the router has dropped the dead replica and takes the next one on the ring): the session
loses the time of one request, not its stream. Retries are bounded; past them the chunk fails
like any engine failure (the runner ends that reaction, the session goes on).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from avatarcast.engines.contract import StreamEngine
from avatarcast.realtime.cluster.wire import ChunkCall, ChunkReply
from avatarcast.realtime.ladder import DegradationLadder
from avatarcast.realtime.scheduler import ChunkJob, ChunkResult, EngineScheduler, priced_in_window

log = logging.getLogger("avatarcast.cluster")


def replica_lost_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean "this replica is gone or cannot take requests", not "this chunk is bad"."""
    return (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError, BackPressureError, asyncio.TimeoutError)


class RemoteScheduler:
    """Sends chunk jobs to engine replicas; keeps the load figures the Hub reads from a scheduler (a Scheduler)."""

    max_batch = None  # each replica's own scheduler batches
    depth = 1

    def __init__(
        self,
        engine: StreamEngine,
        handle: Any,
        *,
        attempts: int = 4,
        timeout_s: float = 10.0,
        window_s: float = 20.0,
        on_batch: Callable[[int, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine  # the gateway's own engine: stream starts it can describe, and the background lane
        self.handle = handle.options(method_name="chunk")
        self.attempts, self.timeout_s, self.window_s = attempts, timeout_s, window_s
        self.on_batch = on_batch
        self.clock = clock
        self.local = EngineScheduler(engine)  # avatar warm-up (loops, latents cache) stays on the gateway
        self.ladder: DegradationLadder | None = None  # set by the Hub; fed by the replies' lateness
        self.in_flight = 0
        self.batches = self.jobs_done = self.late_batches = self.oom_splits = 0
        self.busy_s = self.last_batch_s = 0.0
        self._per_stream: float | None = None  # EWMA: replica seconds per stream-chunk at full quality
        self.cost_at = -1e18
        # (end, seconds, replica, decoded the cheaper way) per batch
        self._live: deque[tuple[float, float, str, bool]] = deque(maxlen=4096)
        # (end, seconds, batch size, session, decoded the cheaper way) per reply: each session's part of its replica's
        # batch
        self._shares: deque[tuple[float, float, int, str, bool]] = deque(maxlen=4096)
        self._batches: OrderedDict[tuple[str, float], None] = OrderedDict()  # batches already counted
        self._replica_seen: dict[str, float] = {}  # replica -> last answer
        self.replica_of: OrderedDict[str, str] = OrderedDict()  # session -> the replica of its last chunk
        self.chunks_of: dict[str, int] = {}  # session -> chunks answered
        self.failovers = 0  # chunk requests retried after their replica was lost
        self.moves = 0  # sessions whose chunks went to another replica than before
        self.max_gap_s = 0.0  # longest a chunk waited on replica failures before an answer
        self._ticker: asyncio.Task | None = None

    # -- the Scheduler protocol --

    @property
    def queue_depth(self) -> int:
        """Chunk jobs sent and not answered yet."""
        return self.in_flight

    @property
    def stream_chunk_s(self) -> float | None:
        """Seconds per stream-chunk of the whole engine fleet: one replica's cost over the replicas answering."""
        per = self._per_stream
        return None if per is None else per / max(1, len(self._active_replicas()))

    @stream_chunk_s.setter
    def stream_chunk_s(self, value: float | None) -> None:  # the Hub clears it before re-measuring
        self._per_stream = value

    def busy_fraction(self, window_s: float = 10.0, full_scale: float = 1.0) -> float:
        """The engine replicas' mean busy fraction over the last `window_s` seconds (0..1); `full_scale` prices the
        batches decoded the full way (Scheduler.busy_fraction)."""
        lo = self.clock() - window_s
        busy = sum(priced_in_window(end, dur, lo, cheap, full_scale) for end, dur, _, cheap in self._live)
        return min(1.0, max(0.0, busy / (window_s * self._replicas_in(lo))))

    def busy_by_session(self, window_s: float = 10.0, full_scale: float = 1.0) -> dict[str, float]:
        """Each of this gateway's sessions' part of busy_fraction (a batch's seconds over its size, on the same
        fleet-wide scale). Another gateway's sessions in the same batches are not seen here, so the parts can add
        up to less than busy_fraction, and admission control keeps counting their part even once they close
        (this gateway's Hub names only the sessions it closed)."""
        lo = self.clock() - window_s
        scale = window_s * self._replicas_in(lo)
        parts: dict[str, float] = {}
        for end, dur, size, sid, cheap in self._shares:
            part = priced_in_window(end, dur, lo, cheap, full_scale)
            parts[sid] = parts.get(sid, 0.0) + part / (max(1, size) * scale)
        return parts

    def _replicas_in(self, lo: float) -> int:
        """Replicas that ran a live batch after `lo` (at least 1): the fleet busy_fraction averages over."""
        return max(1, len({r for end, _, r, _ in self._live if end > lo}))

    async def start(self) -> None:
        await self.local.start()
        self._ticker = asyncio.create_task(self._tick(), name="remote-scheduler-ladder")

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        await self.local.close()

    async def run_on_engine(self, fn: Callable, *args: Any) -> Any:
        return await self.local.run_on_engine(fn, *args)

    async def run_background(self, fn: Callable, *args: Any) -> Any:
        return await self.local.run_background(fn, *args)

    async def submit(self, job: ChunkJob) -> ChunkResult:
        """The job's chunk from its session's replica; retried on another replica if that one is lost."""
        state = job.state  # a StreamStart is made on the replica
        lost = replica_lost_errors()
        handle = self.handle.options(session_id=job.session_id)
        first_sent = self.clock()
        self.in_flight += 1
        try:
            for attempt in range(1, self.attempts + 1):
                call = ChunkCall(job.session_id, state, job.due_t - self.clock(), job.emotion, job.intensity)
                resp = handle.remote(call)
                try:
                    reply: ChunkReply = await asyncio.wait_for(resp, self.timeout_s)
                except asyncio.CancelledError:  # the session dropped this chunk: so does the replica
                    resp.cancel()
                    raise
                except lost as exc:
                    if isinstance(exc, asyncio.TimeoutError):
                        resp.cancel()
                    was = self.replica_of.get(job.session_id, "?")
                    if attempt == self.attempts:
                        log.error(
                            "session %s: chunk failed on %d replicas (last: %s); giving up on this chunk",
                            job.session_id,
                            attempt,
                            _why(exc),
                        )
                        raise
                    log.warning(
                        "session %s: engine replica %s lost (%s); resending the chunk from its last "
                        "state (attempt %d/%d)",
                        job.session_id,
                        was,
                        _why(exc),
                        attempt + 1,
                        self.attempts,
                    )
                    self.failovers += 1
                    await asyncio.sleep(min(0.05 * 2**attempt, 0.5))
                    continue
                return self._result(job, reply, first_sent if attempt > 1 else None)
            raise AssertionError("unreachable")
        finally:
            self.in_flight -= 1

    # -- bookkeeping --

    def _result(self, job: ChunkJob, r: ChunkReply, failed_over_from: float | None) -> ChunkResult:
        now = self.clock()
        if failed_over_from is not None:  # answered after a lost replica: how long the chunk took in all
            self.max_gap_s = max(self.max_gap_s, now - failed_over_from)
        prev = self.replica_of.get(job.session_id)
        if prev is not None and prev != r.replica:
            self.moves += 1
            log.info("session %s: now on engine replica %s (was %s)", job.session_id, r.replica, prev)
        self.replica_of[job.session_id] = r.replica
        self.replica_of.move_to_end(job.session_id)
        self.chunks_of[job.session_id] = self.chunks_of.get(job.session_id, 0) + 1
        while len(self.replica_of) > 4096:  # closed sessions age out
            self.chunks_of.pop(self.replica_of.popitem(last=False)[0], None)
        self._replica_seen[r.replica] = now
        finished = now
        sampled = finished - r.decode_s
        started = sampled - r.sample_s
        dur = r.sample_s + r.decode_s
        self._shares.append((finished, dur, r.batch, job.session_id, r.cheaper))
        key = (r.replica, r.batch_started)
        if key not in self._batches:  # a batch of B streams answers B requests: count it once
            self._batches[key] = None
            while len(self._batches) > 1024:
                self._batches.popitem(last=False)
            self._live.append((finished, dur, r.replica, r.cheaper))
            self.batches += 1
            self.busy_s += dur
            self.last_batch_s = dur
            if r.full_quality:
                per = dur / max(1, r.batch)
                self._per_stream = per if self._per_stream is None else 0.8 * self._per_stream + 0.2 * per
                self.cost_at = finished
            late = finished > job.due_t
            self.late_batches += late
            if self.ladder is not None:
                self.ladder.observe(late, self.busy_fraction())
            if self.on_batch is not None:
                self.on_batch(r.batch, dur)
        self.jobs_done += 1
        return ChunkResult(r.frames, r.state, started, sampled, finished, r.batch, r.cheaper)

    def _active_replicas(self) -> list[str]:
        lo = self.clock() - self.window_s
        return [name for name, t in self._replica_seen.items() if t > lo]

    async def _tick(self) -> None:
        """The ladder steps back up while nothing answers (EngineScheduler does this between batches)."""
        while True:
            await asyncio.sleep(1.0)
            if self.ladder is not None:
                self.ladder.tick(self.busy_fraction())

    def cluster_status(self) -> dict:
        """For /v1/status: which replica serves which session, and the failovers so far."""
        return {
            "replicas": sorted(self._active_replicas()),
            "sessions": {
                sid: {"replica": r, "chunks": self.chunks_of.get(sid, 0)} for sid, r in self.replica_of.items()
            },
            "in_flight": self.in_flight,
            "failovers": self.failovers,
            "moves": self.moves,
            "max_failover_wait_s": round(self.max_gap_s, 3),
        }


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"
