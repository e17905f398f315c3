"""The training lines the fine-tune may see: tools/emotion_data/train_*.csv only.

Never tests/data/emotion/ (held-out sets A-G, tests/data/emotion/README.md) nor tests/data/emotion_utterances.csv.
Text is normalized as the reader normalizes it, and each line gets its ASR-style copy, as tools/train_emotion does.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "emotion_data"


@dataclass(frozen=True)
class Row:
    text: str  # normalized
    asr: str  # normalized ASR-style copy
    language: str
    emotion: str


def training_rows(directory: Path = DATA) -> list[Row]:
    from avatarcast.realtime.emotion.cue import CUE_LABELS
    from avatarcast.realtime.emotion.text import normalize
    from tools.train_emotion import asr_style

    files = sorted(directory.glob("train_*.csv"))
    if not files or any("heldout" in f.name for f in files):
        raise ValueError(f"unexpected training files {files}")
    rows = []
    for path in files:
        with open(path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                if not r["text"].strip():
                    continue
                if r["emotion"] not in CUE_LABELS:
                    raise ValueError(f"label {r['emotion']!r} is not a cue label")
                text = normalize(r["text"])
                asr = normalize(asr_style(r["text"], r["language"]))
                rows.append(Row(text, asr, r["language"], r["emotion"]))
    return rows
