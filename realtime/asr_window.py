"""One Whisper encoder pass over a window fitted to a short utterance: language ID and decoding share it.

Whisper always encodes 30 s; for a 2-4 s utterance most of that is padding. Here the log-mel is cut to
the utterance plus `margin_s` (whisper.cpp's "audio_ctx" idea) and padded with the level Whisper's own
zero-padding gives (silence, not 0: a window padded with 0 made the decoder repeat the utterance). The
encoder runs once; when the language is not given it is read from that same output (one decoder step,
among `candidates`); the text is decoded with timestamps, and a segment that starts in the padding
(where a short window still sometimes repeats the utterance) is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from avatarcast.engines.errors import AvatarcastError, ErrorCode

SAMPLE_RATE = 16000
FRAMES_PER_S = 100  # log-mel frames (10 ms hop)
MAX_FRAMES = 3000  # Whisper's 30 s window
TIME_PRECISION = 0.02  # seconds per timestamp token
# decoding stops after this many tokens per second of audio (+ a constant): a hallucination guard, above
# any real speech rate (Mandarin ~ 7 tokens/s in Whisper's vocabulary, English ~ 4)
MAX_TOKENS_PER_S = 12
MAX_TOKENS_BASE = 12


class Preempted(AvatarcastError):
    """A routine (not urgent) transcription gave the model up to an urgent one before decoding. Control flow
    inside live ASR (realtime/live.py drops that partial): no client ever sees it."""

    code = ErrorCode.ASR_BUSY


@dataclass(frozen=True)
class WindowResult:
    """What one fitted-window pass heard."""

    text: str
    language: str
    language_probability: float  # 1.0 when the language was given
    avg_logprob: float
    no_speech_prob: float
    segments: tuple[tuple[float, float, str], ...]  # (start_s, end_s, text) inside the utterance


def fitted_features(feature_extractor: Any, audio: np.ndarray, margin_s: float) -> np.ndarray:
    """Log-mel of `audio` padded with silence to its length + margin_s (even, at most 30 s)."""
    feats = feature_extractor(audio)
    n = feats.shape[-1]
    frames = min(MAX_FRAMES, n + int(margin_s * FRAMES_PER_S))
    frames += frames % 2  # the encoder's stride-2 convolution wants an even length
    # Whisper normalizes log-mel as max(x, x.max() - 8) then (x + 4) / 4: its zero-padded silence sits at
    # feats.max() - 2, and that is what the model saw after every utterance in training
    silence = float(feats.max()) - 2.0
    out = np.full((feats.shape[0], frames), silence, dtype=np.float32)
    out[:, : min(n, frames)] = feats[:, :frames]
    return out


def pick_language(probs: Sequence[tuple[str, float]], candidates: Sequence[str]) -> tuple[str, float]:
    """The most likely language among `candidates` (all when empty), its probability renormalized over them."""
    scored = [(tok[2:-2], p) for tok, p in probs]  # "<|zh|>" -> "zh"
    if candidates:
        allowed = [(lang, p) for lang, p in scored if lang in candidates]
        scored = allowed or scored
    total = sum(p for _, p in scored) or 1.0
    lang, p = max(scored, key=lambda lp: lp[1])
    return lang, p / total


def decode_window(
    model: Any,
    audio: np.ndarray,
    *,
    language: str | None,
    task: str = "transcribe",
    candidates: Sequence[str] = (),
    beam_size: int = 1,
    margin_s: float = 1.0,
    yield_to: Callable[[], bool] | None = None,
) -> WindowResult:
    """Encode once, detect the language if not given, decode with timestamps; `model` is a faster-whisper
    WhisperModel (its CTranslate2 model, feature extractor and tokenizer are used directly). `yield_to`:
    asked before and after the encoder pass; True abandons the call (Preempted) before the decoder, its larger
    part (or before any work, when an urgent call was asked for while this one waited for the model)."""
    import ctranslate2  # ctranslate2: heavy, only where a Whisper model is loaded
    from faster_whisper.tokenizer import Tokenizer  # faster_whisper: heavy, as above

    duration_s = audio.size / SAMPLE_RATE
    if yield_to is not None and yield_to():
        raise Preempted("an urgent transcription is waiting")
    feats = fitted_features(model.feature_extractor, audio, margin_s)
    enc = model.model.encode(ctranslate2.StorageView.from_array(feats[None]), to_cpu=False)
    if yield_to is not None and yield_to():
        raise Preempted("an urgent transcription is waiting")
    multilingual = model.model.is_multilingual
    prob = 1.0
    if language is None:
        if not multilingual:
            language = "en"
        else:
            language, prob = pick_language(model.model.detect_language(enc)[0], candidates)
    tok = Tokenizer(model.hf_tokenizer, multilingual, task=task, language=language)
    prompt = list(tok.sot_sequence)
    max_length = len(prompt) + int(MAX_TOKENS_BASE + MAX_TOKENS_PER_S * duration_s)
    res = model.model.generate(
        enc,
        [prompt],
        beam_size=beam_size,
        max_length=max_length,
        suppress_blank=True,
        suppress_tokens=[-1],
        return_scores=True,
        return_no_speech_prob=True,
    )[0]
    segments = _segments(tok, res.sequences_ids[0], duration_s)
    text = "".join(t for _, _, t in segments).strip()
    score = float(res.scores[0]) if res.scores else 0.0
    return WindowResult(
        text,
        language,
        prob,
        score,
        float(getattr(res, "no_speech_prob", 0.0)),
        tuple((s, e, t.strip()) for s, e, t in segments if t.strip()),
    )


def _segments(tok: Any, ids: Sequence[int], duration_s: float) -> list[tuple[float, float, str]]:
    """Split timestamped ids into (start, end, text); a segment starting in the padding is dropped."""
    out: list[tuple[float, float, str]] = []
    start: float | None = None
    text: list[int] = []
    for t in ids:
        if t >= tok.eot and t < tok.timestamp_begin:
            continue  # special tokens
        if t >= tok.timestamp_begin:
            at = (t - tok.timestamp_begin) * TIME_PRECISION
            if text:
                if start is not None and start < duration_s - 0.1:
                    out.append((start, min(at, duration_s), tok.decode(text)))
                text, start = [], None
            else:
                start = at
            continue
        if start is None:
            start = out[-1][1] if out else 0.0
        text.append(t)
    if text and start is not None and start < duration_s - 0.1:  # no closing timestamp: cut by max_length
        out.append((start, duration_s, tok.decode(text)))
    return out
