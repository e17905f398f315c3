"""Which queued chunk jobs form the next engine call, and when: a pure decision, no clock, no asyncio.

The rule (realtime/scheduler.py drives it): jobs go earliest deadline first, at most `max_batch` per
call. A batch short of `max_batch` may wait for other sessions' jobs to join it, but never past its
first job's deadline minus twice the recent batch time and a margin, and never longer than
`max_wait_s` after the oldest job was queued; waits under 5 ms are not worth a wake-up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

MIN_WAIT_S = 0.005  # a shorter wait costs more in wake-ups than it could gain in batching


class Queued(Protocol):
    @property
    def due_t(self) -> float: ...  # deadline of the job's first frame

    @property
    def queued_at(self) -> float: ...


J = TypeVar("J", bound=Queued)


@dataclass(frozen=True)
class BatchEstimates:
    """What the decision knows about the engine: its batch limit and how long a batch takes."""

    max_batch: int
    batch_s: float  # running estimate of one batch's engine time
    max_wait_s: float  # longest a job waits for company
    margin_s: float  # kept free before a deadline


@dataclass(frozen=True)
class Batch(Generic[J]):
    """Run `jobs` now (earliest deadline first); `rest` stays queued, in deadline order."""

    jobs: tuple[J, ...]
    rest: tuple[J, ...]


@dataclass(frozen=True)
class Wait:
    """Nothing to run yet: look again after `seconds` or when a job arrives (inf: the queue is empty)."""

    seconds: float


def next_batch(queue: Sequence[J], now: float, estimates: BatchEstimates) -> Batch[J] | Wait:
    """The next engine call for this queue at `now`, or how long to wait for more jobs."""
    if not queue:
        return Wait(math.inf)
    e = estimates
    ordered = sorted(queue, key=lambda j: j.due_t)  # stable: equal deadlines keep their queue order
    oldest = min(j.queued_at for j in ordered)
    wait = min(ordered[0].due_t - now - 2 * e.batch_s - e.margin_s, oldest + e.max_wait_s - now)
    if len(ordered) < e.max_batch and wait > MIN_WAIT_S:
        return Wait(wait)
    return Batch(tuple(ordered[: e.max_batch]), tuple(ordered[e.max_batch :]))
