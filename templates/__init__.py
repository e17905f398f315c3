"""Emotion templates: what each reaction is (prompt, keywords, motion, intensity, timing).

The data lives in emotions.json next to this file; `avatarcast.templates.cache.LatentsCache` turns it
into ready-to-play first chunks per avatar.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

DEFAULT_PATH = Path(__file__).with_name("emotions.json")

# `variants` says how many to precompute, `hold_seconds` how long to play, and the keywords feed
# the emotion reader's lexicon: none changes what a cached reaction looks like, so editing them
# must not throw the whole cache away.
_NOT_HASHED = frozenset({"variants", "hold_seconds", "keywords_en", "keywords_zh"})


@dataclass(frozen=True)
class EmotionTemplate:
    """One emotion's definition, as the server, the engines and the docs see it."""

    name: str
    prompt: str
    keywords_en: tuple[str, ...]
    keywords_zh: tuple[str, ...]
    motion: str
    intensity_range: tuple[float, float]
    default_intensity: float
    variants: int
    hold_seconds: float


def template_hash(t: EmotionTemplate) -> str:
    """A short hash of everything in the template that shapes the generated reaction."""
    d = {k: v for k, v in asdict(t).items() if k not in _NOT_HASHED}
    blob = json.dumps(d, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_templates(path: str | Path | None = None) -> dict[str, EmotionTemplate]:
    """Reads and validates a templates file; returns {name: template} in file order."""
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    items = doc.get("emotions") if isinstance(doc, dict) else doc
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected {{'emotions': [...]}} with at least one template")
    out: dict[str, EmotionTemplate] = {}
    for i, raw in enumerate(items):
        t = parse_template(raw, where=f"{path}: emotions[{i}]")
        if t.name in out:
            raise ValueError(f"{path}: emotions[{i}]: duplicate name {t.name!r}")
        out[t.name] = t
    return out


def parse_template(raw: object, where: str = "template") -> EmotionTemplate:
    """One template from its JSON dict; a ValueError names the bad field."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
    names = [f.name for f in fields(EmotionTemplate)]
    if isinstance(raw.get("name"), str):
        where = f"{where} ({raw['name']!r})"
    missing = [n for n in names if n not in raw]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")

    def text(field: str) -> str:
        v = raw[field]
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"{where}: {field} must be a non-empty string, got {v!r}")
        return v.strip()

    def words(field: str) -> tuple[str, ...]:
        v = raw[field]
        if not isinstance(v, list) or not v or not all(isinstance(w, str) and w.strip() for w in v):
            raise ValueError(f"{where}: {field} must be a non-empty list of non-empty strings, got {v!r}")
        return tuple(w.strip() for w in v)

    def number(field: str, lo: float, hi: float, v: object = None) -> float:
        v = raw[field] if v is None else v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise ValueError(f"{where}: {field} must be a number in [{lo}, {hi}], got {v!r}")
        return float(v)

    rng = raw["intensity_range"]
    if not isinstance(rng, list) or len(rng) != 2:
        raise ValueError(f"{where}: intensity_range must be [lo, hi], got {rng!r}")
    lo = number("intensity_range", 0.0, 1.0, rng[0])
    hi = number("intensity_range", 0.0, 1.0, rng[1])
    if lo > hi:
        raise ValueError(f"{where}: intensity_range must have lo <= hi, got {rng!r}")
    default = number("default_intensity", lo, hi)
    variants = raw["variants"]
    if isinstance(variants, bool) or not isinstance(variants, int) or not 1 <= variants <= 64:
        raise ValueError(f"{where}: variants must be an integer in [1, 64], got {variants!r}")
    name = text("name")
    if name != name.lower() or not name.replace("_", "").isalnum():
        raise ValueError(f"{where}: name must be a lowercase identifier, got {name!r}")
    return EmotionTemplate(
        name=name,
        prompt=text("prompt"),
        keywords_en=words("keywords_en"),
        keywords_zh=words("keywords_zh"),
        motion=text("motion"),
        intensity_range=(lo, hi),
        default_intensity=default,
        variants=variants,
        hold_seconds=number("hold_seconds", 0.0, 60.0),
    )


__all__ = ["DEFAULT_PATH", "EmotionTemplate", "load_templates", "parse_template", "template_hash"]
