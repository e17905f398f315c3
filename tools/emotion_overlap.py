"""Check new emotion lines against every earlier one: character-trigram Jaccard and e5 cosine.

    python -m tools.emotion_overlap NEW.csv [NEW2.csv ...]      # exit 1 when a line is too close

A held-out line that paraphrases a training line (or the reverse) measures memory, not
generalization. Every line of the new files is compared with every line of the corpus that is not
one of the new files (training, all held-out sets, tests/data/emotion_utterances.csv) and with the
other new lines; a pair within `JACCARD` trigram Jaccard or `COSINE` e5 query cosine is reported.
Pairs that are both training lines are only reported over `JACCARD_TRAIN` (training may repeat a scene).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from avatarcast.realtime.emotion.encoder import E5Encoder
from avatarcast.realtime.emotion.text import normalize
from tools.eval_emotion import load_rows
from tools.train_emotion import EmbeddingCache

ROOT = Path(__file__).resolve().parent.parent
JACCARD, COSINE, JACCARD_TRAIN = 0.30, 0.945, 0.65


def corpus_files() -> list[Path]:
    """Every labelled file of the emotion corpus."""
    return (
        sorted((ROOT / "tests" / "data" / "emotion").glob("heldout*.csv"))
        + sorted((ROOT / "tools" / "emotion_data").glob("train_*.csv"))
        + [ROOT / "tests" / "data" / "emotion_utterances.csv"]
    )


def _rows(path: Path) -> list[tuple[str, str, str]]:
    return [(r["text"], path.name, r["emotion"]) for r in load_rows(path)]


def trigrams(text: str) -> set[str]:
    s = "".join(c for c in normalize(text).lower() if c.isalnum() or ord(c) > 0x3000)
    return {s[i : i + 3] for i in range(max(1, len(s) - 2))}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("new", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=10, help="also print the N closest pairs by each measure")
    args = ap.parse_args(argv)
    new_paths = {p.resolve() for p in args.new}
    new = [r for p in args.new for r in _rows(p)]
    old = [r for p in corpus_files() if p.resolve() not in new_paths for r in _rows(p)]
    cache = EmbeddingCache(E5Encoder(threads=2), "query")
    N = cache([normalize(t) for t, _, _ in new])
    Old = cache([normalize(t) for t, _, _ in old])
    ref = old + new
    S = N @ np.vstack([Old, N]).T
    grams = [trigrams(t) for t, _, _ in ref]
    flagged, closest = [], []
    for i, (text, src, label) in enumerate(new):
        S[i, len(old) + i] = -1.0  # a line is not its own neighbour
        a = grams[len(old) + i]
        jac = np.array([len(a & b) / max(1, len(a | b)) if j != len(old) + i else 0.0 for j, b in enumerate(grams)])
        both_train = np.array([src.startswith("train") and r[1].startswith("train") for r in ref])
        bad = np.flatnonzero(np.where(both_train, jac > JACCARD_TRAIN, (jac > JACCARD) | (S[i] > COSINE)))
        for j in bad:
            flagged.append(
                f"{jac[j]:.2f} {S[i, j]:.3f} | {text} [{src} {label}] || {ref[j][0]} [{ref[j][1]} {ref[j][2]}]"
            )
        j, k = int(jac.argmax()), int(S[i].argmax())
        closest.append((jac[j], S[i, k], text, ref[j], ref[k]))
    for name, key, pick in (("trigram Jaccard", 0, 3), ("e5 cosine", 1, 4)):
        print(f"closest by {name}:")
        for c in sorted(closest, key=lambda c: -c[key])[: args.top]:
            print(f"  {c[key]:.3f} | {c[2]} || {c[pick][0]} [{c[pick][1]}]")
    print(
        f"{len(new)} new lines against {len(old)}; {len(flagged)} pairs too close "
        f"(Jaccard > {JACCARD} or cosine > {COSINE}; training pairs: Jaccard > {JACCARD_TRAIN})"
    )
    for f in flagged:
        print("  " + f)
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
