"""Hashed n-grams of a transcript: the surface words that a sentence embedding smooths away.

e5 places "I'm not tired" next to "I'm tired", and 绝了 / 破防 / 笑死 / "lmao" next to whatever
their neighbours mean; a linear head over hashed n-grams hears them as they are. English gives
words, word pairs and character 3-5-grams inside words (so "sleeeepy", "exhausting" and
Whisper's misspellings still share pieces); Chinese gives character 1-3-grams; "!" and "?"
count as tokens. The counts are log-scaled and the vector L2-normalized. CRC-32 hashes them into
`DIM` buckets (stable across runs and machines, unlike Python's `hash`).
"""

from __future__ import annotations

import re
import zlib
from itertools import pairwise

import numpy as np

from avatarcast.realtime.emotion.lexicon import fold
from avatarcast.realtime.emotion.text import CJK, CJK_RANGE

DIM = 1 << 15
_TOKEN = re.compile(f"[{CJK_RANGE}]|[a-z0-9']+|[!?！？]")
_MARKS = {"！": "!", "？": "?"}


def grams(text: str) -> list[str]:
    """The n-grams of one (normalized) text, each tagged with its kind."""
    out: list[str] = []
    run: list[str] = []  # consecutive Chinese characters
    words: list[str] = []

    def flush() -> None:
        s = "".join(run)
        for n in (1, 2, 3):
            out.extend("z" + s[i : i + n] for i in range(len(s) - n + 1))
        run.clear()

    for tok in _TOKEN.findall(fold(text)):
        if CJK.match(tok):
            run.append(tok)
            continue
        flush()
        if tok in "!?！？":
            out.append("p" + _MARKS.get(tok, tok))
            continue
        words.append(tok)
        out.append("w" + tok)
        w = f"<{tok}>"
        for n in (3, 4, 5):
            out.extend("c" + w[i : i + n] for i in range(len(w) - n + 1))
    flush()
    out.extend(f"b{a} {b}" for a, b in pairwise(words))
    return out


def features(text: str, dim: int = DIM) -> tuple[np.ndarray, np.ndarray]:
    """(bucket indices, values): log1p counts of the hashed n-grams, L2-normalized; empty for no n-grams."""
    counts: dict[int, int] = {}
    for g in grams(text):
        h = zlib.crc32(g.encode("utf-8")) & (dim - 1)
        counts[h] = counts.get(h, 0) + 1
    if not counts:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    idx = np.fromiter(counts, dtype=np.int64, count=len(counts))
    val = np.log1p(np.fromiter(counts.values(), dtype=np.float32, count=len(counts)))
    return idx, val / np.float32(np.linalg.norm(val))
