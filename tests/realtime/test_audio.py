"""Decoding real encoded clips (espeak-ng speech through PyAV/sox encoders) and prosody on signals we know."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
import wave

import av
import numpy as np
import pytest

from avatarcast.realtime.audio import SAMPLE_RATE, AudioDecodeError, decode_audio, decode_pcm16, prosody, resample

ESPEAK = shutil.which("espeak-ng")
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")


def _tone(freq: float, seconds: float = 1.0, amp: float = 0.3, sr: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _encode(pcm: np.ndarray, sr: int, container: str, codec: str, rate: int | None = None) -> bytes:
    """Encode mono float audio with PyAV, the way a phone app's upload would arrive."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate or sr, layout="mono")
        frame_size = 960
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate or sr)
        pts = 0
        for i in range(0, len(pcm), frame_size):
            frame = av.AudioFrame.from_ndarray(
                pcm[None, i : i + frame_size].astype(np.float32), format="flt", layout="mono"
            )
            frame.sample_rate = sr
            frame.pts = pts
            pts += frame.samples
            for f in resampler.resample(frame):
                for packet in stream.encode(f):
                    out.mux(packet)
        for f in resampler.resample(None):
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    if ESPEAK is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    subprocess.run([ESPEAK, "-w", str(path), "I am so happy right now"], check=True)
    return path.read_bytes()


@pytest.fixture(scope="module")
def speech_pcm(speech_wav: bytes) -> np.ndarray:
    return decode_audio(speech_wav)


@needs_espeak
def test_wav_from_espeak_decodes_to_16k_mono(speech_wav: bytes) -> None:
    with wave.open(io.BytesIO(speech_wav)) as w:
        native_s = w.getnframes() / w.getframerate()
        assert w.getframerate() == 22050, "espeak-ng writes 22.05 kHz; the test exercises resampling"
    pcm = decode_audio(speech_wav)
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert abs(pcm.size / SAMPLE_RATE - native_s) < 0.01, f"expected {native_s:.3f} s"
    assert 0.05 < np.abs(pcm).max() <= 1.0


@needs_espeak
@pytest.mark.parametrize(
    "container,codec,rate",
    [
        ("mp3", "libmp3lame", 22050),
        ("ogg", "libopus", 48000),
        ("webm", "libopus", 48000),
        ("ipod", "aac", 22050),
        ("flac", "flac", 22050),
    ],
)
def test_compressed_containers_decode(speech_pcm: np.ndarray, container: str, codec: str, rate: int) -> None:
    src = resample(speech_pcm, SAMPLE_RATE, 22050)
    data = _encode(src, 22050, container, codec, rate)
    pcm = decode_audio(data)
    # codecs add priming/padding (opus 6.5 ms, aac ~46 ms, mp3 ~50 ms); the speech itself must survive
    assert abs(pcm.size - speech_pcm.size) / SAMPLE_RATE < 0.08, f"{container}: {pcm.size} vs {speech_pcm.size} samples"
    rms_in = float(np.sqrt(np.mean(speech_pcm**2)))
    rms_out = float(np.sqrt(np.mean(pcm**2)))
    assert abs(rms_out / rms_in - 1.0) < 0.15, f"{container}: level changed {rms_in:.3f} -> {rms_out:.3f}"


@needs_espeak
@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed (apt-get install sox)")
def test_sox_made_ogg_vorbis_decodes(tmp_path, speech_wav: bytes, speech_pcm: np.ndarray) -> None:
    src = tmp_path / "in.wav"
    src.write_bytes(speech_wav)
    dst = tmp_path / "out.ogg"
    subprocess.run(["sox", str(src), "-r", "44100", "-c", "2", str(dst)], check=True)
    pcm = decode_audio(dst)  # a path works as well as bytes
    assert abs(pcm.size - speech_pcm.size) / SAMPLE_RATE < 0.05


def test_raw_pcm16_at_16k_and_48k_stereo() -> None:
    tone = _tone(440, 0.5)
    raw16 = (tone * 32767).astype("<i2").tobytes()
    out = decode_pcm16(raw16)
    assert out.size == tone.size and np.allclose(out, tone, atol=1e-4)
    t48 = _tone(440, 0.5, sr=48000)
    stereo = np.stack([t48, t48], axis=1)
    out48 = decode_pcm16((stereo * 32767).astype("<i2").tobytes(), sample_rate=48000, channels=2)
    assert abs(out48.size - 8000) <= 32
    assert abs(prosody(out48).pitch_hz_median - 440) < 3


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (b"\x00" * 10, "corrupt"),
        (b"this is not audio, just some text that someone uploaded by mistake" * 20, "corrupt"),
        (np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "corrupt"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00", "corrupt"),  # header cut off before any audio
        # a fuzzed header claiming 14.6 MHz: refused before the resampler burns ~1 s of CPU on it
        (
            b"RIFF\xd2\x06\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00D\xac\xde\x00\x88X\x01\x00\x02\x00\x10\x00"
            b"data\x20\x00\x00\x00" + bytes(32),
            "unsupported",
        ),
    ],
)
def test_bad_input_raises_typed_error(data: bytes, reason: str) -> None:
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(data)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


