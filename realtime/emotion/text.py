"""Text before anything reads it: trimmed, and Chinese in simplified characters.

Whisper writes Mandarin in traditional characters (什麼，你竟然一個人做完了); the encoder,
the classifier and the keyword lexicon all learned simplified text, so traditional text is
converted with OpenCC first. Its `t2s` table leaves simplified text as it is (the `tw2s*`
tables do not: they turn 么么哒 into 幺幺哒), so it is safe on any input.
"""

from __future__ import annotations

import re
from functools import lru_cache

import opencc  # the C++ library and its dictionaries ship in the wheel

# The Chinese characters the reader knows (CJK Extension A, Unified Ideographs, Compatibility):
# one home for the range that the language test, the n-grams and the punctuation strip share.
CJK_RANGE = "\u3400-\u9fff\uf900-\ufaff"
CJK = re.compile(f"[{CJK_RANGE}]")


def has_cjk(text: str) -> bool:
    """True if the text holds a Chinese character."""
    return CJK.search(text) is not None


@lru_cache(maxsize=1)
def _converter():
    return opencc.OpenCC("t2s")


def normalize(text: str) -> str:
    """Strip, collapse whitespace, and convert traditional Chinese to simplified (a no-op on English)."""
    text = " ".join((text or "").split())
    if has_cjk(text):
        text = _converter().convert(text)
    return text


def language_of(text: str) -> str:
    """'zh' when the text has Chinese characters, else 'en' (the two languages the reader knows)."""
    return "zh" if has_cjk(text) else "en"
