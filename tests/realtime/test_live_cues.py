"""LiveCues (realtime/live_cues.py): a final that reuses the pause's speculation reuses its emotion read."""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from avatarcast.realtime.audio import prosody
from avatarcast.realtime.emotion import EmotionReader
from avatarcast.realtime.live import LiveEvent
from avatarcast.realtime.live_cues import LiveCues


class Counting:
    """The real reader, counting its reads."""

    def __init__(self, reader: EmotionReader) -> None:
        self.inner, self.calls = reader, []

    def read(self, text, prosody=None, language=None):
        self.calls.append((text, prosody, language))
        return self.inner.read(text, prosody, language)


@pytest.fixture(scope="module")
def reader() -> EmotionReader:
    return EmotionReader.load()


@pytest.fixture(scope="module")
def voice():
    t = np.arange(16000 * 2) / 16000
    return prosody((0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32))


def same(a, b) -> bool:
    return dataclasses.replace(a, elapsed_ms=0.0) == dataclasses.replace(b, elapsed_ms=0.0)


def run(coro):
    async def go():
        return await coro()

    return asyncio.run(go())


def test_a_reused_final_takes_the_speculations_read(reader, voice) -> None:
    r = Counting(reader)
    text = "I am so happy right now!"

    async def go():
        cues = LiveCues(r, ThreadPoolExecutor(1))
        cues.prefetch(LiveEvent("partial", 0, 0.0, text, "en", speculative=True, prosody=voice))
        cue = await cues.final(LiveEvent("final", 0, 0.1, text, "en", reused=True, prosody=voice))
        return cues, cue

    cues, cue = run(go)
    assert len(r.calls) == 1 and r.calls[0] == (text, voice, "en") and cues.reused == 1
    assert same(cue, reader.read(text, voice, "en"))


@pytest.mark.parametrize(
    "final",
    [
        LiveEvent("final", 0, 0.1, "I am so happy right now! Not.", "en", reused=False),  # speech went on
        LiveEvent("final", 0, 0.1, "I am so happy right now!", "en", reused=True),  # a later pass without prosody
        LiveEvent("final", 1, 0.1, "I am so happy right now!", "en", reused=True),  # another utterance
    ],
)
def test_a_final_that_is_not_the_speculation_reads_anew(reader, voice, final) -> None:
    r = Counting(reader)

    async def go():
        cues = LiveCues(r, ThreadPoolExecutor(1))
        cues.prefetch(LiveEvent("partial", 0, 0.0, "I am so happy right now!", "en", speculative=True, prosody=voice))
        return cues, await cues.final(final)

    cues, cue = run(go)
    assert cues.reused == 0 and len(r.calls) == 2 and r.calls[1] == (final.text, final.prosody, final.language)
    assert same(cue, reader.read(final.text, final.prosody, final.language))


def test_only_the_newest_speculation_of_an_utterance_counts_and_few_are_kept(reader, voice) -> None:
    r = Counting(reader)

    async def go():
        cues = LiveCues(r, ThreadPoolExecutor(1), keep=2)
        other = prosody(np.zeros(16000, np.float32))
        cues.prefetch(LiveEvent("partial", 0, 0.0, "Nobody came", "en", speculative=True, prosody=other))
        cues.prefetch(LiveEvent("partial", 0, 0.0, "Nobody came to my party", "en", speculative=True, prosody=voice))
        for u in (1, 2):
            cues.prefetch(LiveEvent("partial", u, 0.0, "hello", "en", speculative=True, prosody=voice))
        assert sorted(cues._reads) == [1, 2]
        await cues.final(LiveEvent("final", 0, 0.1, "Nobody came to my party", "en", reused=True, prosody=voice))
        return cues

    cues = run(go)
    assert cues.reused == 0 and len(r.calls) == 5  # utterance 0's read was dropped (keep=2): read anew