@needs_espeak
def test_truncated_mp3_keeps_what_decoded(speech_pcm: np.ndarray) -> None:
    data = _encode(resample(speech_pcm, SAMPLE_RATE, 22050), 22050, "mp3", "libmp3lame", 22050)
    pcm = decode_audio(data[: len(data) // 2])
    assert 0.3 * speech_pcm.size < pcm.size < 0.7 * speech_pcm.size


def test_limits_bytes_and_duration() -> None:
    raw = (_tone(300, 3.0) * 32767).astype("<i2").tobytes()
    with pytest.raises(AudioDecodeError) as info:
        decode_pcm16(raw, max_bytes=1000)
    assert info.value.reason == "too_large"
    with pytest.raises(AudioDecodeError) as info:
        decode_pcm16(raw, max_seconds=1.0)
    assert info.value.reason == "too_long"
    assert decode_pcm16(raw, max_seconds=1.0, truncate=True).size == SAMPLE_RATE
    with pytest.raises(AudioDecodeError) as info:
        decode_pcm16(raw[:-1])
    assert info.value.reason == "corrupt"

    wav = io.BytesIO()
    with wave.open(wav, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(raw)
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(wav.getvalue(), max_seconds=1.0)
    assert info.value.reason == "too_long"
    assert decode_audio(wav.getvalue(), max_seconds=1.0, truncate=True).size == SAMPLE_RATE
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(wav.getvalue(), max_bytes=1000)
    assert info.value.reason == "too_large"


def test_missing_file_is_an_os_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        decode_audio(tmp_path / "nope.wav")


@pytest.mark.parametrize("freq", [100.0, 200.0, 320.0])
def test_prosody_pitch_of_pure_tones(freq: float) -> None:
    p = prosody(_tone(freq, 1.0))
    assert abs(p.pitch_hz_median - freq) < 0.01 * freq, f"expected ~{freq} Hz, got {p.pitch_hz_median:.1f}"
    assert p.voiced_fraction > 0.9
    assert p.pitch_var < 0.1
    assert abs(p.energy_db - 20 * np.log10(0.3 / np.sqrt(2))) < 0.5


def test_prosody_silence_noise_and_glide() -> None:
    silent = prosody(np.zeros(SAMPLE_RATE, dtype=np.float32))
    assert silent.voiced_fraction == 0.0 and silent.pitch_hz_median == 0.0 and silent.energy_db <= -60
    noise = prosody(np.random.default_rng(1).normal(0, 0.1, SAMPLE_RATE).astype(np.float32))
    assert noise.voiced_fraction < 0.1, "white noise has no pitch"
    # a glide from 150 to 300 Hz spans one octave: the spread must show it
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    f = 150 * 2**t
    glide = (0.3 * np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE)).astype(np.float32)
    pg = prosody(glide)
    assert 200 < pg.pitch_hz_median < 230
    assert 2.5 < pg.pitch_var < 4.5, f"octave glide should spread ~3.5 semitones, got {pg.pitch_var:.2f}"


def test_prosody_rate_counts_syllable_like_bursts() -> None:
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    bursts = (_tone(180, 2.0) * (0.5 - 0.5 * np.cos(2 * np.pi * 4 * t)) ** 2).astype(np.float32)
    p = prosody(bursts)
    assert 3.0 <= p.speech_rate_sps <= 5.0, f"4 bursts/s, got {p.speech_rate_sps:.2f}"


@needs_espeak
def test_prosody_on_speech_and_speed(speech_pcm: np.ndarray) -> None:
    p = prosody(speech_pcm)
    assert 60 < p.pitch_hz_median < 300
    assert 0.3 < p.voiced_fraction < 0.95
    assert p.speech_rate_sps > 1.0
    ten_s = np.tile(speech_pcm, int(np.ceil(10 * SAMPLE_RATE / speech_pcm.size)))[: 10 * SAMPLE_RATE]
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        prosody(ten_s)
        runs.append((time.perf_counter() - t0) * 1000 / 10)
    assert min(runs) < 10.0, f"prosody should cost < 10 ms per second of audio, took {min(runs):.1f}"
