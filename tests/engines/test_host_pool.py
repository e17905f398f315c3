"""The host pool (engines/tiny/host_pool.py): a chunk's per-avatar host work in worker processes gives the plans and
placements made in-process to the bit, a worker that fails or dies is an error the engine recovers from, and an
avatar's state leaves its worker with the avatar. Real worker processes, real avatars (torch on the CPU)."""

from __future__ import annotations

import gc
import logging
import operator
import threading
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from avatarcast.engines.tiny.host_pool import HostPool, HostPoolError, Job, default_workers  # noqa: E402
from avatarcast.engines.tiny.motion_compose import DeviceCompose  # noqa: E402
from avatarcast.engines.tiny.motion_engine import MotionEngine  # noqa: E402

SPECS = [("pip", "happy", 1), ("random-424242", "sad", 2), ("pip", "love", 3), ("luna", "surprised", 4)]


def _batched_engine() -> MotionEngine:
    """The torch cut-out engine composing on its device with the streams batched (CUDA's path), on the CPU."""
    eng = MotionEngine.from_folder(None, draw="cutout", backend="torch", device="cpu")
    eng.backend.batch_streams, eng.backend.compose_device = True, "cpu"  # type: ignore[attr-defined]
    eng._device_compose = DeviceCompose(eng.window, "cpu")
    return eng


@pytest.fixture(scope="module")
def engine() -> MotionEngine:
    torch.set_num_threads(1)
    return _batched_engine()


def _chunk(eng: MotionEngine, lat: np.ndarray) -> np.ndarray:
    return eng.decode_chunks([eng.start_stream(a, e, seed=s) for a, e, s in SPECS], lat)


def test_workers_give_the_frames_made_in_process_and_recover_from_a_dead_one(engine, caplog):
    lat = engine.sample_chunks([engine.start_stream(a, e, seed=s) for a, e, s in SPECS])
    assert engine.host_workers == 0  # composing on the CPU: no pool by default
    want = _chunk(engine, lat)
    engine.use_host_workers(2)
    try:
        got = _chunk(engine, lat)
        assert np.array_equal(got, want)  # the same plans and placements, to the bit
        pool = engine._host_pool
        assert pool is not None and pool.workers == 2
        pool._procs[0].kill()  # a worker dies: the next call plans here, logs why, and gives the same frames
        pool._procs[0].wait()
        with caplog.at_level(logging.WARNING, logger="avatarcast.engines.tiny.motion_engine"):
            again = _chunk(engine, lat)
        assert np.array_equal(again, want)
        assert engine.host_workers == 0 and engine._host_pool is None
        assert "host pool failed" in caplog.text and "gone" in caplog.text
    finally:
        engine.use_host_workers(0)


class _Owner(list):
    """A weakly referable owner; a worker keeps it as a tuple (its jobs: operator.getitem, which workers import)."""


def test_a_job_that_raises_is_an_error_with_the_workers_traceback():
    pool = HostPool(1)
    try:
        owner = _Owner([10, 11])
        assert pool.submit([Job(operator.getitem, owner, tuple, (1,))])() == [11]
        with pytest.raises(HostPoolError, match="IndexError: tuple index out of range"):
            pool.submit([Job(operator.getitem, owner, tuple, (7,))])()
        with pytest.raises(HostPoolError):  # a failed pool stays failed (the engine stops using it)
            pool.submit([Job(operator.getitem, owner, tuple, (0,))])
    finally:
        pool.close()


def test_results_come_back_in_the_jobs_order_and_owners_leave_their_worker():
    pool = HostPool(2)
    try:
        owners = [_Owner([k, 10 * k]) for k in range(5)]
        first = pool.submit([Job(operator.getitem, o, tuple, (0,)) for o in owners])
        second = pool.submit([Job(operator.getitem, o, tuple, (1,)) for o in reversed(owners)])
        assert second() == [40, 30, 20, 10, 0]  # collected out of order: the first's are kept meanwhile
        assert first() == [0, 1, 2, 3, 4]
        assert sorted(pool._home.values()) == [0, 0, 0, 1, 1]  # spread over the workers
        del owners[0]
        gc.collect()
        assert len(pool._home) == 4 and sum(map(len, pool._drops)) == 1  # told to its worker with the next jobs
        assert pool.submit([Job(operator.getitem, o, tuple, (0,)) for o in owners])() == [1, 2, 3, 4]
        assert sum(map(len, pool._drops)) == 0
    finally:
        pool.close()
    # the owners still alive keep neither the pool nor its workers
    procs, ref = list(pool._procs), weakref.ref(pool)
    del pool, first, second  # (the waits hold it)
    gc.collect()
    assert ref() is None and [p.wait(10) for p in procs] == [0, 0]


def test_messages_and_results_larger_than_a_socket_buffer_do_not_wait_on_each_other():
    """Two submits to one worker before the first is collected, each with a new owner's state of 4 MB and a result of
    4 MB (an avatar's state is ~21 MB, a chunk's placements for many streams of one avatar ~0.4 MB): the second
    send must not wait on a worker that waits for us to read the first result."""
    pool = HostPool(1)
    got: list = []
    try:
        big = [_Owner([bytes([k]) * 4_000_000]) for k in range(2)]
        t = threading.Thread(
            target=lambda: got.extend(
                f()[0][:1] for f in [pool.submit([Job(operator.getitem, o, tuple, (0,))]) for o in big]
            ),
            daemon=True,
        )
        t.start()
        t.join(60)
        if t.is_alive():  # both waiting: free the thread by ending the worker
            pool._procs[0].kill()
        assert not t.is_alive() and got == [b"\x00", b"\x01"]
    finally:
        pool.close()


def test_workers_by_default_leave_cores_to_the_server():
    assert [default_workers(n) for n in (2, 4, 5, 6, 8, 12, 16, 64)] == [0, 0, 0, 2, 4, 8, 8, 8]


def test_composing_on_cuda_the_engine_batches_pipelines_and_plans_in_workers(monkeypatch):
    """What the motion engine declares where it composes on a CUDA device (made here without one: nothing is
    allocated until a call): two calls in flight, the scheduler's batch DEVICE_MAX_BATCH, host workers by the
    machine's cores; composing on the CPU, none of it."""
    from avatarcast.engines.tiny import host_pool, motion_engine

    eng = MotionEngine.from_folder(None, draw="cutout", backend="torch", device="cpu")
    caps = eng.capabilities
    assert (caps.pipeline_depth, caps.max_batch, eng.host_workers) == (1, 8, 0)
    eng._device_compose = DeviceCompose(eng.window, "cuda")
    eng._host_workers = None
    monkeypatch.setattr(host_pool, "available_cores", lambda: 16)
    caps = eng.capabilities
    assert (caps.pipeline_depth, caps.max_batch) == (2, motion_engine.DEVICE_MAX_BATCH)
    assert eng.host_workers == 8
    eng.use_host_workers(0)
    assert eng.host_workers == 0
    with pytest.raises(ValueError):
        eng.use_host_workers(-1)
