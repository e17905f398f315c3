"""The scheduler's batching decision (realtime/batching.py) with plain calls: no engine, no event loop."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from avatarcast.realtime.batching import MIN_WAIT_S, Batch, BatchEstimates, Wait, next_batch


@dataclass(frozen=True)
class Job:
    name: str
    due_t: float
    queued_at: float = 0.0


EST = BatchEstimates(max_batch=3, batch_s=0.1, max_wait_s=0.25, margin_s=0.05)


def test_an_empty_queue_waits_for_a_job() -> None:
    assert next_batch([], 0.0, EST) == Wait(math.inf)


def test_a_job_with_room_waits_for_company_until_its_wait_is_over() -> None:
    job = Job("a", due_t=5.0, queued_at=0.0)
    assert next_batch([job], 0.0, EST) == Wait(0.25)  # max_wait_s after it was queued
    assert next_batch([job], 0.1, EST) == Wait(0.25 - 0.1)
    assert next_batch([job], 0.25, EST) == Batch((job,), ())


def test_a_near_deadline_cuts_the_wait_short() -> None:
    job = Job("a", due_t=0.3, queued_at=0.0)
    # due 0.3 minus two batches (0.2) minus the margin (0.05): 0.05 s left to wait
    decision = next_batch([job], 0.0, EST)
    assert isinstance(decision, Wait) and math.isclose(decision.seconds, 0.05)
    assert next_batch([job], 0.05 - MIN_WAIT_S / 2, EST) == Batch((job,), ())  # under 5 ms: not worth it
    assert next_batch([Job("late", due_t=-1.0)], 0.0, EST) == Batch((Job("late", due_t=-1.0),), ())


def test_a_full_batch_runs_at_once_earliest_deadline_first() -> None:
    jobs = [Job("c", 9.0), Job("a", 5.0), Job("d", 9.5), Job("b", 6.0)]
    decision = next_batch(jobs, 0.0, EST)
    assert isinstance(decision, Batch)
    assert [j.name for j in decision.jobs] == ["a", "b", "c"] and [j.name for j in decision.rest] == ["d"]


def test_equal_deadlines_keep_their_queue_order() -> None:
    jobs = [Job(str(i), 1.0) for i in range(5)]
    decision = next_batch(jobs, 0.0, EST)
    assert isinstance(decision, Batch) and [j.name for j in decision.jobs + decision.rest] == list("01234")


jobs_st = st.lists(st.builds(Job, st.text(max_size=3), st.floats(-5, 5), st.floats(-5, 0)), max_size=12)
estimates_st = st.builds(BatchEstimates, st.integers(1, 6), st.floats(0, 1), st.floats(0, 1), st.floats(0, 0.2))


@given(jobs_st, st.floats(-1, 1), estimates_st)
def test_a_batch_is_the_earliest_deadlines_and_nothing_is_lost(
    jobs: list[Job], now: float, est: BatchEstimates
) -> None:
    decision = next_batch(jobs, now, est)
    if isinstance(decision, Wait):
        # waiting only with room in the batch, and never for less than the 5 ms floor
        assert not jobs or (len(jobs) < est.max_batch and decision.seconds > MIN_WAIT_S)
        return
    assert 1 <= len(decision.jobs) <= est.max_batch
    ordered = decision.jobs + decision.rest
    assert sorted(map(id, ordered)) == sorted(map(id, jobs))  # a permutation: no job lost or doubled
    assert all(a.due_t <= b.due_t for a, b in zip(ordered, ordered[1:]))  # earliest deadline first
    if decision.rest:
        assert len(decision.jobs) == est.max_batch  # jobs stay queued only behind a full batch


@given(jobs_st, st.floats(-1, 1), estimates_st)
def test_a_wait_never_runs_past_the_first_deadline_or_the_longest_wait(
    jobs: list[Job], now: float, est: BatchEstimates
) -> None:
    decision = next_batch(jobs, now, est)
    if isinstance(decision, Wait) and jobs:
        first = min(j.due_t for j in jobs)
        assert now + decision.seconds <= first - 2 * est.batch_s - est.margin_s + 1e-9
        assert now + decision.seconds <= min(j.queued_at for j in jobs) + est.max_wait_s + 1e-9
