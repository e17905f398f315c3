"""The emotion cue and its vocabulary; the labels come from templates/emotions.json (their one home)."""

from __future__ import annotations

from dataclasses import dataclass, field

from avatarcast.templates import load_templates

# the avatar's template set, in file order; a cue never says "listening" (the state while someone talks)
TEMPLATE_EMOTIONS: tuple[str, ...] = tuple(load_templates())
CUE_LABELS: tuple[str, ...] = tuple(e for e in TEMPLATE_EMOTIONS if e != "listening")


@dataclass(frozen=True)
class EmotionCue:
    """What the avatar should show: label, how strongly (intensity), how sure we are (confidence)."""

    label: str
    intensity: float  # 0..1, drives the template's motion amplitude
    confidence: float  # 0..1, probability of `label` after fusion
    scores: dict[str, float] = field(default_factory=dict)  # probability per cue label
    language: str = "en"
    elapsed_ms: float = 0.0
    evidence: tuple[str, ...] = ()  # matched keywords, for logs and debugging
