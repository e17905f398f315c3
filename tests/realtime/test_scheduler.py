"""The engine scheduler with the real shipped tiny engine (onnxruntime): batching, deadlines, faults."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from avatarcast.engines.contract import StreamStart
from avatarcast.realtime.scheduler import ChunkJob, ChunkResult, EngineScheduler


@pytest.fixture(scope="module")
def engine():
    from avatarcast.engines.tiny.engine import TinyEngine

    return TinyEngine.load(steps=2)


def run(coro):
    return asyncio.run(coro)


def test_jobs_with_room_wait_for_each_other_and_share_one_batch(engine) -> None:
    async def go():
        sch = EngineScheduler(engine, max_wait_s=0.3)
        await sch.start()
        try:
            due = time.monotonic() + 5.0
            a = engine.start_stream("pip", "happy", 0.8, seed=1)
            b = engine.start_stream("bun", "sad", 0.8, seed=2)
            ra = asyncio.create_task(sch.submit(ChunkJob("a", a, due, "happy", 0.8)))
            await asyncio.sleep(0.05)  # the second session asks a little later
            rb = asyncio.create_task(sch.submit(ChunkJob("b", b, due, "sad", 0.8)))
            return await ra, await rb, sch.batches
        finally:
            await sch.close()

    ra, rb, batches = run(go())
    assert batches == 1 and ra.batch == rb.batch == 2
    for r in (ra, rb):
        assert r.frames.shape == (4, 360, 640, 4) and r.frames.dtype == np.uint8
        assert r.state.frames_done == 4
    assert not np.array_equal(ra.frames, rb.frames)


class _SlowScheduler(EngineScheduler):
    """The scheduler around an engine whose every batch takes `batch_s` (no engine: the batching rule only)."""

    batch_s = 0.2

    def _work(self, batch, steps=None, cheaper=False):
        t0 = self.clock()
        time.sleep(self.batch_s)
        t1 = self.clock()
        self._account(len(batch), t1 - t0)
        return [ChunkResult(np.zeros(1), j.state, t0, t1, t1, len(batch)) for j in batch]


def test_a_stream_answered_joins_the_job_that_waited_through_its_batch() -> None:
    """Two streams in one phase: B's chunk runs alone while A's, due with B's next, waits; when B's batch ends
    A's job has no room left to wait, and B's next chunk is submitted as soon as B has its frames. They run as
    one batch (before, A's ran alone and B's came after it, late)."""
    from types import SimpleNamespace

    from avatarcast.engines.contract import EngineCapabilities

    async def go():
        sch = _SlowScheduler(SimpleNamespace(capabilities=EngineCapabilities(frames_per_chunk=4)))
        await sch.start()
        try:
            t0 = time.monotonic()

            async def stream_b():
                await sch.submit(ChunkJob("b", "b1", t0 + 0.01, "happy", 0.8))  # due now: runs at once, alone
                return await sch.submit(ChunkJob("b", "b2", t0 + 0.5, "happy", 0.8))

            b = asyncio.create_task(stream_b())
            await asyncio.sleep(0.02)
            a = await sch.submit(ChunkJob("a", "a1", t0 + 0.5, "sad", 0.8))
            return a, await b, sch.batches
        finally:
            await sch.close()

    a, b2, batches = run(go())
    assert (a.batch, b2.batch, batches) == (2, 2, 2)
    assert b2.finished < b2.started + 0.3  # one batch's time after it started: on time


def test_each_sessions_share_of_the_engine_adds_up_to_busy(engine) -> None:
    """A batch's engine seconds are split over its streams: session a alone, then a and b in one batch. a's share
    is the first batch and half the second, b's the other half, and the shares add up to busy_fraction, also for
    windows that begin inside a batch."""

    async def go():
        sch = EngineScheduler(engine, max_wait_s=0.3)
        await sch.start()
        try:
            a = engine.start_stream("pip", "happy", 0.8, seed=1)
            b = engine.start_stream("bun", "sad", 0.8, seed=2)
            alone = await sch.submit(ChunkJob("a", a, time.monotonic(), "happy", 0.8))  # due now: runs at once
            due = time.monotonic() + 5.0
            pair = await asyncio.gather(
                sch.submit(ChunkJob("a", alone.state, due, "happy", 0.8)),
                sch.submit(ChunkJob("b", b, due, "sad", 0.8)),
            )
            return sch, alone, pair
        finally:
            await sch.close()

    sch, alone, (a2, b2) = run(go())
    assert (alone.batch, a2.batch, b2.batch) == (1, 2, 2)
    one, two = alone.finished - alone.started, a2.finished - a2.started
    end = a2.finished
    sch.clock = lambda: end  # the figures as of the last batch's end, read with plain calls
    window = 60.0
    shares = sch.busy_by_session(window)
    assert shares == pytest.approx({"a": (one + two / 2) / window, "b": two / 2 / window})
    assert sum(shares.values()) == pytest.approx(sch.busy_fraction(window))
    gap = a2.started - alone.finished  # between the two batches
    for w in (two / 2, two + gap + one / 2, 0.01):  # windows that cut a batch: each stream's part of what is in them
        shares = sch.busy_by_session(w)
        assert shares["a"] == pytest.approx(shares["b"] + max(0.0, w - two - gap) / w)
        assert sum(shares.values()) == pytest.approx(sch.busy_fraction(w))


def test_an_urgent_job_runs_at_once_and_deadlines_order_the_queue(engine) -> None:
    async def go():
        sch = EngineScheduler(engine, max_batch=1)
        await sch.start()
        try:
            now = time.monotonic()
            s = [engine.start_stream("pip", "idle", 0.5, seed=i) for i in range(3)]
            jobs = [ChunkJob(str(i), s[i], now + d, "idle", 0.5) for i, d in enumerate((0.9, 0.0, 0.5))]
            t0 = time.monotonic()
            results = await asyncio.gather(*[sch.submit(j) for j in jobs])
            return t0, results
        finally:
            await sch.close()

    t0, (late, urgent, middle) = run(go())
    assert urgent.started - t0 < 0.1  # due now: no batching wait
    assert urgent.finished <= middle.started and middle.finished <= late.started  # earliest deadline first


def test_a_failing_batch_fails_its_jobs_and_the_next_one_works(engine) -> None:
    async def go():
        sch = EngineScheduler(engine)
        await sch.start()
        try:
            bad = engine.start_stream("pip", "idle", 0.5)
            bad.ctx = bad.ctx[:3]  # wrong shape: the engine raises a real error
            with pytest.raises(Exception, match="INVALID_ARGUMENT"):  # onnxruntime's own error type
                await sch.submit(ChunkJob("bad", bad, time.monotonic(), "idle", 0.5))
            good = StreamStart("pip", "happy", 0.8, 3)  # made on the engine thread
            return await sch.submit(ChunkJob("good", good, time.monotonic(), "happy", 0.8))
        finally:
            await sch.close()

    r = run(go())
    assert r.frames.shape == (4, 360, 640, 4)


def test_background_work_yields_to_chunk_jobs(engine) -> None:
    async def go():
        sch = EngineScheduler(engine)
        await sch.start()
        try:
            order: list[str] = []

            def slow(tag: str) -> str:
                time.sleep(0.05)
                order.append(tag)
                return tag

            bg = [asyncio.create_task(sch.run_background(slow, f"bg{i}")) for i in range(3)]
            await asyncio.sleep(0.01)  # bg0 is running now
            st = engine.start_stream("pip", "idle", 0.5)
            res = await sch.submit(ChunkJob("live", st, time.monotonic(), "idle", 0.5))
            order.append("live")
            await asyncio.gather(*bg)
            return order, res
        finally:
            await sch.close()

    order, res = run(go())
    assert order.index("live") <= 2 and order[0] == "bg0"  # the live job jumped the background queue
    assert res.frames.shape[0] == 4


def test_copy_state_leaves_the_original_untouched(engine) -> None:
    st = engine.start_stream("pip", "happy", 0.8, seed=5)
    ctx = st.ctx.copy()
    c = st.copy()
    engine.sample_chunks([c])
    assert np.array_equal(st.ctx, ctx) and st.frames_done == 0 and c.frames_done == 4
    # the copied rng continues where the original was: the same noise, so the same chunk
    d = st.copy()
    np.testing.assert_array_equal(engine.sample_chunks([d]), engine.sample_chunks([st.copy()]))


def test_out_of_memory_splits_the_batch_instead_of_failing_it(engine) -> None:
    """A GPU OOM (torch.cuda.OutOfMemoryError, raised here by the engine for batches over 1) degrades:
    the batch runs in halves, later batches are capped, every stream still gets its chunk."""
    import torch

    class SmallMemoryEngine:
        def __init__(self, inner):
            self.inner, self.calls = inner, []

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def sample_chunks(self, states, **kw):
            self.calls.append(len(states))
            if len(states) > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.88 GiB")
            return self.inner.sample_chunks(states, **kw)

    small = SmallMemoryEngine(engine)

    async def go():
        sch = EngineScheduler(small, max_wait_s=0.3)
        await sch.start()
        try:
            due = time.monotonic() + 5.0
            states = [engine.start_stream("pip", "happy", 0.8, seed=i) for i in range(3)]
            results = await asyncio.gather(
                *[sch.submit(ChunkJob(str(i), s, due, "happy", 0.8)) for i, s in enumerate(states)]
            )
            return results, sch.max_batch, sch.oom_splits
        finally:
            await sch.close()

    results, max_batch, splits = run(go())
    assert [r.frames.shape for r in results] == [(4, 360, 640, 4)] * 3
    assert all(r.state.frames_done == 4 for r in results)  # each stream advanced exactly once
    assert max_batch == 1 and splits >= 1 and small.calls[0] == 3 and small.calls.count(1) == 3


def test_other_engine_errors_still_fail_the_batch(engine) -> None:
    class Broken:
        def __getattr__(self, name):
            return getattr(engine, name)

        def sample_chunks(self, states, **kw):
            raise RuntimeError("engine exploded")

    async def go():
        sch = EngineScheduler(Broken(), max_wait_s=0.0)
        await sch.start()
        try:
            st = engine.start_stream("pip", "happy", 0.8, seed=0)
            with pytest.raises(RuntimeError, match="exploded"):
                await sch.submit(ChunkJob("x", st, time.monotonic(), "happy", 0.8))
            return sch.oom_splits
        finally:
            await sch.close()

    assert run(go()) == 0


@pytest.fixture(scope="module")
def motion_engines():
    """The shipped motion engines: the residual draw (with the copy draw as its cheaper decode) and the copy draw."""
    from avatarcast.engines.tiny.motion_engine import MotionEngine

    return MotionEngine.from_folder(None, threads=2, draw="residual"), MotionEngine.from_folder(None, threads=2)


def test_the_ladder_for_each_engine_offers_the_rungs_it_declares(engine, motion_engines) -> None:
    """tiny: fewer sampler steps, then its half-resolution decode; motion declares fewer steps no cheaper (its sampler
    is a sliver of a chunk), so its ladder has no steps rung: the residual draw goes to the copy draw, the copy draw
    to cached loops."""
    from avatarcast.realtime.ladder import ladder_for
    from avatarcast.realtime.settings import Settings

    tiny = ladder_for(engine, Settings(engine="tiny"))
    assert engine.capabilities.fewer_steps_cheaper
    assert tiny.levels == [0, 1, 2, 3] and tiny.cheaper == "half_resolution" and tiny.reduce_steps
    res, copy = (ladder_for(e, Settings(engine="motion")) for e in motion_engines)
    assert not any(e.capabilities.fewer_steps_cheaper for e in motion_engines)
    assert res.levels == [0, 2, 3] and res.cheaper == "copy_draw"
    assert copy.levels == [0, 3] and copy.cheaper is None


def test_late_batches_take_the_residual_engine_straight_to_the_copy_draw_and_back(motion_engines) -> None:
    """Two late batches take the residual engine's ladder from full quality straight to the copy draw (no 2 s and
    two more late batches at 1 sampler step first), whose batches sample with the configured steps; a quiet engine
    steps straight back to full quality."""
    from avatarcast.realtime.ladder import ladder_for
    from avatarcast.realtime.settings import Settings

    res, copy = motion_engines

    async def go() -> tuple[list, ChunkResult]:
        sch = EngineScheduler(res, max_wait_s=0.0)
        lad = sch.ladder = ladder_for(res, Settings(engine="motion"))
        changes: list = []
        lad.dwell_s, lad.on_change = 0.0, lambda a, b, why: changes.append((a, b))
        await sch.start()
        try:
            state = res.start_stream("pip", "excited", 0.9, seed=11)
            for _ in range(2):  # due a second ago: each batch is late
                state = (await sch.submit(ChunkJob("a", state, time.monotonic() - 1.0, "excited", 0.9))).state
            after = await sch.submit(ChunkJob("a", state, time.monotonic() + 5.0, "excited", 0.9))
            lad.up_after_s = 0.0
            lad.tick(busy=0.0)
            return changes, after
        finally:
            await sch.close()

    changes, after = run(go())
    assert changes == [(0, 2), (2, 0)]
    assert after.cheaper
    want = copy.start_stream("pip", "excited", 0.9, seed=11)
    for _ in range(3):  # the copy engine at full quality, 2 sampler steps a chunk
        lat = copy.sample_chunks([want])
    np.testing.assert_array_equal(after.state.ctx, want.ctx)  # the copy draw's chunk sampled as at full quality
    assert np.abs(after.frames.astype(np.int16) - copy.decode_chunks([want], lat)[0]).max() <= 1


def test_the_cheaper_rung_switches_the_residual_engine_to_the_copy_draw(motion_engines) -> None:
    """A batch the scheduler runs at the ladder's cheaper_decode rung is drawn by the copy engine's decoder (the same
    frames as the copy engine's at full quality: the rung samples as full quality does), and marked so; at full
    quality, by the residual decoder."""
    from avatarcast.realtime.ladder import ladder_for
    from avatarcast.realtime.settings import Settings

    res, copy = motion_engines

    async def chunk(engine, level: int) -> ChunkResult:
        sch = EngineScheduler(engine)
        sch.ladder = ladder_for(engine, Settings(engine="motion"))
        sch.ladder.level = level
        await sch.start()
        try:
            state = engine.start_stream("pip", "excited", 0.9, seed=11)
            return await sch.submit(ChunkJob("a", state, time.monotonic() + 5.0, "excited", 0.9))
        finally:
            await sch.close()

    cheaper, above, want = run(chunk(res, 2)), run(chunk(res, 0)), run(chunk(copy, 0))
    assert cheaper.cheaper and not above.cheaper and not want.cheaper
    np.testing.assert_array_equal(cheaper.state.ctx, want.state.ctx)  # the same motions
    assert np.abs(cheaper.frames.astype(np.int16) - want.frames).max() <= 1
    assert np.abs(above.frames.astype(np.int16) - want.frames).max() > 8


def test_busy_prices_full_decodes_and_the_cheaper_decodes_cost_is_measured(motion_engines) -> None:
    """busy_fraction(full_scale=...) counts the batches decoded the full way at that share of their seconds and the
    cheaper decode's as they are (admission control's pricing for `--motion-draw adaptive`); the two decodes' ratio
    comes from one chunk of the real engine decoded both ways (the copy draw has no cheaper decode to measure)."""
    from avatarcast.realtime.decode_cost import measure_decodes
    from avatarcast.realtime.ladder import ladder_for
    from avatarcast.realtime.settings import Settings

    res, copy = motion_engines
    assert measure_decodes(copy, "pip") is None
    costs = measure_decodes(res, "pip")
    assert costs is not None and costs.full_s > 0.0 and costs.ratio == min(1.0, costs.cheaper_s / costs.full_s) > 0.0

    async def go() -> tuple[list[ChunkResult], float, float, dict, dict]:
        sch = EngineScheduler(res)
        sch.ladder = ladder_for(res, Settings(engine="motion"))
        await sch.start()
        try:
            got = []
            for sid, level in (("a", 0), ("b", 2)):
                sch.ladder.level = level
                state = res.start_stream("pip", "excited", 0.9, seed=11)
                got.append(await sch.submit(ChunkJob(sid, state, time.monotonic() + 5.0, "excited", 0.9)))
            full, half = sch.busy_fraction(60.0), sch.busy_fraction(60.0, full_scale=0.5)
            return got, full, half, sch.busy_by_session(60.0), sch.busy_by_session(60.0, full_scale=0.5)
        finally:
            await sch.close()

    (a, b), full, half, shares, priced = run(go())
    assert not a.cheaper and b.cheaper
    da, db = a.finished - a.started, b.finished - b.started
    assert full * 60 == pytest.approx(da + db, rel=1e-6) and half * 60 == pytest.approx(0.5 * da + db, rel=1e-6)
    assert priced["a"] == pytest.approx(shares["a"] / 2) and priced["b"] == pytest.approx(shares["b"])


def test_pipeline_depth_may_be_lowered_never_raised() -> None:
    """pipeline_depth: the engine's by default; fewer calls in flight on request (the benchmarks' one-at-a-time
    baseline through the scheduler, `bench engine --scheduler --opt pipeline=1`); more than the engine declares is
    refused, since its launch/collect contract only holds that many."""
    from types import SimpleNamespace

    from avatarcast.engines.contract import EngineCapabilities

    eng = SimpleNamespace(capabilities=EngineCapabilities(frames_per_chunk=4, pipeline_depth=2))
    assert EngineScheduler(eng).depth == 2 and EngineScheduler(eng).collector is not None
    one = EngineScheduler(eng, pipeline_depth=1)
    assert one.depth == 1 and one.collector is None
    for bad in (0, 3):
        with pytest.raises(ValueError, match="pipeline_depth"):
            EngineScheduler(eng, pipeline_depth=bad)


def test_scheduled_bench_times_after_a_slow_warm_up() -> None:
    """realtime/bench/scheduled.sessions_through opens its timed window when every session has had its first chunks,
    however long they took (on a GPU, compiles and host workers starting take tens of seconds with 200 sessions; a
    window fixed from the start timed nothing there, 2026-12-07): here the first batch takes 1 s, longer than the
    window and the warm chunks' time together, and the window still counts the chunks after it and nothing before."""
    from types import SimpleNamespace

    from avatarcast.engines.contract import EngineCapabilities
    from avatarcast.realtime.bench.scheduled import WARM_CHUNKS, sessions_through

    class State:
        def copy(self):
            return self

    class FirstSlow(_SlowScheduler):
        def _work(self, batch, steps=None, cheaper=False):
            self.batch_s = 1.0 if self.batches == 0 else 0.01
            return super()._work(batch, steps, cheaper)

    engine = SimpleNamespace(
        capabilities=EngineCapabilities(frames_per_chunk=1),
        emotions=("idle", "happy", "sad", "angry", "love"),
        start_stream=lambda *a: State(),
    )

    async def go():
        sch = FirstSlow(engine)
        await sch.start()
        try:
            return await sessions_through(sch, engine, [("a", "happy"), ("b", "sad")], 0.3)
        finally:
            await sch.close()

    r = run(go())
    assert r["sessions"] == 2 and r["chunks"] >= 2 and r["fps"] > 0
    assert r["chunk_interval_ms_p95"] < 500  # the 1 s batch was a warm chunk: not in the window
    assert r["batches"] >= 1 and 1.0 <= r["mean_batch"] <= 2.0 and WARM_CHUNKS == 4
