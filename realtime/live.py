"""Live audio for one session: VAD on arrival, Whisper on the side.

The VAD (Silero, via a VAD-only StreamingTranscriber) sees every chunk as soon as it arrives,
so onsets and endpoints are never delayed behind a running transcription; Whisper runs
alongside on the audio kept here: partial transcripts while the person speaks (so a clear
emotion is known before they stop), a speculative pass as soon as they pause (with the
prosody of the same audio, computed beside it), and the final one at the endpoint, reusing
the speculation when it already heard everything. Each event carries the wall time its audio
arrived, so latency counts from when the person really stopped, not from when the VAD
could be sure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from avatarcast.realtime.asr import StreamingTranscriber
from avatarcast.realtime.asr_window import Preempted
from avatarcast.realtime.audio import Prosody, prosody

log = logging.getLogger("avatarcast.live")
SR = 16000
# A partial this long whose detected language is this sure names the utterance's language for its later runs
# (partials, the pause's speculation, the final), which then skip the detection step (~20 ms of a ~330 ms run).
# Detection on the first 0.8 s / 1.4 s of the 100 speech clips (en, zh), against the whole clip's language:
# at p >= 0.9, 1 of 88 / 0 of 97 wrong (docs/speech.md)
PIN_LANGUAGE_S = 1.2
PIN_LANGUAGE_P = 0.9


@dataclass(frozen=True)
class LiveEvent:
    kind: str  # speech_start | partial | pause | speech_end | final
    utterance: int
    t: float  # monotonic time the event's audio arrived (onset / end of speech) or the result was ready
    text: str = ""
    language: str | None = None
    audio_s: float = 0.0
    asr_ms: float = 0.0
    speculative: bool = False  # partial: the pass started at a pause (its final will likely reuse it)
    reused: bool = False  # final: the speculation's transcript (same audio, same prosody)
    dropped: bool = False  # final: not transcribed, `max_pending` runs of this stream already waited for ASR
    prosody: Prosody | None = None  # of the transcribed audio: speculative partials and finals


class LiveAudio:
    """Feed PCM in arrival order; `on_event` gets LiveEvents on the event loop."""

    def __init__(
        self,
        transcriber: Any,
        vad_pool: Any,
        asr_pool: Any,
        on_event: Callable[[LiveEvent], None],
        *,
        language: str | None = None,
        min_speech_ms: int = 64,
        endpoint_silence_ms: int = 352,
        pause_ms: int = 128,
        prosody_pool: Any = None,
        partial_every_s: float = 0.6,
        min_partial_s: float = 0.6,
        pre_roll_s: float = 0.2,
        post_roll_s: float = 0.15,
        max_utterance_s: float = 15.0,
        keep_s: float = 20.0,
        max_pending: int = 4,
        owner: Hashable | None = None,
    ) -> None:
        self.owner = owner  # whose turn a Whisper run takes in the shared model's queue (the session)
        self.transcriber = transcriber
        self.vad_pool, self.asr_pool = vad_pool, asr_pool
        self.prosody_pool = prosody_pool  # None: no prosody on the events
        self.on_event = on_event
        self.language = language
        self.vad = StreamingTranscriber(
            None,
            min_speech_ms=min_speech_ms,
            endpoint_silence_ms=endpoint_silence_ms,
            speculative_silence_ms=None,
            partial_interval_ms=None,
            pre_roll_ms=int(pre_roll_s * 1000),
            max_utterance_s=max_utterance_s,
        )
        self.pause_windows = max(1, -(-pause_ms // 32))
        self.partial_every = int(partial_every_s * SR)
        self.min_partial = int(min_partial_s * SR)
        self.pre_roll, self.post_roll = int(pre_roll_s * SR), int(post_roll_s * SR)
        self.keep = int(keep_s * SR)
        self._chunks: deque[tuple[int, np.ndarray]] = deque()  # (absolute first sample, audio)
        self._arrivals: deque[tuple[int, float]] = deque()  # (samples received after this chunk, monotonic)
        self._received = 0
        self._lock = asyncio.Lock()
        self._utt: dict | None = None  # the open utterance: index, start, partial bookkeeping
        self._asr = asyncio.Lock()  # one Whisper run at a time per stream, in the order asked
        self._tasks: set[asyncio.Task] = set()
        # Audio sent faster than real time must not queue Whisper runs without bound: at most max_pending urgent
        # ones (pause speculations and finals) and one routine partial wait or run; a final over the bound is
        # dropped (an empty final, in its turn)
        self.max_pending = max_pending
        self._runs = 0  # Whisper runs asked for and not done
        self._urgent = 0  # of those, speculations and finals
        self.closed = False

    # -- input --

    async def feed(self, pcm: np.ndarray) -> None:
        x = np.asarray(pcm).reshape(-1)
        x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32, copy=False)
        now = time.monotonic()
        async with self._lock:
            self._chunks.append((self._received, x))
            self._received += x.size
            self._arrivals.append((self._received, now))
            self._trim()
            n_before = len(self.vad.speech_probs)
            events = await asyncio.get_running_loop().run_in_executor(self.vad_pool, self.vad.feed, x)
            fresh = self.vad.speech_probs[n_before:]
            for ev in events:
                self._on_vad(ev)
            self._check_pause(fresh)
            del self.vad.speech_probs[:-64]  # the VAD keeps every probability; a live stream must not
            self._maybe_partial()

    async def flush(self) -> None:
        """The stream paused: close an open utterance now."""
        async with self._lock:
            events = await asyncio.get_running_loop().run_in_executor(self.vad_pool, self.vad.flush)
            for ev in events:
                self._on_vad(ev)

    def close(self) -> None:
        self.closed = True
        for t in self._tasks:
            t.cancel()

    # -- internals --

    def _trim(self) -> None:
        floor = self._received - self.keep
        if self._utt is not None:
            floor = min(floor, self._utt["start"])
        while self._chunks and self._chunks[0][0] + self._chunks[0][1].size <= floor:
            self._chunks.popleft()
        while len(self._arrivals) > 1 and self._arrivals[1][0] <= floor:
            self._arrivals.popleft()

    def arrival_time(self, sample: int) -> float:
        """Monotonic time the chunk holding `sample` arrived (the last one if it is beyond)."""
        for end, t in self._arrivals:
            if end > sample:
                return t
        return self._arrivals[-1][1] if self._arrivals else time.monotonic()

    def audio(self, start: int, end: int) -> np.ndarray:
        parts = []
        for first, x in self._chunks:
            a, b = max(start, first), min(end, first + x.size)
            if a < b:
                parts.append(x[a - first : b - first])
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _emit(self, ev: LiveEvent) -> None:
        if not self.closed:
            self.on_event(ev)

    def _spawn(self, coro: Any) -> asyncio.Task:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def _spawn_asr(self, coro: Any, urgent: bool) -> None:
        self._runs += 1
        self._urgent += urgent

        def done(_: asyncio.Task) -> None:
            self._runs -= 1
            self._urgent -= urgent

        self._spawn(coro).add_done_callback(done)

    def _on_vad(self, ev: Any) -> None:
        if ev.kind == "speech_start":
            onset = int(round(ev.start_s * SR))
            self._utt = {
                "index": ev.utterance,
                "onset": onset,
                "start": max(0, onset - self.pre_roll),
                "last_partial": onset,
                "best": None,
                "best_end": -1,
            }
            self._emit(LiveEvent("speech_start", ev.utterance, self.arrival_time(onset)))
        elif ev.kind == "speech_end" and self._utt is not None and self._utt["index"] == ev.utterance:
            utt, self._utt = self._utt, None
            end = int(round((ev.end_s if ev.end_s is not None else ev.at_s) * SR))
            self._emit(LiveEvent("speech_end", ev.utterance, self.arrival_time(end)))
            if self._urgent >= self.max_pending:
                utt["final_sent"] = True
                self._spawn(self._dropped_final(ev.utterance))
            else:
                self._spawn_asr(self._final(utt, end), urgent=True)

    def _check_pause(self, probs: list[float]) -> None:
        """A silence of `pause_ms` inside an utterance: the speaker has probably finished. The
        endpoint waits longer to be sure; a session that already knows the emotion can react now."""
        utt = self._utt
        if utt is None:
            return
        for p in probs:
            if p < self.vad.neg_threshold:
                utt["quiet"] = utt.get("quiet", 0) + 1
            elif p >= self.vad.threshold:
                utt["quiet"], utt["paused"] = 0, False
        q = utt.get("quiet", 0)
        if q >= self.pause_windows and not utt.get("paused"):
            utt["paused"] = True
            utt["pauses"] = pause = utt.get("pauses", 0) + 1
            start = self.vad._fed - q * 512  # where the silence began (the VAD's sample count)
            self._emit(LiveEvent("pause", utt["index"], self.arrival_time(start)))
            if self.transcriber is not None and self._urgent < self.max_pending:
                # probably the end: transcribe now, while the endpoint timer runs; the final reuses it. Queued
                # behind a partial in flight rather than skipped: else the final starts only at the endpoint
                utt["last_partial"] = self._received
                end = min(self._received, start + self.post_roll)
                self._spawn_asr(self._partial(utt, end, urgent=True, pause=pause), True)

    def _maybe_partial(self) -> None:
        utt = self._utt
        if utt is None or self._runs or self.transcriber is None or utt.get("quiet", 0):
            return  # in a trailing silence the pause's speculation is coming: a partial now would delay it
        if (
            self._received - utt["last_partial"] < self.partial_every
            or self._received - utt["onset"] < self.min_partial
        ):
            return
        utt["last_partial"] = self._received
        self._spawn_asr(self._partial(utt, self._received, urgent=False), urgent=False)

    async def _transcribe(
        self, audio: np.ndarray, utt: dict, urgent: bool = True, pause: int | None = None
    ) -> tuple[Any, float, Prosody | None]:
        """One Whisper run on the ASR pool; the caller holds self._asr. Routine partials are not urgent:
        another session's final (or this one's, at a pause) goes first. Urgent runs (the ones a final
        uses) also get the audio's prosody, computed beside the ASR so it costs no latency. `pause`: the
        run is that pause's speculation."""
        loop = asyncio.get_running_loop()
        voice = loop.run_in_executor(self.prosody_pool, prosody, audio) if urgent and self.prosody_pool else None
        t0 = time.perf_counter()
        # a routine partial gives the model up if this stream's pause speculation or final waits meanwhile
        # (self._urgent counts them; another session's urgent call the model's lock sees itself). So does a
        # speculation once the speaker talked over its pause: it is only a partial then, and 26 of 76 Mandarin
        # speculations were (commas); the final always runs to the end
        own: Callable[[], bool] | None = None  # this stream's own urgent run waits (besides this one)
        demoted: Callable[[], bool] | None = None
        if pause is not None:
            own, demoted = self._urgent_beyond(1), (lambda: self._talked_over(utt, pause))
        elif not urgent:
            own = self._urgent_beyond(0)
        tr = await loop.run_in_executor(
            self.asr_pool,
            lambda: self.transcriber.transcribe(
                audio,
                language=self.language or utt.get("language"),
                urgent=urgent,
                owner=self.owner,
                yield_to=own,
                demoted=demoted,
            ),
        )
        ms = (time.perf_counter() - t0) * 1000.0
        return tr, ms, (await voice if voice is not None else None)

    def _urgent_beyond(self, n: int) -> Callable[[], bool]:
        """True while more than n of this stream's urgent runs are asked for (read from the ASR worker thread:
        an int, no lock needed)."""
        return lambda: self._urgent > n

    @staticmethod
    def _talked_over(utt: dict, pause: int | None) -> bool:
        """The speaker went on after this pause: its speculation will not be the final. Read from the ASR
        worker thread (plain values, no lock needed); after the endpoint the utterance stays paused."""
        return utt.get("pauses") != pause or not utt.get("paused")

    async def _partial(self, utt: dict, end: int, urgent: bool, pause: int | None = None) -> None:
        audio = self.audio(utt["start"], end)
        async with self._asr:
            try:
                tr, ms, voice = await self._transcribe(audio, utt, urgent, pause)
            except Preempted:
                return  # it gave way to an urgent run; the next partial or the final covers it
        if (
            self.language is None
            and "language" not in utt
            and tr.text
            and audio.size >= PIN_LANGUAGE_S * SR
            and tr.language_probability >= PIN_LANGUAGE_P
        ):
            utt["language"] = tr.language  # the utterance's later runs skip language detection
        if end > utt["best_end"]:
            utt["best"], utt["best_end"], utt["best_prosody"] = tr, end, voice
        # still a speculation if the speaker did not go on meanwhile (the endpoint came, or the pause goes on)
        speculative = urgent and (utt is not self._utt or bool(utt.get("paused")))
        if tr.text and not utt.get("final_sent"):  # news until the final is out, even after the endpoint
            self._emit(
                LiveEvent(
                    "partial",
                    utt["index"],
                    time.monotonic(),
                    tr.text,
                    tr.language,
                    audio.size / SR,
                    ms,
                    speculative=speculative,
                    prosody=voice,
                )
            )

    async def _dropped_final(self, utterance: int) -> None:
        """An empty final for an utterance over the bound, after the finals asked for before it (the lock is
        FIFO): the session sees every utterance end, in order, without a Whisper run."""
        async with self._asr:
            pass
        self._emit(LiveEvent("final", utterance, time.monotonic(), dropped=True))

    async def _final(self, utt: dict, end: int) -> None:
        async with self._asr:  # after any partial in flight: it may already cover the end
            reused = False
            if self.transcriber is None:
                tr, ms, voice = None, 0.0, None
            elif utt["best"] is not None and utt["best_end"] >= end:
                tr, ms, voice, reused = utt["best"], 0.0, utt.get("best_prosody"), True  # it heard everything
            else:
                tr, ms, voice = await self._transcribe(
                    self.audio(utt["start"], min(end + self.post_roll, self._received)), utt
                )
        utt["final_sent"] = True
        text = tr.text if tr is not None else ""
        # no stickiness: detection shares the encoder pass (realtime/asr_window.py), so every utterance
        # finds its own language and a speaker may switch between them
        lang = tr.language if tr is not None else None
        self._emit(
            LiveEvent(
                "final",
                utt["index"],
                time.monotonic(),
                text,
                lang,
                (end - utt["start"]) / SR,
                ms,
                reused=reused,
                prosody=voice,
            )
        )
