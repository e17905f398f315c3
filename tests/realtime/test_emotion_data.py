"""The emotion corpus: the held-out split is large enough, balanced, and disjoint from training."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from avatarcast.realtime.emotion import CUE_LABELS

ROOT = Path(__file__).resolve().parents[2]
HELD_OUT = sorted((ROOT / "tests" / "data" / "emotion").glob("heldout*.csv"))
TRAIN = sorted((ROOT / "tools" / "emotion_data").glob("train_*.csv"))
OLD = ROOT / "tests" / "data" / "emotion_utterances.csv"


def _rows(paths: list[Path]) -> list[dict[str, str]]:
    out = []
    for p in paths:
        with open(p, newline="", encoding="utf-8") as f:
            out += list(csv.DictReader(f))
    return out


def _norm(s: str) -> str:
    return "".join(c for c in s.lower() if c.isalnum())


def test_corpus_size_and_balance() -> None:
    held, train = _rows(HELD_OUT), _rows(TRAIN)
    assert len(held) + len(train) >= 1500
    assert len(held) >= 0.25 * (len(held) + len(train)), "the held-out part must be at least a quarter"
    counts = Counter((r["language"], r["emotion"]) for r in held)
    for lang in ("en", "zh"):
        for label in CUE_LABELS:
            assert counts[(lang, label)] >= 20, (lang, label, counts[(lang, label)])
    assert {r["emotion"] for r in held + train} == set(CUE_LABELS)


def test_training_data_never_repeats_a_held_out_line() -> None:
    held = {_norm(r["text"]) for r in _rows(HELD_OUT + [OLD])}
    repeated = [r["text"] for r in _rows(TRAIN) if _norm(r["text"]) in held]
    assert repeated == []


def test_held_out_sets_are_disjoint_from_the_older_set() -> None:
    old = {_norm(r["text"]) for r in _rows([OLD])}
    assert [r["text"] for r in _rows(HELD_OUT) if _norm(r["text"]) in old] == []
