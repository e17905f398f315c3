"""Make a labelled set of short English speech clips for `avatarcast bench latency`.

    python realtime/bench/clips.py --out /tmp/clips [--n 24] [--seed 0]

Writes N WAV clips (16 kHz mono PCM16, 2-4 s each) spoken by espeak-ng with varied voices and
speeds, plus `labels.csv` (header `file,emotion,text`). The sentences cover every reaction
emotion of the templates (happy, excited, surprised, sad, angry, laughing, love, confused,
sleepy) and idle (neutral statements); they are picked round-robin over the emotions, so any N
covers as many different emotions as it can. Every sentence carries a keyword of its emotion's
lexicon (realtime/emotion.py), so the server's EmotionReader should read it the same way even
from an imperfect transcript of synthetic speech.

Needs espeak-ng on PATH; uses sox (if present) or PyAV to resample to 16 kHz.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

from avatarcast.realtime.audio import resample

SAMPLE_RATE = 16000
MIN_S, MAX_S = 2.0, 4.0
PAD_S = 0.15  # silence before and after the speech (the clip stays inside MIN_S..MAX_S)

# emotion -> sentences; index i of every list is used in round i
SENTENCES: dict[str, tuple[str, ...]] = {
    "happy": (
        "I am so happy right now!",
        "This is such good news, I am really glad.",
        "What a wonderful day, I feel great.",
    ),
    "angry": ("This is terrible, I am furious.", "I hate this, it is so unfair!", "I am really mad at you right now."),
    "sad": (
        "I feel so sad today.",
        "I miss my old friends, I feel like crying.",
        "I am so sorry, I lost my job today.",
    ),
    "excited": (
        "I am so excited, I can't wait!",
        "This is going to be amazing, let's go!",
        "I am thrilled about the trip tomorrow!",
    ),
    "surprised": (
        "Whoa, no way, that is a surprise!",
        "Oh my, I never expected that!",
        "Seriously? That is so unexpected!",
    ),
    "laughing": (
        "Haha, that is so funny!",
        "That joke was hilarious, I can't stop laughing.",
        "Haha, you are hilarious!",
    ),
    "love": (
        "I love you so much, sweetheart.",
        "I adore you, you are my darling.",
        "I love my family with all my heart.",
    ),
    "confused": (
        "I am confused, what do you mean?",
        "Huh? I don't understand this at all.",
        "That is weird, I am so confused.",
    ),
    "sleepy": ("I am so sleepy, time for bed.", "I am really tired, I need to sleep.", "I am exhausted, good night."),
    "idle": (
        "I will call the plumber on Monday morning.",
        "I put the boxes in the hallway.",
        "The meeting is on Tuesday afternoon.",
    ),
}
EMOTION_ORDER = tuple(SENTENCES)  # the round-robin order of plan(): the sentences' order
VOICES = ("en-us", "en-gb", "en-us+m3", "en-gb+f3", "en-us+f2", "en-gb-x-rp", "en-us+m7", "en-gb+m2")
SPEEDS = (150, 160, 170, 180, 190)


def plan(n: int) -> list[tuple[str, str]]:
    """(emotion, sentence) for N clips, round-robin over the emotions (repeats if N > all sentences)."""
    rounds = max(len(v) for v in SENTENCES.values())
    items: list[tuple[str, str]] = []
    for r in range(rounds):
        for emo in EMOTION_ORDER:
            items.append((emo, SENTENCES[emo][r % len(SENTENCES[emo])]))
    return [items[i % len(items)] for i in range(n)]


def _espeak(text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    out = subprocess.run(
        [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text], check=True, capture_output=True
    ).stdout
    with wave.open(io.BytesIO(out)) as w:
        sr, ch, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise RuntimeError(f"espeak-ng wrote {8 * width}-bit audio; expected 16-bit")
    pcm = np.frombuffer(raw, dtype="<i2").reshape(-1, ch).mean(axis=1).astype(np.float32) / 32768.0
    return pcm, sr


def _to_16k(pcm: np.ndarray, sr: int) -> np.ndarray:
    if sr == SAMPLE_RATE:
        return pcm
    sox = shutil.which("sox")
    if sox is not None:
        with tempfile.TemporaryDirectory() as d:
            src, dst = Path(d) / "in.wav", Path(d) / "out.wav"
            _write_wav(src, pcm, sr)
            subprocess.run(
                [sox, str(src), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(dst)],
                check=True,
                capture_output=True,
            )
            return _read_wav(dst)
    return resample(pcm, sr)


def _trim(pcm: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Cut leading/trailing silence (espeak-ng adds some), keeping the speech itself."""
    loud = np.flatnonzero(np.abs(pcm) > threshold)
    if loud.size == 0:
        return pcm
    return pcm[loud[0] : loud[-1] + 1]


