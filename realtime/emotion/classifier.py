"""The trained emotion classifier: logistic regression over sentence embeddings + keyword evidence.

Two heads, one per e5 view of the sentence (the `query: ` and the `passage: ` prefix), each a
multinomial logistic regression on [centered, scaled embedding ; lexicon evidence]; their
probabilities are averaged. (Cross-validation on the training corpus: the query view reads
English better, the passage view Chinese, their average both.) Trained offline by
`python -m tools.train_emotion` (one command, deterministic); `weights/classifier.npz` (~40 KB)
and `weights/manifest.json` ship in the package. The manifest names the encoder, the label
order, the feature layout and the partial-transcript policy fitted with the weights; `load`
refuses weights that do not fit the running templates or encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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
    happy" need not wait as long as "we sold the house")."""

    min_confidence: float
    min_units: int
    min_confidence_keyword: float
    min_units_keyword: int


@dataclass(frozen=True)
class Manifest:
    """What the weights are: fitted to which encoder, labels and features, and how they scored."""

    labels: tuple[str, ...]
    encoder: str
    encoder_version: str
    encoder_weights_bytes: int
    kinds: tuple[str, ...]
    embedding_dim: int
    lexicon_features: int
    denial_penalty: float  # log-probability taken from a label whose only keywords are denied
    partial: dict[str, PartialPolicy]  # by language
    raw: dict

    @classmethod
    def read(cls, path: Path) -> Manifest:
        d = json.loads(path.read_text(encoding="utf-8"))
        enc, feat = d["encoder"], d["features"]
        return cls(
            labels=tuple(d["labels"]), encoder=enc["name"], encoder_version=enc["version"],
            encoder_weights_bytes=int(enc["weights_bytes"]), kinds=tuple(feat["heads"]),
            embedding_dim=int(feat["embedding_dim"]), lexicon_features=int(feat["lexicon"]),
            denial_penalty=float(d["denial_penalty"]),
            partial={lang: PartialPolicy(**p) for lang, p in d["partial"].items()}, raw=d,
        )


@dataclass(frozen=True)
class Head:
    """One view's regression: logits = [(embedding - mu) * scale ; lexicon] @ W + b."""

    kind: str
    W: np.ndarray
    b: np.ndarray
    mu: np.ndarray
    scale: float

    def probs(self, embeddings: np.ndarray, lexicon: np.ndarray) -> np.ndarray:
        z = np.hstack([(embeddings - self.mu) * self.scale, lexicon]) @ self.W + self.b
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)


class EmotionClassifier:
    """Average of the heads' probabilities, in numpy."""

    def __init__(self, manifest: Manifest, heads: tuple[Head, ...]) -> None:
        self.manifest, self.heads = manifest, heads
        self.labels = manifest.labels
        self.kinds = tuple(h.kind for h in heads)
        want = (manifest.embedding_dim + manifest.lexicon_features, len(self.labels))
        for h in heads:
            if h.W.shape != want or h.b.shape != want[1:] or h.mu.shape != (manifest.embedding_dim,):
                raise ClassifierMismatch(f"head {h.kind}: W{h.W.shape} b{h.b.shape} mu{h.mu.shape} do not fit {want}")
        if self.kinds != manifest.kinds:
            raise ClassifierMismatch(f"heads {self.kinds} != manifest heads {manifest.kinds}")

    @classmethod
    def load(cls, labels: tuple[str, ...], directory: Path = WEIGHTS_DIR) -> EmotionClassifier:
        """Read the weights; refuse them unless their label order is exactly `labels` (the templates')."""
        manifest = Manifest.read(directory / "manifest.json")
        if manifest.labels != tuple(labels):
            raise ClassifierMismatch(
                f"the classifier was trained for labels {manifest.labels}, but the templates' cue labels are "
                f"{tuple(labels)}; retrain with `python -m tools.train_emotion`"
            )
        with np.load(directory / "classifier.npz") as z:
            heads = tuple(
                Head(k, z[f"{k}_W"].astype(np.float32), z[f"{k}_b"].astype(np.float32),
                     z[f"{k}_mu"].astype(np.float32), float(z[f"{k}_scale"]))
                for k in manifest.kinds
            )
        return cls(manifest, heads)

    def check_encoder(self, name: str, version: str, weights_bytes: int) -> None:
        """The weights only mean something on the encoder they were trained on."""
        m = self.manifest
        if (name, version, weights_bytes) != (m.encoder, m.encoder_version, m.encoder_weights_bytes):
            raise ClassifierMismatch(
                f"the classifier was trained on {m.encoder} {m.encoder_version} ({m.encoder_weights_bytes} bytes), "
                f"but the encoder here is {name} {version} ({weights_bytes} bytes)"
            )

    def probs(self, embeddings: dict[str, np.ndarray], lexicon: np.ndarray) -> np.ndarray:
        """(n, labels) probabilities from each view's (n, 384) embeddings and (n, 2 * labels) lexicon evidence."""
        p = np.mean([h.probs(embeddings[h.kind], lexicon) for h in self.heads], axis=0)
        return deny(p, lexicon, self.manifest.denial_penalty)


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
