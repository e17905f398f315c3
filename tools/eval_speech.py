"""Score the server's ASR on the committed neural-voice clips: time, language ID, error rate, emotion.

    python -m tools.eval_speech [--clips tests/data/speech] [--asr-model base] [--json out.json]

For each language folder under --clips (a manifest.csv with file,emotion,text,language), every clip
is transcribed the way the server does it (language not given: detected), and per language this
reports ASR time p50/p95 (wall, and CPU time of the process), language-ID accuracy, the error
rate against the sentence text (characters for Mandarin, after traditional -> simplified with
OpenCC, since Whisper writes either script; words for English) and today's EmotionReader's
accuracy on the transcripts (its prosody input included).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CLIPS = REPO / "tests" / "data" / "speech"
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


def to_simplified(text: str) -> str:
    """Traditional -> simplified Chinese (OpenCC's t2s table)."""
    import opencc

    return opencc.OpenCC("t2s").convert(text)


def units(text: str, language: str) -> list[str]:
    """What the error rate counts: Han characters for zh (simplified), lower-case words otherwise."""
    if language == "zh":
        return CJK.findall(to_simplified(text))
    text = re.sub(r"\bha(ha)+\b", lambda m: " ".join(["ha"] * (len(m.group(0)) // 2)), text.lower())
    return re.sub(r"[^a-z0-9' ]", " ", text.replace("-", " ")).split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    d = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        prev, d[0] = d[:], i
        for j in range(1, len(hyp) + 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (ref[i - 1] != hyp[j - 1]))
    return d[len(hyp)]


def error_rate(ref: str, hyp: str, language: str) -> float:
    """CER (zh) or WER (other languages) of one transcript."""
    r = units(ref, language)
    return edit_distance(r, units(hyp, language)) / max(1, len(r))


def read_manifest(folder: Path) -> list[dict]:
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def evaluate(clips: Path, transcriber, reader=None, language: str | None = None) -> dict:
    """Per language folder: timing, LID, error rate and emotion accuracy; rows per clip."""
    from avatarcast.realtime.audio import decode_audio, prosody

    out: dict = {"languages": {}, "clips": []}
    for folder in sorted(p for p in clips.iterdir() if (p / "manifest.csv").is_file()):
        wall, cpu, errs, refs = [], [], 0, 0
        lid_ok = emo_ok = simplified = han = 0
        rows = read_manifest(folder)
        for r in rows:
            pcm = decode_audio(folder / r["file"])
            c0, t0 = sum(os.times()[:2]), time.perf_counter()
            tr = transcriber.transcribe(pcm, language=language)
            wall.append((time.perf_counter() - t0) * 1000.0)
            cpu.append((sum(os.times()[:2]) - c0) * 1000.0)
            ref = units(r["text"], r["language"])
            e = edit_distance(ref, units(tr.text, r["language"]))
            errs, refs = errs + e, refs + len(ref)
            lid_ok += tr.language == r["language"]
            chars = CJK.findall(tr.text)
            han += bool(chars)
            simplified += bool(chars) and to_simplified(tr.text) == tr.text
            label = reader.read(tr.text, prosody(pcm), tr.language).label if reader is not None else None
            emo_ok += label == r["emotion"]
            out["clips"].append(
                {
                    "file": f"{folder.name}/{r['file']}",
                    "language": r["language"],
                    "detected": tr.language,
                    "language_probability": round(tr.language_probability, 3),
                    "text": r["text"],
                    "transcript": tr.text,
                    "errors": e,
                    "units": len(ref),
                    "asr_ms": round(wall[-1], 1),
                    "expected": r["emotion"],
                    "emotion": label,
                }
            )
        n = len(rows)
        out["languages"][folder.name] = {
            "clips": n,
            "asr_ms_p50": round(float(np.percentile(wall, 50)), 1),
            "asr_ms_p95": round(float(np.percentile(wall, 95)), 1),
            "asr_cpu_ms_p50": round(float(np.percentile(cpu, 50)), 1),
            "language_id_accuracy": round(lid_ok / n, 3),
            ("cer" if folder.name == "zh" else "wer"): round(errs / max(1, refs), 4),
            "emotion_accuracy": round(emo_ok / n, 3) if reader is not None else None,
            "han_transcripts_simplified": f"{simplified}/{han}" if han else None,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    from avatarcast.realtime.asr import Transcriber
    from avatarcast.realtime.settings import Settings

    s = Settings()
    ap = argparse.ArgumentParser(prog="eval_speech", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", default=str(CLIPS))
    ap.add_argument("--asr-model", default=s.asr_model)
    ap.add_argument("--asr-languages", default=s.asr_languages, help="auto-detection candidates (comma list)")
    ap.add_argument("--language", default=None, help="force a language (default: detected)")
    ap.add_argument("--window-max-s", type=float, default=None, help="override the fitted-window limit (0: never)")
    ap.add_argument("--margin-s", type=float, default=None, help="override the fitted window's margin")
    ap.add_argument("--no-emotion", action="store_true", help="skip the EmotionReader")
    ap.add_argument("--json", default=None, help="write the full result here")
    args = ap.parse_args(argv)
    tr = Transcriber.load(args.asr_model, languages=s.language_list(args.asr_languages))
    if args.window_max_s is not None:
        tr.short_window_s = args.window_max_s or None
    if args.margin_s is not None:
        tr.margin_s = args.margin_s
    reader = None
    if not args.no_emotion:
        from avatarcast.realtime.emotion import EmotionReader

        reader = EmotionReader.load()
    load0 = os.getloadavg()[0]
    result = evaluate(Path(args.clips), tr, reader, args.language)
    result.update(
        {
            "asr_model": args.asr_model,
            "asr_languages": args.asr_languages,
            "language": args.language,
            "window_max_s": tr.short_window_s,
            "margin_s": tr.margin_s,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "loadavg_1m_start": round(load0, 2),
                "loadavg_1m_end": round(os.getloadavg()[0], 2),
            },
        }
    )
    for lang, v in result["languages"].items():
        print(f"{lang}: " + ", ".join(f"{k} {v[k]}" for k in v), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
