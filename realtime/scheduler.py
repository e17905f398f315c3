"""Shares one engine among all sessions: their chunk jobs are batched into one sampler call.

The engine is not re-entrant and its work is CPU/GPU-bound, so it runs on one dedicated
thread; the event loop only queues jobs and awaits futures. While one batch runs, the next
jobs queue up, so batches form by themselves under load (no timer wait is added at low load).
Jobs are taken earliest-deadline-first, at most `max_batch` per call. A job whose deadline
leaves room may wait a little (at most `max_wait_s`, never past its deadline minus twice the
recent batch time) for other sessions' jobs to join its batch: one forward for many streams
costs little more than for one.

Engines that can queue a call's work and collect its frames later (`launch_chunks`, the Wan
engine on a GPU) are pipelined: the engine thread queues the next batch while a second thread
waits for the previous batch's frames, so one batch's decode overlaps the next one's sampler
steps on the device. At most `capabilities.pipeline_depth` batches are in flight.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from avatarcast.engines.contract import StreamEngine, StreamStart, StreamState
from avatarcast.realtime.batching import BatchEstimates, Wait, next_batch
from avatarcast.realtime.ladder import DegradationLadder

log = logging.getLogger("avatarcast.scheduler")
T = TypeVar("T")


@dataclass
class ChunkJob:
    """One stream's next chunk: `state` is a private copy the engine may advance."""

    session_id: str
    state: StreamState | StreamStart  # a StreamStart is made on the engine thread
    due_t: float  # monotonic deadline of its first frame
    emotion: str
    intensity: float
    future: asyncio.Future | None = field(default=None, repr=False)
    queued_at: float = 0.0


@dataclass(frozen=True)
class ChunkResult:
    frames: np.ndarray  # (T, 360, 640, 4) uint8 RGBA
    state: StreamState  # the stream state after this chunk
    started: float  # monotonic: batch start
    sampled: float  # monotonic: latents ready
    finished: float  # monotonic: frames decoded
    batch: int
    cheaper: bool = False  # decoded the engine's cheaper way (the ladder's cheaper_decode rung)


