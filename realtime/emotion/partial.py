"""When a live partial transcript may decide the emotion, before the person stops talking.

A partial decides on enough words (English) or characters (Chinese), enough confidence (less of both when a
keyword of the label backs it), an end that cannot still turn ("I'm not", "我不" wait) and, when the language's
policy asks for a hold, a label that has stayed the same over the last `hold_units` words / characters of the
utterance's partials. `decides` is the rule for one partial; `PartialTracker` follows one utterance's partials
and adds the hold. The policy is fitted per language with the weights (tools/train_emotion.py), on every word /
character of the training lines read out of fold, as tools/eval_emotion.py feeds the held-out lines.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol

from avatarcast.realtime.emotion.classifier import PartialPolicy
from avatarcast.realtime.emotion.cue import EmotionCue
from avatarcast.realtime.emotion.text import CJK_RANGE, language_of, normalize

MIN_UNITS = 2  # no partial of fewer words / characters is read (training's prefixes start here too)
# a partial that ends on one of these may still turn around ("I'm not ...", "我不 ...", "I am so ...")
_OPEN_END_EN = re.compile(
    r"\b(not|no|never|don'?t|doesn'?t|didn'?t|isn'?t|wasn'?t|can'?t|won'?t|so|very|really|too|super|but|and|because)$"
)
_OPEN_END_ZH = ("不", "没", "别", "好", "太", "超", "很", "真", "但是", "可是", "因为", "不是")
_WORD = re.compile(r"[\w']+")
_PUNCT_ZH = re.compile(f"[^{CJK_RANGE}A-Za-z0-9]")


class Reader(Protocol):
    """What the tracker needs of EmotionReader."""

    @property
    def partial(self) -> Mapping[str, PartialPolicy]: ...  # the policy per language

    def read(self, text: str) -> EmotionCue: ...

    def backed(self, cue: EmotionCue) -> bool: ...


def units(norm: str) -> int:
    """English words, or Chinese characters (letters and digits count too) when there are any."""
    if language_of(norm) == "zh":
        return len(_PUNCT_ZH.sub("", norm))
    return len(_WORD.findall(norm))


def open_ended(norm: str) -> bool:
    """A partial whose last word may still turn it ("I'm not", "我不"): it is not read."""
    tail = norm.rstrip(" ,，、")
    if tail != tail.rstrip(".!?。！？…"):
        return False  # a sentence that ended is not waiting for its next word
    return bool(_OPEN_END_EN.search(tail.lower())) or tail.endswith(_OPEN_END_ZH)


def first_read(policy: PartialPolicy) -> int:
    """The fewest units a partial needs to be read: what may decide, or, with a hold, as many units sooner, so
    that the label can have held by the time the partial is long enough to decide."""
    least = min(policy.min_units, policy.min_units_keyword)
    return max(MIN_UNITS, least - policy.hold_units) if policy.hold_units else least


def decides(policy: PartialPolicy, cue: EmotionCue, n_units: int, backed: bool, min_confidence: float) -> bool:
    """One partial's own test (the hold aside): not idle, over the caller's floor, and enough units and
    confidence, or fewer of both when a keyword of the label (not negated) backs the cue."""
    if cue.label == "idle" or cue.confidence < min_confidence:
        return False
    if backed and n_units >= policy.min_units_keyword and cue.confidence >= policy.min_confidence_keyword:
        return True
    return n_units >= policy.min_units and cue.confidence >= policy.min_confidence


class PartialTracker:
    """One utterance's partial transcripts, in the order they came: `feed` returns a cue when the latest
    partial decides, else None. Not thread-safe: one tracker per utterance, fed in order."""

    def __init__(self, reader: Reader, min_confidence: float = 0.6) -> None:
        self.reader, self.min_confidence = reader, min_confidence
        self._label: str | None = None  # the top label of the partials read lately...
        self._since = 0  # ...since this many units

    def feed(self, text: str) -> EmotionCue | None:
        norm = normalize(text)
        if not norm or open_ended(norm):
            return None  # not read: the label's run goes on
        policy = self.reader.partial[language_of(norm)]
        n = units(norm)
        if n < first_read(policy):
            return None
        cue = self.reader.read(norm)
        if cue.label != self._label:
            self._label, self._since = cue.label, n
        if n - self._since < policy.hold_units:
            return None
        return cue if decides(policy, cue, n, self.reader.backed(cue), self.min_confidence) else None
