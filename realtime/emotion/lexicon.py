"""Keyword lexicon: the `keywords_en` / `keywords_zh` of templates/emotions.json, found in text.

English keywords match whole words, with plain inflections ("laugh" finds "laughed" and
"laughing"); Chinese keywords match as substrings. Both lists are searched in any text, so a
mixed sentence ("今天好happy") is read too. A longer match owns the words inside it ("miss you"
is love, not the "miss" of sad). Each hit records whether it is negated ("not happy", "不开心")
or intensified ("so tired", "超开心"): those are rules of the two languages, not emotion lists.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from avatarcast.realtime.emotion.text import has_cjk

_NEGATORS_EN = re.compile(
    r"\b(not|no|never|don'?t|doesn'?t|didn'?t|isn'?t|aren'?t|wasn'?t|won'?t|can'?t|hardly|nothing|without"
    r"|neither|nor)\b|n't\b"
)
_NEGATORS_ZH = ("不", "没", "别")
# words that hold a negator's character without negating: 特别开心 is very happy, not unhappy
_NOT_NEGATORS_ZH = re.compile(r"特别|别人|区别|分别|差别|不过|不错|差不多|不得了|没想到|非常")
_INTENSIFIERS_EN = re.compile(
    r"\b(so+|very|really|super|extremely|totally|absolutely|incredibly|too|such|utterly|deeply|completely|literally)\b"
)
_INTENSIFIERS_ZH = ("超", "非常", "好", "太", "特别", "真", "极", "十分", "巨", "超级", "简直")
_CLAUSE = re.compile(r"[,.;:!?，。；：！？、]|\bbut\b|\bjust\b")
# laughter and sleep sounds are spelled with any number of repeats: fold them before matching
_REPEATS = (
    (re.compile(r"(?:ha){2,}h?|a?(?:ha){1,}ha"), "haha"),
    (re.compile(r"(?:he){2,}h?"), "hehe"),
    (re.compile(r"\blo+l\b"), "lol"),
    (re.compile(r"\blma+o+\b"), "lmao"),
    (re.compile(r"\bz{3,}\b"), "zzz"),
    (re.compile(r"哈{2,}"), "哈哈"),
    (re.compile(r"呜{2,}"), "呜呜"),
    (re.compile(r"23{3,}"), "233"),
)


@dataclass(frozen=True)
class Hit:
    """One keyword found in the text."""

    label: str
    term: str
    start: int
    negated: bool
    intensified: bool


def _english_pattern(term: str) -> re.Pattern[str]:
    words = []
    for w in term.lower().split():
        w = re.escape(w).replace("'", "'?")
        if re.fullmatch(r"[a-z]{3,}", w):
            # plain inflections: laugh(s|ed|ing), smil(ing), cr(ied), happ(ily)
            stem = w[:-1] if w.endswith(("e", "y")) else w
            w = f"(?:{w}(?:s|es|ed|d|ing|ly|er)?|{stem}(?:ing|ies|ied|ily|ed|es))"
        words.append(w)
    lead = r"(?<![\w'])" if term[:1].isalnum() else ""
    tail = r"(?![\w'])" if term[-1:].isalnum() else ""
    return re.compile(lead + r"\s+".join(words) + tail)


def fold(text: str) -> str:
    """Lowercase, straight apostrophes, repeated laughter folded ("hahahaha" -> "haha")."""
    text = text.lower().replace("\u2019", "'")
    for pat, rep in _REPEATS:
        text = pat.sub(rep, text)
    return text


class Lexicon:
    """Finds the keywords of each cue label in a text and sums them into per-label evidence."""

    def __init__(self, keywords: Mapping[str, Iterable[str]], labels: tuple[str, ...]) -> None:
        self.labels = labels
        self._terms: list[tuple[str, str, re.Pattern[str] | None]] = []
        for label, terms in keywords.items():
            if label not in labels:
                raise ValueError(f"keywords for {label!r}, which is not a cue label {labels}")
            for t in terms:
                t = fold(t.strip())
                if t:
                    self._terms.append((label, t, None if has_cjk(t) or not t.isascii() else _english_pattern(t)))

    @classmethod
    def from_templates(cls, templates: Mapping[str, object], labels: tuple[str, ...]) -> Lexicon:
        """keywords_en + keywords_zh of each template that is a cue label."""
        kw = {
            n: (*t.keywords_en, *t.keywords_zh)  # type: ignore[attr-defined]
            for n, t in templates.items()
            if n in labels
        }
        return cls(kw, labels)

    def terms(self, label: str) -> set[str]:
        """The folded keywords of one label, as `Hit.term` spells them."""
        return {t for lab, t, _ in self._terms if lab == label}

    def hits(self, text: str) -> list[Hit]:
        """Keyword hits in reading order; text should be normalized (simplified Chinese) already."""
        norm = fold(text)
        cands: list[tuple[int, int, str, str]] = []
        for label, term, pat in self._terms:
            if pat is None:
                start = norm.find(term)
                while start >= 0:
                    cands.append((start, start + len(term), label, term))
                    start = norm.find(term, start + 1)
            else:
                cands.extend((m.start(), m.end(), label, term) for m in pat.finditer(norm))
        cands.sort(key=lambda c: (-(c[1] - c[0]), c[0]))  # longest first: a phrase owns its words
        taken = np.zeros(len(norm) + 1, dtype=bool)
        out: list[Hit] = []
        for start, end, label, term in cands:
            if taken[start:end].any():
                # the same span may count for two labels ("wow" is excited and surprised): only
                # a longer, different span takes it away
                if not any(h.start == start and h.term == term for h in out):
                    continue
            taken[start:end] = True
            out.append(Hit(label, term, start, _negated(norm, start, term), _intensified(norm, start)))
        return sorted(out, key=lambda h: h.start)

    def features(self, hits: list[Hit]) -> np.ndarray:
        """(2 * labels,) evidence: plain hits per label (intensified count 1.5), then negated hits."""
        k = len(self.labels)
        f = np.zeros(2 * k, dtype=np.float32)
        for h in hits:
            i = self.labels.index(h.label)
            if h.negated:
                f[k + i] += 1.0
            else:
                f[i] += 1.5 if h.intensified else 1.0
        return np.minimum(f, 3.0)  # a fourth "haha" says nothing new


def _negated(norm: str, start: int, term: str) -> bool:
    if has_cjk(term[:1]):
        if norm[max(0, start - 1 - len(term)) : start] in (term + "不", term + "没"):
            return False  # "烦不烦", "好没好": an A-not-A question, not a denial
        if term[:1] in _NEGATORS_ZH:
            return False  # the keyword carries its own negation ("不懂", "没想到")
        before = _NOT_NEGATORS_ZH.sub("", _CLAUSE.split(norm[max(0, start - 4) : start])[-1])
        return any(n in before for n in _NEGATORS_ZH)
    words = _CLAUSE.split(norm[:start])[-1].split()[-3:]
    m = _NEGATORS_EN.search(" ".join(words))
    if m is None or term.startswith(("don't", "no ", "not ", "can't", "didn't", "couldn't", "barely")):
        return False
    # "can't stop laughing", "couldn't help smiling": a double negative that insists
    return not re.search(r"\b(stop|help|quit|resist)\b", " ".join(words)[m.end() :])


def _intensified(norm: str, start: int) -> bool:
    before = norm[max(0, start - 12) : start]
    if before and has_cjk(before[-1:]):
        return any(i in before[-3:] for i in _INTENSIFIERS_ZH)
    return bool(_INTENSIFIERS_EN.search(" ".join(before.split()[-2:])))
