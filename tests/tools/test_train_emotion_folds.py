"""tools.train_emotion's pinned folds: lines the fold fine-tunes were trained on keep their folds when the corpus
grows, so each fold's fine-tune still reads its own fold out of fold."""

from __future__ import annotations

import numpy as np

from tools.train_emotion import GROUP_COSINE, grouped_folds, pinned_folds


def unit_rows(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 16))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def rows_of(n: int, start: int = 0) -> list[dict[str, str]]:
    return [{"text": f"line {i}", "language": "en", "emotion": "idle"} for i in range(start, start + n)]


def test_an_unchanged_corpus_keeps_grouped_folds() -> None:
    emb, rows = unit_rows(60, 1), rows_of(60)
    assert (pinned_folds(emb, rows, rows, 5, 1) == grouped_folds(emb, 5, 1)).all()


def test_new_lines_leave_old_folds_alone_and_join_their_nearest_old_line() -> None:
    old_emb, old = unit_rows(60, 2), rows_of(60)
    near = old_emb[7] + 0.01 * unit_rows(1, 3)[0]  # a paraphrase of line 7
    near /= np.linalg.norm(near)
    new_emb = np.vstack([unit_rows(10, 4), near[None]])
    # the grown corpus interleaves new lines (a file's new lines come before the next file's old ones)
    emb = np.vstack([old_emb[:30], new_emb[:5], old_emb[30:], new_emb[5:]])
    rows = old[:30] + rows_of(5, 100) + old[30:] + rows_of(6, 200)
    fold = pinned_folds(emb, rows, old, 5, 1)
    before = grouped_folds(old_emb, 5, 1)
    assert (fold[:30] == before[:30]).all() and (fold[35:65] == before[30:]).all()
    assert float(near @ old_emb[7]) > GROUP_COSINE and fold[-1] == before[7]
    assert (fold >= 0).all() and np.bincount(fold).min() > 0
