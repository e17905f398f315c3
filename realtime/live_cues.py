"""The emotion reads of one live session: the final that reuses the pause's speculation reuses its read too.

At a pause, LiveAudio transcribes what was said so far (with its prosody); if no more speech
comes, the final is that same transcript. Reading its emotion as soon as the speculation is in,
instead of when the final is emitted, takes the reader (~60-110 ms) off the path to the reaction.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from avatarcast.realtime.audio import Prosody
from avatarcast.realtime.emotion import EmotionCue
from avatarcast.realtime.live import LiveEvent


class CueReader(Protocol):
    def read(self, text: str, prosody: Prosody | None = None, language: str | None = None) -> EmotionCue: ...


@dataclass(frozen=True)
class _Read:
    text: str
    language: str | None
    prosody: Prosody | None
    cue: asyncio.Future


class LiveCues:
    """Speculative reads by utterance (the newest one each); a reused final takes its own, else reads anew."""

    def __init__(self, reader: CueReader, pool: Executor | None, keep: int = 4) -> None:
        self.reader, self.pool, self.keep = reader, pool, keep
        self._reads: dict[int, _Read] = {}
        self.reused = 0  # finals whose cue came from a speculation's read (tests, stats)

    def prefetch(self, ev: LiveEvent) -> None:
        """Start reading a speculative partial's transcript (with its prosody) in full."""
        fut = asyncio.get_running_loop().run_in_executor(self.pool, self.reader.read, ev.text, ev.prosody, ev.language)
        fut.add_done_callback(_retrieve)  # an unused read that failed must not log "never retrieved"
        self._reads.pop(ev.utterance, None)
        self._reads[ev.utterance] = _Read(ev.text, ev.language, ev.prosody, fut)
        while len(self._reads) > self.keep:
            self._reads.pop(next(iter(self._reads)))

    async def final(self, ev: LiveEvent) -> EmotionCue:
        """The final's cue: the speculation's read when the final is its transcript of the same audio."""
        spec = self._reads.pop(ev.utterance, None)
        if (
            spec is not None
            and ev.reused
            and (spec.text, spec.language) == (ev.text, ev.language)
            and spec.prosody is ev.prosody
        ):
            self.reused += 1
            return await spec.cue
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, self.reader.read, ev.text, ev.prosody, ev.language
        )


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()