def _write_wav(path: Path, pcm: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    data = (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(data.tobytes())


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        raw = w.readframes(w.getnframes())
        ch = w.getnchannels()
    return np.frombuffer(raw, dtype="<i2").reshape(-1, ch).mean(axis=1).astype(np.float32) / 32768.0


def synthesize(text: str, voice: str, speed: int, pitch: int = 50) -> np.ndarray:
    """16 kHz mono float32 speech of `text`, PAD_S silence around it, 2-4 s long (speed adjusted)."""
    pad = np.zeros(int(PAD_S * SAMPLE_RATE), np.float32)
    for _ in range(8):
        pcm, sr = _espeak(text, voice, speed, pitch)
        speech = _trim(_to_16k(pcm, sr))
        total = speech.size / SAMPLE_RATE + 2 * PAD_S
        if total > MAX_S and speed < 400:
            speed = int(speed * total / (MAX_S - 0.2)) + 5  # speak faster
            continue
        if total < MIN_S and speed > 90:
            speed = max(90, int(speed * total / (MIN_S + 0.3)) - 5)  # speak slower
            continue
        break
    out = np.concatenate([pad, speech, pad])
    if out.size < MIN_S * SAMPLE_RATE:  # still short at the slowest speed: pad the end with silence
        out = np.concatenate([out, np.zeros(int(MIN_S * SAMPLE_RATE) - out.size + 160, np.float32)])
    if out.size > MAX_S * SAMPLE_RATE:
        out = out[: int(MAX_S * SAMPLE_RATE)]
    peak = float(np.abs(out).max()) or 1.0
    return (out * min(1.0, 0.9 / peak)).astype(np.float32)


def make_clips(out: str | os.PathLike, n: int = 24, seed: int = 0) -> list[dict]:
    """Write N clips + labels.csv into `out`; returns the rows written (file, emotion, text, voice, speed, seconds)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, (emotion, text) in enumerate(plan(n)):
        voice = VOICES[int(rng.integers(len(VOICES)))]
        speed = SPEEDS[int(rng.integers(len(SPEEDS)))]
        pitch = int(rng.integers(35, 66))
        pcm = synthesize(text, voice, speed, pitch)
        name = f"{i:02d}_{emotion}.wav"
        _write_wav(out / name, pcm)
        rows.append(
            {
                "file": name,
                "emotion": emotion,
                "text": text,
                "voice": voice,
                "speed": speed,
                "seconds": round(pcm.size / SAMPLE_RATE, 2),
            }
        )
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "emotion", "text"])
        for r in rows:
            w.writerow([r["file"], r["emotion"], r["text"]])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make_clips", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for the clips and labels.csv")
    ap.add_argument("--n", type=int, default=24, help="number of clips (default 24)")
    ap.add_argument("--seed", type=int, default=0, help="voice/speed/pitch choice")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be >= 1")
    try:
        rows = make_clips(args.out, args.n, args.seed)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"make_clips: {exc}", file=sys.stderr)
        return 1
    for r in rows:
        print(
            f"{r['file']:<16} {r['seconds']:4.2f}s {r['voice']:<11} {r['speed']:3d} wpm  {r['emotion']:<9} {r['text']}",
            file=sys.stderr,
        )
    print(f"wrote {len(rows)} clips and labels.csv to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
