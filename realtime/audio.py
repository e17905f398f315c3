"""Audio in: decode any common upload to 16 kHz mono float32, and cheap prosody features.

Everything downstream (VAD, ASR, prosody) assumes 16 kHz mono float32 in [-1, 1], so every
input path (uploaded clip, raw PCM16 from a WebSocket, a WebRTC track) ends here first.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from avatarcast.engines.errors import AvatarcastError, ErrorCode

SAMPLE_RATE = 16000
DEFAULT_MAX_SECONDS = 30.0
DEFAULT_MAX_BYTES = 20 * 1024 * 1024

_REASONS = {
    "empty": ErrorCode.AUDIO_EMPTY,
    "too_large": ErrorCode.TOO_LARGE,
    "too_long": ErrorCode.TOO_LONG,
    "corrupt": ErrorCode.CORRUPT,
    "no_audio": ErrorCode.NO_AUDIO,
    "unsupported": ErrorCode.UNSUPPORTED,
}


class AudioDecodeError(AvatarcastError, ValueError):
    """Raised when input cannot become audio; `reason` is one of a small fixed set, each its own ErrorCode."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in _REASONS:
            raise ValueError(f"unknown AudioDecodeError reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason, code=_REASONS[reason])


MIN_RATE, MAX_RATE = 4_000, 384_000  # sample rates a real clip has


def _check_rate(rate: int | None) -> None:
    """Refuse absurd sample rates before resampling: a fuzzed WAV header saying 14.6 MHz made the
    resampler spend ~1 s of CPU (and stalled every stream with it) on 59 bytes of input."""
    if rate and not MIN_RATE <= rate <= MAX_RATE:
        raise AudioDecodeError("unsupported", f"sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz")


def decode_audio(
    source: bytes | bytearray | memoryview | str | os.PathLike | BinaryIO,
    *,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    truncate: bool = False,
    container_format: str | None = None,
) -> np.ndarray:
    """Decode a clip (wav, mp3, ogg/opus, webm, m4a, flac, ...) to 16 kHz mono float32 with PyAV.

    Over `max_seconds` raises reason "too_long" unless `truncate`, then keeps the first
    `max_seconds`. A file that breaks part way keeps what decoded before the break.
    """
    import av  # imported here so the prosody half of this module works without PyAV

    fileobj = _open_source(source, max_bytes)
    max_samples = int(round(max_seconds * SAMPLE_RATE))
    try:
        container = av.open(fileobj, mode="r", format=container_format)
    except av.error.FFmpegError as exc:
        raise AudioDecodeError("corrupt", f"not a recognisable audio container ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # e.g. an unknown container_format name
        raise AudioDecodeError("unsupported", str(exc)) from exc
    with container:
        if not container.streams.audio:
            raise AudioDecodeError("no_audio", "the container has no audio stream")
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            raise AudioDecodeError("unsupported", f"no decoder for codec of stream {stream.index}")
        if not truncate and container.duration is not None:
            declared_s = container.duration / 1_000_000  # av.time_base is microseconds
            if declared_s > max_seconds + 0.5:
                raise AudioDecodeError("too_long", f"{declared_s:.1f} s > max {max_seconds:g} s")
        _check_rate(stream.codec_context.sample_rate)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        pieces: list[np.ndarray] = []
        total = 0
        error: Exception | None = None
        try:
            for frame in container.decode(stream):
                frame.pts = None  # resampler copes with gaps; mixed pts from broken files trip it
                _check_rate(frame.sample_rate)
                for out in resampler.resample(frame):
                    piece = out.to_ndarray().reshape(-1)
                    pieces.append(piece)
                    total += piece.size
                if total > max_samples:
                    break
            if total <= max_samples:
                for out in resampler.resample(None):
                    piece = out.to_ndarray().reshape(-1)
                    pieces.append(piece)
                    total += piece.size
        except av.error.FFmpegError as exc:
            error = exc
        except AudioDecodeError:
            raise
        except (UnicodeDecodeError, ValueError) as exc:  # garbage that slipped past the probe
            error = exc
    if total == 0:
        if error is not None:
            raise AudioDecodeError("corrupt", f"decoding failed before any audio ({error})") from error
        raise AudioDecodeError("empty", "the stream decoded to zero samples")
    pcm = np.concatenate(pieces).astype(np.float32, copy=False)
    if pcm.size > max_samples:
        if not truncate:
            raise AudioDecodeError("too_long", f"more than max {max_seconds:g} s of audio")
        pcm = pcm[:max_samples]
    return np.clip(pcm, -1.0, 1.0, out=pcm)


def decode_pcm16(
    data: bytes | bytearray | memoryview,
    *,
    sample_rate: int = SAMPLE_RATE,
    channels: int = 1,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    truncate: bool = False,
) -> np.ndarray:
    """Raw little-endian PCM16 (what WebSocket clients stream) to 16 kHz mono float32."""
    raw = memoryview(data).cast("B")
    if raw.nbytes == 0:
        raise AudioDecodeError("empty", "no bytes")
    if raw.nbytes > max_bytes:
        raise AudioDecodeError("too_large", f"{raw.nbytes} bytes > max {max_bytes}")
    if channels < 1 or sample_rate < 1000:
        raise AudioDecodeError("unsupported", f"channels={channels}, sample_rate={sample_rate}")
    frame_bytes = 2 * channels
    if raw.nbytes % frame_bytes:
        raise AudioDecodeError(
            "corrupt", f"{raw.nbytes} bytes is not a whole number of {channels}-channel PCM16 frames"
        )
    samples = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)
    seconds = samples.shape[0] / sample_rate
    if seconds > max_seconds:
        if not truncate:
            raise AudioDecodeError("too_long", f"{seconds:.1f} s > max {max_seconds:g} s")
        samples = samples[: int(max_seconds * sample_rate)]
    mono = samples.astype(np.float32).mean(axis=1) / 32768.0
    if sample_rate == SAMPLE_RATE:
        return mono.astype(np.float32, copy=False)
    return resample(mono, sample_rate)


def resample(pcm: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample mono float32 with FFmpeg's resampler (better than numpy interpolation for speech)."""
    import av  # PyAV: as in decode_audio, the prosody half of this module works without it

    if sample_rate == target_rate:
        return np.asarray(pcm, dtype=np.float32)
    frame = av.AudioFrame.from_ndarray(np.asarray(pcm, dtype=np.float32).reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = sample_rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target_rate)
    outs = list(resampler.resample(frame)) + list(resampler.resample(None))
    if not outs:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([o.to_ndarray().reshape(-1) for o in outs]).astype(np.float32, copy=False)


def _open_source(source: object, max_bytes: int) -> BinaryIO | str:
    """Check size limits up front so a huge upload is refused before FFmpeg touches it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        n = memoryview(source).nbytes
        if n == 0:
            raise AudioDecodeError("empty", "no bytes")
        if n > max_bytes:
            raise AudioDecodeError("too_large", f"{n} bytes > max {max_bytes}")
        return io.BytesIO(bytes(source))
    if isinstance(source, (str, os.PathLike)):
        n = os.path.getsize(source)  # a missing file is the caller's bug: let OSError say so
        if n == 0:
            raise AudioDecodeError("empty", f"{os.fspath(source)!r} is empty")
        if n > max_bytes:
            raise AudioDecodeError("too_large", f"{n} bytes > max {max_bytes}")
        return os.fspath(source)
    if hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        return _open_source(data, max_bytes)
    raise TypeError(f"decode_audio takes bytes, a path or a binary file, not {type(source).__name__}")


# --- prosody -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prosody:
    """How something was said (loudness, pitch, pace): lets the emotion cue react to voice, not only words."""

    energy_db: float  # mean RMS level of active frames, dBFS
    energy_var: float  # std of active-frame level, dB
    pitch_hz_median: float  # median F0 of voiced frames; 0.0 when nothing is voiced
    pitch_var: float  # std of voiced F0 in semitones (scale-free across voices)
    speech_rate_sps: float  # syllable-like energy peaks per second of active audio
    voiced_fraction: float  # voiced frames / all frames
    duration_s: float = 0.0

    @property
    def arousal(self) -> float:
        """0..1 activation guess from level, pitch movement and pace (0.5 = unremarkable)."""
        if self.voiced_fraction <= 0.0 and self.energy_db <= -60.0:
            return 0.0
        z = (
            0.08 * (self.energy_db + 24.0)
            + 0.35 * (self.pitch_var - 2.5)
            + 0.05 * (self.energy_var - 6.0)
            + 0.25 * (self.speech_rate_sps - 4.0)
        )
        return float(1.0 / (1.0 + np.exp(-z)))


_FRAME = 512  # 32 ms: two periods of a 62 Hz voice
_HOP = 160  # 10 ms
_NFFT = 1024
_FMIN, _FMAX = 60.0, 500.0
_SILENT = Prosody(-100.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def prosody(pcm: np.ndarray, sr: int = SAMPLE_RATE) -> Prosody:
    """Level, autocorrelation pitch and pace of a mono clip, numpy only (about 1-3 ms per second)."""
    x = np.asarray(pcm, dtype=np.float32).reshape(-1)
    duration_s = x.size / sr if sr else 0.0
    if x.size < _FRAME:
        return Prosody(**{**_SILENT.__dict__, "duration_s": duration_s})
    frames = np.lib.stride_tricks.sliding_window_view(x, _FRAME)[::_HOP]
    frames = frames - frames.mean(axis=1, keepdims=True)
    power = np.einsum("ij,ij->i", frames, frames) / _FRAME
    level_db = 10.0 * np.log10(power + 1e-10)
    active = level_db > max(float(level_db.max()) - 35.0, -55.0)
    if not active.any():
        return Prosody(**{**_SILENT.__dict__, "duration_s": duration_s})

    act_db = level_db[active]
    energy_db = float(10.0 * np.log10(np.mean(10.0 ** (act_db / 10.0))))
    energy_var = float(act_db.std())

    # voicing needs a loud-ish frame too: quiet fricatives ("s", "sh") give spurious high peaks
    loud = level_db[active] > float(level_db.max()) - 30.0
    f0 = np.where(loud, _pitch_track(frames[active], sr), 0.0)
    voiced = f0 > 0
    voiced_fraction = float(voiced.sum() / len(frames))
    if voiced.any():
        pitch_median = float(np.median(f0[voiced]))
        semitones = 12.0 * np.log2(f0[voiced] / pitch_median)
        # an octave jump is a tracking error, not intonation: leave it out of the spread
        pitch_var = float(np.std(semitones[np.abs(semitones) < 10.0]))
    else:
        pitch_median, pitch_var = 0.0, 0.0

    rate = _syllable_rate(level_db, active)
    return Prosody(energy_db, energy_var, pitch_median, pitch_var, rate, voiced_fraction, duration_s)


def _pitch_track(frames: np.ndarray, sr: int) -> np.ndarray:
    """Per-frame F0 from the window-corrected normalised autocorrelation (Boersma 1993); 0 = unvoiced."""
    window = np.hanning(_FRAME).astype(np.float32)
    spec = np.fft.rfft(frames * window, n=_NFFT, axis=1)
    acf = np.fft.irfft(spec.real**2 + spec.imag**2, n=_NFFT, axis=1)[:, : _FRAME // 2 + 1]
    wspec = np.fft.rfft(window, n=_NFFT)
    wacf = np.fft.irfft(np.abs(wspec) ** 2, n=_NFFT)[: _FRAME // 2 + 1]
    r = acf / np.maximum(acf[:, :1], 1e-12) / (wacf / wacf[0])
    lo, hi = int(sr / _FMAX), min(int(sr / _FMIN), _FRAME // 2 - 1)
    seg = r[:, lo : hi + 1]
    # local maxima only, so the slope down from lag 0 never counts as a period
    peak = np.zeros_like(seg, dtype=bool)
    peak[:, 1:-1] = (seg[:, 1:-1] >= seg[:, :-2]) & (seg[:, 1:-1] > seg[:, 2:])
    cand = np.where(peak, seg, -1.0)
    best = cand.max(axis=1)
    # first peak within 90% of the best one: avoids picking 2x/3x the period (octave errors)
    ok = cand >= (0.9 * best)[:, None]
    idx = np.argmax(ok, axis=1)
    rows = np.arange(len(seg))
    y0 = seg[rows, np.maximum(idx - 1, 0)]
    y1 = seg[rows, idx]
    y2 = seg[rows, np.minimum(idx + 1, seg.shape[1] - 1)]
    denom = y0 - 2 * y1 + y2
    shift = np.where(np.abs(denom) > 1e-9, 0.5 * (y0 - y2) / np.where(np.abs(denom) > 1e-9, denom, 1.0), 0.0)
    lag = lo + idx + np.clip(shift, -0.5, 0.5)
    voiced = best > 0.6
    return np.where(voiced, sr / lag, 0.0)


def _syllable_rate(level_db: np.ndarray, active: np.ndarray) -> float:
    """Count loudness peaks at least 4 dB above the dip before them, at most one per 100 ms."""
    env = np.convolve(level_db, np.ones(5) / 5.0, mode="same")
    active_s = active.sum() * _HOP / SAMPLE_RATE
    if active_s < 0.05:
        return 0.0
    count, last_peak, valley = 0, -100, env[0]
    for i in range(1, len(env) - 1):
        valley = min(valley, env[i])
        if env[i] >= env[i - 1] and env[i] > env[i + 1] and active[i]:
            if env[i] - valley >= 4.0 and i - last_peak >= 10:
                count += 1
                last_peak = i
                valley = env[i]
    return float(count / active_s)
