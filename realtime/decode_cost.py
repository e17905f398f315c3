"""What the engine's cheaper decode (the degradation ladder's rung 2) costs next to its full decode, measured.

The ladder steps back up from the cheaper decode only when the engine would not be late at the full one, and
`--motion-draw adaptive` prices the load at the cheaper decode for admission control; both need the ratio of the two
costs a chunk, which depends on the machine (the residual draw's generator is 1.7x the copy draw on 2 cores, another
figure on a GPU). One stream's chunk, sampled once and decoded both ways, alternated, on the engine thread at start-up.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from avatarcast.engines.contract import StreamEngine

log = logging.getLogger("avatarcast.decode_cost")


@dataclass(frozen=True)
class DecodeCosts:
    full_s: float  # one stream-chunk sampled and decoded the full way, seconds
    cheaper_s: float  # the same, decoded the cheaper way

    @property
    def ratio(self) -> float:
        """cheaper_s / full_s, at most 1: a cheaper decode measured dearer is noise (other work on the cores during
        the measurement; one CI failure's figures fit a ratio of about 1.6), and pricing the load by it would count
        more than the full decode's."""
        return min(1.0, self.cheaper_s / self.full_s)


def measure_decodes(engine: StreamEngine, avatar: Any, rounds: int = 3) -> DecodeCosts | None:
    """One stream-chunk (sampled, then decoded) both ways; None where the engine has no cheaper decode. Each way's
    fastest of `rounds`: the first call of a graph, or of a graph at a new box size, pays its allocations (the
    start-up calibration chunk of the residual draw measured 0.44 s a stream-chunk, the live batches after it 0.23)."""
    if engine.capabilities.cheaper_decode is None:
        return None
    state = engine.start_stream(avatar, "happy", 0.8, 0)
    t0 = time.perf_counter()
    latents = engine.sample_chunks([state])
    sample_s = time.perf_counter() - t0
    best = {False: float("inf"), True: float("inf")}
    for _ in range(rounds):
        for cheaper in (False, True):
            t0 = time.perf_counter()
            engine.decode_chunks([state], latents, cheaper=cheaper)
            best[cheaper] = min(best[cheaper], time.perf_counter() - t0)
    costs = DecodeCosts(sample_s + best[False], sample_s + best[True])
    log.info(
        "a chunk decoded %s costs %.0f%% of the full decode's (%.3f s against %.3f s, sampling %.3f s)",
        engine.capabilities.cheaper_decode,
        100 * costs.ratio,
        costs.cheaper_s,
        costs.full_s,
        sample_s,
    )
    return costs