class Scheduler(Protocol):
    """Runs the chunk jobs of every session on an engine, and measures its load.

    EngineScheduler runs them on this process's engine; the Ray RemoteScheduler
    (realtime/cluster/remote.py) on engine replicas. The Hub, the runners, admission control and
    the degradation ladder see only this.
    """

    ladder: DegradationLadder | None  # set by the Hub; fed with each live batch's lateness
    cost_at: float  # when stream_chunk_s was last measured
    batches: int
    jobs_done: int
    late_batches: int  # batches that finished after their earliest deadline
    oom_splits: int  # batches split after the device ran out of memory
    busy_s: float

    @property
    def stream_chunk_s(self) -> float | None:
        """Engine seconds per stream-chunk at full quality (None: not measured yet; set None to re-measure)."""
        ...

    @stream_chunk_s.setter
    def stream_chunk_s(self, value: float | None) -> None: ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def max_batch(self) -> int | None:
        """Most streams per engine call (None: the replicas decide)."""
        ...

    @property
    def depth(self) -> int:
        """Engine calls kept in flight."""
        ...

    def busy_fraction(self, window_s: float = 10.0, full_scale: float = 1.0) -> float:
        """The engine's busy fraction over the last `window_s` seconds. `full_scale`: the seconds of batches decoded
        the full way (not the ladder's cheaper decode) count times this: the load priced at the cheaper decode, when
        admission control counts capacity there (realtime/admission.py, `cheaper_ratio`)."""
        ...

    def busy_by_session(self, window_s: float = 10.0, full_scale: float = 1.0) -> dict[str, float]:
        """Each session's part of busy_fraction(window_s, full_scale): its share of every live batch it was in (batch
        seconds over batch size) as a fraction of the window. Admission control reads it to tell how much of a new
        session's reacting is already measured, and to leave out the part of sessions gone (realtime/admission.py);
        work no session owns is keyed by what it is ("calibration", "clip")."""
        ...

    def cluster_status(self) -> dict | None:
        """Replicas and failovers for /v1/status (None: a single-process engine)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def submit(self, job: ChunkJob) -> ChunkResult:
        """The job's chunk.

        Raises:
            Exception: whatever the engine raised for the job's batch (the session ends that reaction).
        """
        ...

    async def run_on_engine(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def run_background(self, fn: Callable[..., T], *args: Any) -> T: ...


class EngineScheduler:
    """Batches chunk jobs of all sessions onto one engine thread (earliest deadline first)."""

    def __init__(
        self,
        engine: StreamEngine,
        *,
        max_batch: int | None = None,
        pipeline_depth: int | None = None,
        max_wait_s: float = 0.25,
        margin_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.on_batch = on_batch  # (batch size, seconds): metrics
        caps = engine.capabilities
        # None: the engine's own batch (wan: --wan-batch; tiny: 8)
        self.max_batch = max(1, int(max_batch if max_batch is not None else caps.max_batch))
        self.max_wait_s = max_wait_s
        self.margin_s = margin_s
        self.est_batch_s = 0.15  # running estimate of one batch's time; sets how long jobs may wait
        self.clock = clock
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        # None: the engine's; fewer (a benchmark's one-at-a-time baseline), never more than it declares
        if pipeline_depth is not None and not 1 <= pipeline_depth <= caps.pipeline_depth:
            raise ValueError(f"pipeline_depth: 1 to the engine's {caps.pipeline_depth}, not {pipeline_depth}")
        self.depth = max(1, int(pipeline_depth if pipeline_depth is not None else caps.pipeline_depth))
        # pipelined: waits for launched batches' frames, while the engine thread queues the next batch
        self.collector = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-collect") if self.depth > 1 else None
        )
        self._inflight: deque[asyncio.Task] = deque()
        self._last_finished = float("-inf")  # when the last batch's frames arrived (pipelined accounting)
        self._queue: list[ChunkJob] = []
        self._background: list[tuple[Callable, tuple, asyncio.Future]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.oom_splits = 0  # batches split after the device ran out of memory
        self.jobs_done = 0
        self.last_batch_s = 0.0
        self.busy_s = 0.0
        # measured load, for admission control and the degradation ladder (realtime/admission.py, ladder.py)
        self.stream_chunk_s: float | None = None  # EWMA: engine seconds per stream-chunk at full steps
        self.cost_at = -1e18  # when stream_chunk_s was last measured
        self.late_batches = 0
        # (end, seconds, the sessions of its jobs, decoded the cheaper way) of recent live batches
        self._live: deque[tuple[float, float, tuple[str, ...], bool]] = deque(maxlen=4096)
        self.ladder: DegradationLadder | None = None  # set by the Hub

    def busy_fraction(self, window_s: float = 10.0, full_scale: float = 1.0) -> float:
        """The fraction of the last `window_s` seconds the engine spent on live batches (0..1); `full_scale` prices
        the batches decoded the full way (Scheduler.busy_fraction)."""
        lo = self.clock() - window_s
        busy = sum(priced_in_window(end, dur, lo, cheap, full_scale) for end, dur, _, cheap in self._live)
        return min(1.0, max(0.0, busy / window_s))

    def busy_by_session(self, window_s: float = 10.0, full_scale: float = 1.0) -> dict[str, float]:
        """Each session's part of busy_fraction: a batch's seconds split evenly over its jobs (one forward
        serves them all; nothing finer is measured). The parts add up to busy_fraction below a full engine."""
        lo = self.clock() - window_s
        parts: dict[str, float] = {}
        for end, dur, sessions, cheap in self._live:
            share = priced_in_window(end, dur, lo, cheap, full_scale) / (len(sessions) * window_s)
            for sid in sessions:
                parts[sid] = parts.get(sid, 0.0) + share
        return parts

    def _observe(self, batch: list[ChunkJob], results: list[ChunkResult], degraded: bool, dur: float) -> None:
        """Record a finished live batch (`dur`: its engine time): its cost per stream, and whether it
        finished past a deadline."""
        r = results[0]
        self._live.append((r.finished, dur, tuple(j.session_id for j in batch), r.cheaper))
        if not degraded:  # cost at full quality: what a new stream would add
            per = dur / len(results)
            self.stream_chunk_s = per if self.stream_chunk_s is None else 0.8 * self.stream_chunk_s + 0.2 * per
            self.cost_at = r.finished
        late = r.finished > min(j.due_t for j in batch)
        self.late_batches += late
        if self.ladder is not None:
            self.ladder.observe(late, self.busy_fraction())

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def cluster_status(self) -> None:
        return None  # one engine, in this process

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="engine-scheduler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for job in self._queue:
            if job.future is not None and not job.future.done():
                job.future.cancel()
        self._queue.clear()
        for _, _, fut in self._background:
            fut.cancel()
        self._background.clear()
        for task in list(self._inflight):  # their jobs' futures are cancelled by _collect
            task.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self.collector is not None:
            self.collector.shutdown(wait=True, cancel_futures=True)

    async def run_on_engine(self, fn: Callable[..., T], *args: Any) -> T:
        """Engine work that must happen now (start-up), on the engine thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def run_background(self, fn: Callable[..., T], *args: Any) -> T:
        """Engine work that can wait (warming a new avatar): runs only while no chunk job is queued.

        Keep each call short (one chunk or one cache entry): a live job arriving meanwhile waits for it.
        """
        if self._wake is None:
            raise RuntimeError("scheduler not started")
        fut = asyncio.get_running_loop().create_future()
        self._background.append((fn, args, fut))
        self._wake.set()
        return await fut

    async def submit(self, job: ChunkJob) -> ChunkResult:
        """Queue a job and wait for its frames; cancelling the await drops the job if not yet running."""
        if self._wake is None:
            raise RuntimeError("scheduler not started")
        job.future = asyncio.get_running_loop().create_future()
        job.queued_at = self.clock()
        self._queue.append(job)
        self._wake.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            if job in self._queue:
                self._queue.remove(job)
            raise

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue and self._background:
                fn, args, fut = self._background.pop(0)
                if fut.done():
                    continue
                try:
                    out = await loop.run_in_executor(self.executor, fn, *args)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not fut.done():
                        fut.set_exception(exc)
                else:
                    if not fut.done():
                        fut.set_result(out)
                continue
            if not self._queue:
                self._wake.clear()
                try:  # wake now and then: the ladder steps back up while nothing runs
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                except TimeoutError:
                    if self.ladder is not None:
                        self.ladder.tick(self.busy_fraction())
                continue
            estimates = BatchEstimates(self.max_batch, self.est_batch_s, self.max_wait_s, self.margin_s)
            decision = next_batch(self._queue, self.clock(), estimates)
            if isinstance(decision, Wait):
                self._wake.clear()
                try:  # room to wait: let other sessions' jobs join this batch
                    await asyncio.wait_for(self._wake.wait(), decision.seconds)
                except TimeoutError:
                    pass
                continue  # look again: more jobs, or the wait is over
            self._queue = list(decision.rest)
            batch = [j for j in decision.jobs if j.future is not None and not j.future.done()]
            if not batch:
                continue
            steps = self.ladder.live_steps if self.ladder is not None else None
            cheaper = bool(self.ladder is not None and self.ladder.cheaper_decode)
            if self.depth > 1 and await self._launch(batch, steps):
                continue
            try:
                results = await loop.run_in_executor(self.executor, self._work_fitting, batch, steps, cheaper)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the engine failed: every job of this batch fails, others go on
                self._fail(batch, exc)
                continue
            if results:
                self._answer(
                    batch, results, degraded=steps is not None or cheaper, dur=results[0].finished - results[0].started
                )
                # One turn of the loop before the next decision: the sessions just answered submit their next
                # chunk there, so a job that waited out its room during this batch takes them along instead of
                # running alone. Without it two streams in one phase ran in turns (the motion engine, two
                # sessions: each batch of one stream 0.25 s, then the other's job, due with it, waited for it
                # and came 40-60 ms late; one batch of both takes 0.42 s), and the ladder stepped down.
                await asyncio.sleep(0)

    def _fail(self, batch: list[ChunkJob], exc: BaseException) -> None:
        """The engine failed this batch (call from the except block: the log keeps the traceback)."""
        log.exception("engine batch of %d failed", len(batch))
        for j in batch:
            if j.future is not None and not j.future.done():
                j.future.set_exception(exc)

    def _account(self, n: int, dur: float) -> None:
        """A batch of n streams is done, having cost `dur` seconds of engine time."""
        self.batches += 1
        self.jobs_done += n
        self.last_batch_s = dur
        self.est_batch_s = 0.7 * self.est_batch_s + 0.3 * dur
        self.busy_s += dur

    def _answer(self, batch: list[ChunkJob], results: list[ChunkResult], degraded: bool, dur: float) -> None:
        """A live batch's results to its jobs, after the load figures and metrics have seen it."""
        self._observe(batch, results, degraded, dur)
        if self.on_batch is not None:
            self.on_batch(len(results), dur)
        for j, r in zip(batch, results):
            if j.future is not None and not j.future.done():
                j.future.set_result(r)

    async def _launch(self, batch: list[ChunkJob], steps: int | None) -> bool:
        """Pipelined: queue the batch on the engine and collect its frames in a task. False: run it the
        ordinary way instead (the device ran out of memory while queueing: _work_fitting splits it)."""
        while len(self._inflight) >= self.depth:
            await asyncio.wait({self._inflight[0]})
        try:
            launched = await asyncio.get_running_loop().run_in_executor(self.executor, self._queue_batch, batch, steps)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not _out_of_memory(exc):
                self._fail(batch, exc)
                return True
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
            _release_device_memory()
            return False
        task = asyncio.create_task(self._collect(batch, steps, *launched), name="engine-collect")
        self._inflight.append(task)
        task.add_done_callback(self._inflight.remove)
        return True

    def _queue_batch(self, batch: list[ChunkJob], steps: int | None) -> tuple[Any, list, float]:
        """Engine thread: the batch's states and emotions, then its work queued on the device."""
        t0 = self.clock()
        states = self._prepare(batch)
        pending = self.engine.launch_chunks(states, steps=steps)
        return pending, states, t0

    async def _collect(self, batch: list[ChunkJob], steps: int | None, pending: Any, states: list, t0: float) -> None:
        """Wait (on the collector thread) for a launched batch's frames, then answer its jobs."""
        try:
            per = await asyncio.get_running_loop().run_in_executor(self.collector, pending.wait)
        except asyncio.CancelledError:
            for j in batch:
                if j.future is not None and not j.future.done():
                    j.future.cancel()
            raise
        except Exception as exc:
            self._fail(batch, exc)
            return
        t2 = self.clock()
        # the device's own times where the engine has them: queued batches wait for the one before
        gpu = pending.gpu_s
        started, sampled = (max(t0, t2 - gpu[0]), t2 - gpu[1]) if gpu else (t0, t2)
        # overlapping batches: each is charged from the previous batch's end, so busy time adds up
        # to wall time, and per-stream cost is what a batch adds to the pipeline
        dur = t2 - max(started, self._last_finished)
        self._last_finished = t2
        self._account(len(states), dur)
        results = [ChunkResult(per[i], states[i], started, sampled, t2, len(states)) for i in range(len(states))]
        self._answer(batch, results, degraded=steps is not None, dur=dur)

    def _prepare(self, batch: list[ChunkJob]) -> list:
        """Engine thread: each job's stream state (a new stream's reference latent is engine work too),
        set to the job's emotion."""
        for j in batch:
            if isinstance(j.state, StreamStart):
                s = j.state
                j.state = self.engine.start_stream(s.avatar, s.emotion, s.intensity, s.seed)
            self.engine.set_emotion(j.state, j.emotion, j.intensity)
        return [j.state for j in batch]

    def _work_fitting(
        self, batch: list[ChunkJob], steps: int | None = None, cheaper: bool = False
    ) -> list[ChunkResult]:
        """_work, degrading instead of failing when the device runs out of memory: the batch is
        split in halves (down to single streams) and later batches are capped at the size that fit.
        The engines only advance a stream after a whole sampler run, so a retried half starts
        from where the failed call started (after an OOM in the decode, it skips one chunk)."""
        try:
            return self._work(batch, steps, cheaper)
        except Exception as exc:
            if not _out_of_memory(exc) or len(batch) == 1:
                raise
            half = len(batch) // 2
            self.max_batch = max(1, min(self.max_batch, half))
            self.oom_splits += 1
            log.warning(
                "engine out of memory at batch %d: splitting it, batches now capped at %d", len(batch), self.max_batch
            )
            _release_device_memory()
            return self._work_fitting(batch[:half], steps, cheaper) + self._work_fitting(batch[half:], steps, cheaper)

    def _work(self, batch: list[ChunkJob], steps: int | None = None, cheaper: bool = False) -> list[ChunkResult]:
        """Engine thread: one sampler call for the whole batch, then one decode call.

        `steps` (the degradation ladder) overrides the sampler steps of this call only; `cheaper`
        decodes the engine's cheaper way (capabilities.cheaper_decode).
        """
        t0 = self.clock()
        states = self._prepare(batch)
        lat = self.engine.sample_chunks(states, steps=steps)
        t1 = self.clock()
        B = lat.shape[0]
        # cheaper only comes from a ladder built for this engine (capabilities.cheaper_decode)
        per = list(self.engine.decode_chunks(states, lat, cheaper=cheaper))
        t2 = self.clock()
        self._account(B, t2 - t0)
        return [ChunkResult(per[i], states[i], t0, t1, t2, B, cheaper) for i in range(B)]


def in_window(end: float, dur: float, lo: float) -> float:
    """The seconds of a batch that ran `dur` seconds up to `end` which fall after `lo` (a window's start)."""
    return max(0.0, min(dur, end - lo))


def priced_in_window(end: float, dur: float, lo: float, cheaper: bool, full_scale: float) -> float:
    """in_window's seconds, priced as busy_fraction's `full_scale` says: a batch decoded the full way counts
    `full_scale` of them, one decoded the cheaper way all of them."""
    return in_window(end, dur, lo) * (1.0 if cheaper else full_scale)


def _out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (or torch.OutOfMemoryError), or MemoryError; without importing torch,
    which the CPU serving path never loads."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def _release_device_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
