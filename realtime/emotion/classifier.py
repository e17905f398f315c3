"""The trained emotion classifier: logistic regressions over sentence embeddings, n-grams and keywords.

Three heads, each a multinomial logistic regression that also reads the lexicon's keyword
evidence: one per e5 view of the sentence (the `query: ` and the `passage: ` prefix) on the
centered, scaled embedding, and one on the hashed n-grams of ngrams.py (the surface words the
embeddings smooth away: slang, denials, laughter). The reader takes their probabilities'
weighted mean, with the weights that cross-validation on the training corpus chose. Trained
offline by `python -m tools.train_emotion` (one command, deterministic). A head is named apart from
the view it reads (`head_views` in the manifest), so more than one head may read a view: heads fitted
on other data beside the corpus's (tools/fit_set_heads.py). `weights/classifier.npz`
and `weights/manifest.json` ship in the package. The manifest names the encoder, the label
order, the feature layout and the partial-transcript policy fitted with the weights; `load`
refuses weights that do not fit the running templates or encoder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from avatarcast.engines.errors import AvatarcastError, ErrorCode

WEIGHTS_DIR = Path(__file__).with_name("weights")


class ClassifierMismatch(AvatarcastError, ValueError):
    """The shipped weights do not fit what runs here (labels, encoder or feature size): start-up fails."""

    code = ErrorCode.START_FAILED


@dataclass(frozen=True)
class PartialPolicy:
    """When a partial transcript in one language may decide: enough words (English) or characters
    (Chinese) and enough confidence; a keyword of the label backing the cue may lower both ("so
    happy" need not wait as long as "we sold the house"); and, when hold_units > 0, the label unchanged over the
    utterance's partials of the last hold_units words / characters (partial.py)."""

    min_confidence: float
    min_units: int
    min_confidence_keyword: float
    min_units_keyword: int
    hold_units: int = 0  # weights fitted before the hold have none


@dataclass(frozen=True)
class Manifest:
    """What the weights are: fitted to which encoder, labels and features, and how they scored."""

    labels: tuple[str, ...]
    encoder: str
    encoder_version: str
    encoder_weights_bytes: int
    kinds: tuple[str, ...]  # the heads' names, in order
    views: dict[str, str]  # each head's input: an e5 view ("query", "passage") or "ngram"; by default its name
    embedding_dim: int
    lexicon_features: int
    head_weights: dict[str, float]  # each head's weight in the mean of probabilities
    ngram_dim: int
    denial_penalty: float  # log-probability taken from a label whose only keywords are denied
    partial: dict[str, PartialPolicy]  # by language
    raw: dict

    @classmethod
    def read(cls, path: Path) -> Manifest:
        d = json.loads(path.read_text(encoding="utf-8"))
        enc, feat = d["encoder"], d["features"]
        return cls(
            labels=tuple(d["labels"]),
            encoder=enc["name"],
            encoder_version=enc["version"],
            encoder_weights_bytes=int(enc["weights_bytes"]),
            kinds=tuple(feat["heads"]),
            views={k: str(feat.get("head_views", {}).get(k, k)) for k in feat["heads"]},
            embedding_dim=int(feat["embedding_dim"]),
            lexicon_features=int(feat["lexicon"]),
            head_weights={k: float(d.get("head_weights", {}).get(k, 1.0)) for k in feat["heads"]},
            ngram_dim=int(feat.get("ngram_dim", 0)),
            denial_penalty=float(d["denial_penalty"]),
            partial={lang: PartialPolicy(**p) for lang, p in d["partial"].items()},
            raw=d,
        )


@dataclass(frozen=True)
class Features:
    """What the heads read for n texts."""

    embeddings: Mapping[str, np.ndarray]  # per e5 view: (n, 384), unit rows
    lexicon: np.ndarray  # (n, 2 * labels) keyword evidence (lexicon.py)
    ngrams: tuple[tuple[np.ndarray, np.ndarray], ...] = ()  # per text: hashed n-gram (indices, values)


class ClassifierHead(Protocol):
    """One regression of the mean: its name and its probabilities."""

    @property
    def kind(self) -> str: ...

    def probs(self, f: Features) -> np.ndarray: ...


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@dataclass(frozen=True)
class Head:
    """One e5 view's regression: logits = [(embedding - mu) * scale ; lexicon] @ W + b."""

    kind: str  # its name
    W: np.ndarray
    b: np.ndarray
    mu: np.ndarray
    scale: float
    view: str = ""  # the e5 view it reads; "": its name

    @property
    def reads(self) -> str:
        return self.view or self.kind

    def probs(self, f: Features) -> np.ndarray:
        return softmax(np.hstack([(f.embeddings[self.reads] - self.mu) * self.scale, f.lexicon]) @ self.W + self.b)


@dataclass(frozen=True)
class NgramHead:
    """The n-gram regression: logits = ngrams @ W + lexicon @ W_lex + b; W has a row per hash bucket."""

    kind: str
    W: np.ndarray  # (ngram_dim, labels); rows of buckets no training text filled are zero
    W_lex: np.ndarray  # (2 * labels, labels)
    b: np.ndarray

    def probs(self, f: Features) -> np.ndarray:
        z = np.stack([v @ self.W[i] for i, v in f.ngrams]) if f.ngrams else np.zeros((0, len(self.b)))
        return softmax(z + f.lexicon @ self.W_lex + self.b)

    def arrays(self) -> dict[str, np.ndarray]:
        """The npz entries: only the used rows, in float16 (a few hundred KB instead of MBs)."""
        rows = np.flatnonzero(np.abs(self.W).sum(1) > 0).astype(np.int32)
        return {
            f"{self.kind}_rows": rows,
            f"{self.kind}_W": self.W[rows].astype(np.float16),
            f"{self.kind}_lex": self.W_lex.astype(np.float32),
            f"{self.kind}_b": self.b.astype(np.float32),
        }


class EmotionClassifier:
    """The weighted mean of the heads' probabilities, in numpy."""

    def __init__(self, manifest: Manifest, heads: tuple[ClassifierHead, ...]) -> None:
        self.manifest, self.heads = manifest, heads
        self.labels = manifest.labels
        self.kinds = tuple(h.kind for h in heads)
        k, lex = len(self.labels), manifest.lexicon_features
        for h in heads:
            if isinstance(h, Head):
                want = (manifest.embedding_dim + lex, k)
                ok = h.W.shape == want and h.b.shape == (k,) and h.mu.shape == (manifest.embedding_dim,)
            elif isinstance(h, NgramHead):
                want = (manifest.ngram_dim, k)
                ok = h.W.shape == want and h.W_lex.shape == (lex, k) and h.b.shape == (k,)
            else:
                raise ClassifierMismatch(f"unknown head {h!r}")
            if not ok:
                raise ClassifierMismatch(f"head {h.kind}: its arrays do not fit {want} and {lex} lexicon features")
        if self.kinds != manifest.kinds:
            raise ClassifierMismatch(f"heads {self.kinds} != manifest heads {manifest.kinds}")
        w = np.array([manifest.head_weights[h] for h in self.kinds], dtype=np.float64)
        self._weights = w / w.sum()

    @property
    def embedding_kinds(self) -> tuple[str, ...]:
        """The e5 views the heads read, each once (the encoder runs once per view)."""
        return tuple(dict.fromkeys(h.reads for h in self.heads if isinstance(h, Head)))

    @property
    def reads_ngrams(self) -> bool:
        return any(isinstance(h, NgramHead) for h in self.heads)

    @classmethod
    def load(cls, labels: tuple[str, ...], directory: Path = WEIGHTS_DIR) -> EmotionClassifier:
        """Read the weights; refuse them unless their label order is exactly `labels` (the templates')."""
        manifest = Manifest.read(directory / "manifest.json")
        if manifest.labels != tuple(labels):
            raise ClassifierMismatch(
                f"the classifier was trained for labels {manifest.labels}, but the templates' cue labels are "
                f"{tuple(labels)}; retrain with `python -m tools.train_emotion`"
            )
        heads: list[ClassifierHead] = []
        with np.load(directory / "classifier.npz") as z:
            for k in manifest.kinds:
                if manifest.views[k] == "ngram":
                    W = np.zeros((manifest.ngram_dim, len(labels)), np.float32)
                    W[z[f"{k}_rows"]] = z[f"{k}_W"].astype(np.float32)
                    heads.append(NgramHead(k, W, z[f"{k}_lex"].astype(np.float32), z[f"{k}_b"].astype(np.float32)))
                else:
                    heads.append(
                        Head(
                            k,
                            z[f"{k}_W"].astype(np.float32),
                            z[f"{k}_b"].astype(np.float32),
                            z[f"{k}_mu"].astype(np.float32),
                            float(z[f"{k}_scale"]),
                            "" if manifest.views[k] == k else manifest.views[k],
                        )
                    )
        return cls(manifest, tuple(heads))

    def check_encoder(self, name: str, version: str, weights_bytes: int) -> None:
        """The weights only mean something on the encoder they were trained on."""
        m = self.manifest
        if (name, version, weights_bytes) != (m.encoder, m.encoder_version, m.encoder_weights_bytes):
            raise ClassifierMismatch(
                f"the classifier was trained on {m.encoder} {m.encoder_version} ({m.encoder_weights_bytes} bytes), "
                f"but the encoder here is {name} {version} ({weights_bytes} bytes)"
            )

    def probs(self, f: Features) -> np.ndarray:
        """(n, labels) probabilities: the heads' weighted mean, then the denial penalty."""
        p = np.tensordot(self._weights, np.stack([h.probs(f) for h in self.heads]), axes=1)
        return deny(p, f.lexicon, self.manifest.denial_penalty)


def deny(probs: np.ndarray, lexicon: np.ndarray, penalty: float) -> np.ndarray:
    """Take `penalty` log-probability from each label whose keywords were all denied ("not tired",
    "我不困"): sentence embeddings barely hear the "not", so "I'm not sad anymore" lands next to
    "I'm sad"; the logistic regression alone, with few denials to learn from, leaves too much there."""
    k = probs.shape[-1]
    denied = (lexicon[..., k : 2 * k] > 0) & (lexicon[..., :k] == 0)
    if penalty <= 0 or not denied.any():
        return probs
    p = probs * np.exp(-penalty * denied)
    return p / p.sum(-1, keepdims=True)
