"""The live partial policy (realtime/emotion/partial.py) with a scripted reader: the hold, what is read, and the
training fit's vectorized hold (tools/train_emotion.py) agreeing with the tracker partial by partial."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from avatarcast.realtime.emotion import CUE_LABELS, EmotionCue
from avatarcast.realtime.emotion.classifier import PartialPolicy
from avatarcast.realtime.emotion.partial import MIN_UNITS, PartialTracker, first_read, open_ended, units
from tools.train_emotion import LiveCases, held_units


@dataclass
class Scripted:
    """A reader whose cue for a partial is the label scripted for its number of words."""

    labels: dict[int, str]
    policy: PartialPolicy
    confidence: float = 0.95
    reads: list[int] = field(default_factory=list)

    @property
    def partial(self) -> dict[str, PartialPolicy]:
        return {"en": self.policy, "zh": self.policy}

    def read(self, text: str) -> EmotionCue:
        n = units(text)
        self.reads.append(n)
        return EmotionCue(label=self.labels.get(n, "idle"), intensity=0.5, confidence=self.confidence)

    def backed(self, cue: EmotionCue) -> bool:
        return False


def policy(hold: int, min_units: int = 4, min_confidence: float = 0.9) -> PartialPolicy:
    return PartialPolicy(min_confidence, min_units, min_confidence, min_units, hold)


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def first_decision(reader: Scripted, upto: int = 12) -> int | None:
    tracker = PartialTracker(reader)
    for n in range(1, upto + 1):
        if tracker.feed(words(n)) is not None:
            return n
    return None


def test_without_a_hold_the_first_partial_that_passes_decides() -> None:
    r = Scripted({n: "happy" for n in range(1, 13)}, policy(hold=0))
    assert first_decision(r) == 4
    assert min(r.reads) == 4  # shorter partials are not read: they could not decide


def test_a_hold_waits_until_the_label_has_held_that_many_words() -> None:
    r = Scripted({n: "happy" for n in range(1, 13)}, policy(hold=2))
    assert first_decision(r) == 4  # read from 2 words: happy has held 2 words by the 4th
    assert min(r.reads) == first_read(policy(hold=2)) == 2
    # the label changes at 4 words, long enough to decide but new: it must hold 2 words from there
    r = Scripted({**{n: "sad" for n in range(1, 4)}, **{n: "happy" for n in range(4, 13)}}, policy(hold=2))
    assert first_decision(r) == 6
    # never stable long enough: no early decision
    r = Scripted({n: ("happy" if n % 2 else "sad") for n in range(1, 13)}, policy(hold=1))
    assert first_decision(r) is None


def test_open_ended_partials_are_not_read_and_do_not_break_a_run() -> None:
    assert open_ended("I am not") and open_ended("我不") and not open_ended("I am not.")
    r = Scripted({n: "happy" for n in range(1, 13)}, policy(hold=3))
    tracker = PartialTracker(r)
    for text in ("w0 w1", "w0 w1 so", "w0 w1 so w3"):
        assert tracker.feed(text) is None
    assert r.reads == [2, 4]  # "... so" waits for its next word, unread
    assert tracker.feed("w0 w1 so w3 w4") is not None  # happy since 2 words, 5 now


def test_training_hold_matches_the_tracker() -> None:
    """The fit's vectorized hold (LiveCases.first_shown) decides at the same partial as PartialTracker, over random
    label sequences and policies."""
    rng = random.Random(7)
    for _ in range(200):
        hold, mu = rng.randint(0, 4), rng.randint(MIN_UNITS, 6)
        p = policy(hold, mu, 0.9)
        n = rng.randint(3, 14)
        seq = {k: rng.choice(["happy", "sad", "idle"]) for k in range(MIN_UNITS, n + 1)}
        conf = {k: rng.choice([0.7, 0.95]) for k in seq}
        tracker_at = None
        tracker = PartialTracker(Scripted(seq, p))
        for k in range(1, n + 1):
            tracker.reader.confidence = conf.get(k, 0.95)  # type: ignore[attr-defined]
            if tracker.feed(words(k)) is not None:
                tracker_at = k
                break
        ks = np.array(sorted(seq))
        lab = np.array([CUE_LABELS.index(seq[k]) for k in ks])
        prob = np.array([conf[k] for k in ks])
        cases = LiveCases(
            gold=np.zeros(1, np.int64),
            full=np.zeros(1, np.int64),
            lang=np.array(["en"]),
            fold=np.zeros(1, np.int64),
            case=np.zeros(len(ks), np.int64),
            units=ks,
            label=lab,
            prob=prob,
            backed=np.zeros(len(ks), bool),
            may=(lab != CUE_LABELS.index("idle")) & (prob >= 0.6),
        )
        d = {k: getattr(p, k) for k in p.__dataclass_fields__}
        shown, early = cases.first_shown(d)
        assert bool(early[0]) == (tracker_at is not None), (seq, conf, p)
        if tracker_at is not None:
            assert shown[0] == CUE_LABELS.index(seq[tracker_at])


def test_held_units_counts_from_the_runs_first_read_row() -> None:
    case = np.array([0, 0, 0, 0, 1, 1])
    label = np.array([1, 1, 2, 2, 2, 2])
    n = np.array([2, 3, 4, 6, 2, 5])
    read = np.array([True, True, True, True, False, True])
    assert held_units(case, label, n, read).tolist() == [0, 1, 0, 2, 0, 0]
