"""Live audio (realtime/live.py) with the real Silero VAD and faster-whisper tiny.en on espeak-ng speech."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from avatarcast.realtime.asr_window import Preempted
from avatarcast.realtime.audio import decode_audio
from avatarcast.realtime.live import LiveAudio

ESPEAK = shutil.which("espeak-ng")
pytestmark = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")


@pytest.fixture(scope="module")
def tiny():
    from avatarcast.realtime.asr import Transcriber

    return Transcriber.load("tiny.en")


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    path = tmp_path_factory.mktemp("live") / "say.wav"
    subprocess.run([ESPEAK, "-w", str(path), "I am so happy right now!"], check=True)
    return decode_audio(path)


def feed_all(live: LiveAudio, pcm: np.ndarray, chunk: int = 640, realtime: bool = False) -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(0, len(pcm), chunk):
            await live.feed((pcm[i : i + chunk] * 32767).astype(np.int16))
            if realtime:
                await asyncio.sleep(max(0.0, t0 + (i + chunk) / 16000 - loop.time()))
        for _ in range(300):  # let the final transcription finish
            if live._tasks:
                await asyncio.sleep(0.05)
        await asyncio.gather(*live._tasks, return_exceptions=True)

    asyncio.run(go())


def test_events_in_order_with_transcripts_and_arrival_times(tiny, speech) -> None:
    events = []
    pools = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    live = LiveAudio(tiny, *pools, events.append, language="en")
    pcm = np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(16000, np.float32)])
    feed_all(live, pcm, realtime=True)
    kinds = [e.kind for e in events]
    assert kinds[0] == "speech_start" and kinds[-1] == "final", kinds
    assert kinds.index("pause") < kinds.index("speech_end") < kinds.index("final")
    final = events[-1]
    assert "happy" in final.text.lower() and final.language == "en"
    partials = [e for e in events if e.kind == "partial"]
    assert partials and any("happy" in p.text.lower() for p in partials)  # heard before the endpoint
    start = next(e for e in events if e.kind == "speech_start")
    end = next(e for e in events if e.kind == "speech_end")
    pause = next(e for e in events if e.kind == "pause")
    # arrival times: speech lasted about as long as the espeak clip, and the pause began at its end
    idx = np.nonzero(np.abs(speech) > 0.02)[0]
    spoken = (idx[-1] - idx[0]) / 16000
    assert abs((end.t - start.t) - spoken) < 0.35, (end.t - start.t, spoken)
    assert abs(pause.t - end.t) < 0.07
    assert len(live.vad.speech_probs) <= 64  # bounded however long the stream runs


def test_flush_closes_an_open_utterance(tiny, speech) -> None:
    events = []
    live = LiveAudio(tiny, ThreadPoolExecutor(1), ThreadPoolExecutor(1), events.append, language="en")

    async def go() -> None:
        await live.feed((np.concatenate([np.zeros(4000, np.float32), speech]) * 32767).astype(np.int16))
        await live.flush()  # push-to-talk released with no trailing silence
        await asyncio.gather(*live._tasks, return_exceptions=True)

    asyncio.run(go())
    kinds = [e.kind for e in events]
    assert "speech_end" in kinds and kinds[-1] == "final" and "happy" in events[-1].text.lower()


def test_silence_and_noise_make_no_utterance(tiny) -> None:
    events = []
    live = LiveAudio(tiny, ThreadPoolExecutor(1), ThreadPoolExecutor(1), events.append)
    rng = np.random.default_rng(0)
    feed_all(live, np.concatenate([np.zeros(16000, np.float32), 0.003 * rng.standard_normal(16000).astype(np.float32)]))
    assert events == []


def test_the_pause_speculation_carries_prosody_and_the_final_reuses_it(tiny, speech) -> None:
    events = []
    pool = ThreadPoolExecutor(1)
    live = LiveAudio(tiny, pool, ThreadPoolExecutor(1), events.append, language="en", prosody_pool=pool)
    feed_all(live, np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(16000, np.float32)]), realtime=True)
    spec = [e for e in events if e.kind == "partial" and e.speculative]
    final = events[-1]
    assert spec and spec[-1].prosody is not None and spec[-1].prosody.voiced_fraction > 0.05
    assert final.kind == "final" and final.reused and final.prosody is spec[-1].prosody and final.text == spec[-1].text
    # the speculation starts at the pause, not at the endpoint: it is in before the final
    assert events.index(spec[-1]) < len(events) - 1


@pytest.fixture(scope="module")
def comma(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    """One sentence in two parts, each without espeak-ng's own leading and trailing silence."""
    parts = []
    for i, text in enumerate(("I am so happy", "because everything went well today")):
        path = tmp_path_factory.mktemp("comma") / f"{i}.wav"
        subprocess.run([ESPEAK, "-w", str(path), text], check=True)
        pcm = decode_audio(path)
        voiced = np.nonzero(np.abs(pcm) > 0.02)[0]
        parts.append(pcm[voiced[0] : voiced[-1] + 1])
    return parts[0], parts[1]


def test_a_speculation_the_speaker_talked_over_gives_way(tiny, comma) -> None:
    """The model is busy (another session) while a sentence with a comma arrives. The speculation of the comma's
    pause is outdated once the speaker goes on: when its turn comes it gives way to the end's speculation, which
    the final reuses. Before, it ran in full (an urgent run never yielded) and delayed the final by its run."""
    runs: list[tuple[bool, float, str]] = []

    class Recording:
        """The real model; each run's urgency, audio length and outcome."""

        def transcribe(self, pcm: np.ndarray, **kwargs):
            try:
                tr = tiny.transcribe(pcm, **kwargs)
            except Preempted:
                runs.append((kwargs["urgent"], pcm.size / 16000, "gave way"))
                raise
            runs.append((kwargs["urgent"], pcm.size / 16000, tr.text))
            return tr

    events = []
    asr_pool, busy = ThreadPoolExecutor(1), threading.Event()
    asr_pool.submit(busy.wait, 30)
    live = LiveAudio(Recording(), ThreadPoolExecutor(1), asr_pool, events.append, language="en")
    z = lambda s: np.zeros(int(s * 16000), np.float32)  # noqa: E731
    pcm = np.concatenate([z(0.5), comma[0], z(0.25), comma[1], z(1.0)])  # 0.25 s: a pause, not an endpoint

    async def go() -> None:
        for i in range(0, len(pcm), 640):
            await live.feed((pcm[i : i + 640] * 32767).astype(np.int16))
        busy.set()
        while live._tasks:
            await asyncio.gather(*live._tasks, return_exceptions=True)

    asyncio.run(go())
    assert [e.kind for e in events].count("pause") == 2  # at the comma and at the end
    urgent = [r for r in runs if r[0]]
    assert len(urgent) == 2 and urgent[0][2] == "gave way", runs  # the comma's, then the end's
    assert "everything" in urgent[1][2].lower()  # it heard the whole sentence
    partials = [e for e in events if e.kind == "partial"]
    assert partials and all(p.speculative for p in partials), partials  # nothing outdated was transcribed
    final = events[-1]
    assert (
        final.kind == "final" and final.reused and "happy" in final.text.lower() and "everything" in final.text.lower()
    )
