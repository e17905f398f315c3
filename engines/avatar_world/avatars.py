"""Avatar descriptions for the avatar world: :class:`AvatarParams`, the built-in
cast and a deterministic parametric family (:func:`random_avatar`)."""

from __future__ import annotations

import colorsys
import numbers
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from avatarcast.vocabulary import DEFAULT_AVATAR

BODY_SHAPES: tuple[str, ...] = ("round", "tall", "pear", "square", "bean")
EYE_STYLES: tuple[str, ...] = ("dot", "round", "anime", "sleepy", "big")
HEADWEAR: tuple[str, ...] = (
    "none",
    "cat_ears",
    "bunny_ears",
    "hat",
    "cap",
    "bow",
    "antenna",
    "horns",
    "hair_spiky",
    "hair_bob",
)
ACCESSORIES: tuple[str, ...] = ("none", "scarf", "glasses", "bowtie", "backpack", "star_wand")

# Allowed ranges of the numeric proportions (1.0 = the reference character).
NUMERIC_RANGES: dict[str, tuple[float, float]] = {
    "body_width": (0.6, 1.5),
    "body_height": (0.6, 1.5),
    "head_size": (0.6, 1.4),
    "limb_length": (0.6, 1.5),
    "limb_width": (0.5, 1.6),
}
_COLOR_FIELDS = ("skin", "body_color", "accent", "outline")
_CHOICES = {"body_shape": BODY_SHAPES, "eye_style": EYE_STYLES, "headwear": HEADWEAR, "accessory": ACCESSORIES}


@dataclass(frozen=True)
class AvatarParams:
    """Everything needed to describe one avatar.  JSON-able through :meth:`to_dict`."""

    name: str
    body_shape: str = "round"
    body_width: float = 1.0
    body_height: float = 1.0
    head_size: float = 1.0
    limb_length: float = 1.0
    limb_width: float = 1.0
    skin: tuple[int, int, int] = (255, 224, 189)
    body_color: tuple[int, int, int] = (90, 160, 230)
    accent: tuple[int, int, int] = (250, 200, 60)
    outline: tuple[int, int, int] = (40, 30, 45)
    eye_style: str = "round"
    headwear: str = "none"
    accessory: str = "none"

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in _COLOR_FIELDS:
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Any) -> AvatarParams:
        if isinstance(d, AvatarParams):
            return d
        if not isinstance(d, dict):
            raise ValueError(f"AvatarParams.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown AvatarParams field(s) {unknown}; allowed: {sorted(known)}")
        if "name" not in d:
            raise ValueError("AvatarParams needs a 'name'")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if k in _COLOR_FIELDS:
                kw[k] = _color(k, v)
            elif k in NUMERIC_RANGES:
                if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                    raise ValueError(f"{k} must be a number, got {v!r}")
                kw[k] = float(v)
            else:
                kw[k] = v
        return cls(**kw)


def _color(key: str, v: Any) -> tuple[int, int, int]:
    if isinstance(v, str) and re.fullmatch(r"#?[0-9a-fA-F]{6}", v):
        h = v.lstrip("#")
        return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
    try:
        t = tuple(v)
    except TypeError:
        raise ValueError(f"{key} must be an (r, g, b) triple of ints 0..255 or '#rrggbb', got {v!r}") from None
    if len(t) != 3 or not all(
        isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= int(c) <= 255 for c in t
    ):
        raise ValueError(f"{key} must be an (r, g, b) triple of ints 0..255 or '#rrggbb', got {v!r}")
    return tuple(int(c) for c in t)  # type: ignore[return-value]


def _validate(p: AvatarParams) -> None:
    if not isinstance(p.name, str) or not p.name:
        raise ValueError(f"name must be a non-empty string, got {p.name!r}")
    for k, allowed in _CHOICES.items():
        v = getattr(p, k)
        if v not in allowed:
            raise ValueError(f"{k} must be one of {allowed}, got {v!r}")
    for k, (lo, hi) in NUMERIC_RANGES.items():
        v = getattr(p, k)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (lo <= float(v) <= hi):
            raise ValueError(f"{k} must be a number in [{lo}, {hi}], got {v!r}")
        if type(v) is not float:
            object.__setattr__(p, k, float(v))
    for k in _COLOR_FIELDS:
        v = getattr(p, k)
        if not (isinstance(v, tuple) and len(v) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in v)):
            # normalise lists / numpy ints given directly to the constructor
            object.__setattr__(p, k, _color(k, v))


BUILTIN_AVATARS: tuple[AvatarParams, ...] = (
    AvatarParams(
        name=DEFAULT_AVATAR,  # the first built-in is the one a request that names no avatar gets
        body_shape="round",
        body_width=1.1,
        body_height=0.95,
        head_size=1.0,
        limb_length=0.95,
        limb_width=1.05,
        skin=(255, 226, 190),
        body_color=(255, 165, 60),
        accent=(235, 85, 95),
        outline=(60, 35, 30),
        eye_style="round",
        headwear="cat_ears",
        accessory="scarf",
    ),
    AvatarParams(
        name="bun",
        body_shape="pear",
        body_width=1.0,
        body_height=1.0,
        head_size=1.02,
        limb_length=0.95,
        limb_width=0.95,
        skin=(255, 238, 242),
        body_color=(245, 135, 185),
        accent=(130, 90, 220),
        outline=(70, 30, 60),
        eye_style="anime",
        headwear="bunny_ears",
        accessory="bowtie",
    ),
    AvatarParams(
        name="tok",
        body_shape="square",
        body_width=1.15,
        body_height=1.0,
        head_size=0.95,
        limb_length=1.0,
        limb_width=1.15,
        skin=(200, 215, 225),
        body_color=(70, 110, 170),
        accent=(255, 90, 70),
        outline=(25, 30, 50),
        eye_style="dot",
        headwear="antenna",
        accessory="glasses",
    ),
    AvatarParams(
        name="mo",
        body_shape="tall",
        body_width=0.85,
        body_height=1.15,
        head_size=0.95,
        limb_length=1.12,
        limb_width=0.9,
        skin=(150, 100, 70),
        body_color=(80, 185, 100),
        accent=(240, 70, 60),
        outline=(30, 40, 25),
        eye_style="big",
        headwear="cap",
        accessory="backpack",
    ),
    AvatarParams(
        name="luna",
        body_shape="bean",
        body_width=1.0,
        body_height=1.05,
        head_size=1.05,
        limb_length=1.0,
        limb_width=0.95,
        skin=(250, 215, 185),
        body_color=(140, 100, 210),
        accent=(255, 215, 70),
        outline=(45, 25, 70),
        eye_style="sleepy",
        headwear="hat",
        accessory="star_wand",
    ),
    AvatarParams(
        name="kiko",
        body_shape="round",
        body_width=0.95,
        body_height=1.05,
        head_size=1.08,
        limb_length=1.05,
        limb_width=1.0,
        skin=(235, 180, 140),
        body_color=(40, 175, 180),
        accent=(40, 40, 60),
        outline=(20, 35, 40),
        eye_style="round",
        headwear="hair_spiky",
        accessory="none",
    ),
)

_BUILTIN_BY_NAME = {a.name.lower(): a for a in BUILTIN_AVATARS}

_SKIN_TONES = (
    (255, 228, 196),
    (250, 210, 175),
    (235, 180, 140),
    (200, 140, 100),
    (150, 100, 70),
    (110, 70, 50),
    (255, 240, 245),
    (210, 225, 235),
    (190, 240, 200),
    (255, 250, 220),
)


_HUES = (0.0, 0.06, 0.12, 0.3, 0.46, 0.55, 0.62, 0.72, 0.8, 0.9, 0.96)


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def random_avatar(seed: int) -> AvatarParams:
    """A member of the parametric avatar family; the same seed always gives the same avatar."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xA7A7])
    shape = BODY_SHAPES[int(rng.integers(len(BODY_SHAPES)))]
    # hue from a spread of families (uniform hue over-represents greens)
    hue = _HUES[int(rng.integers(len(_HUES)))] + float(rng.uniform(-0.03, 0.03))
    body = _hsv(hue, float(rng.uniform(0.45, 0.8)), float(rng.uniform(0.7, 0.95)))
    accent_hue = hue + float(rng.choice([0.33, 0.5, 0.62, 0.12]))
    accent = _hsv(accent_hue, float(rng.uniform(0.55, 0.9)), float(rng.uniform(0.75, 1.0)))
    outline = _hsv(hue + float(rng.uniform(-0.05, 0.05)), float(rng.uniform(0.4, 0.7)), float(rng.uniform(0.12, 0.25)))
    skin = _SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))]
    return AvatarParams(
        name=f"random-{int(seed)}",
        body_shape=shape,
        body_width=round(float(rng.uniform(0.8, 1.2)), 3),
        body_height=round(float(rng.uniform(0.85, 1.15)), 3),
        head_size=round(float(rng.uniform(0.88, 1.12)), 3),
        limb_length=round(float(rng.uniform(0.85, 1.15)), 3),
        limb_width=round(float(rng.uniform(0.8, 1.25)), 3),
        skin=skin,
        body_color=body,
        accent=accent,
        outline=outline,
        eye_style=EYE_STYLES[int(rng.integers(len(EYE_STYLES)))],
        headwear=HEADWEAR[int(rng.integers(len(HEADWEAR)))],
        accessory=ACCESSORIES[int(rng.integers(len(ACCESSORIES)))],
    )


def get_avatar(key: int | str | dict | AvatarParams) -> AvatarParams:
    """Index into BUILTIN_AVATARS, a built-in name, ``"random-<seed>"``, a params dict, or params."""
    if isinstance(key, AvatarParams):
        return key
    if isinstance(key, dict):
        return AvatarParams.from_dict(key)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        k = int(key)
        if not 0 <= k < len(BUILTIN_AVATARS):
            raise ValueError(f"built-in avatar index {k} out of range 0..{len(BUILTIN_AVATARS) - 1}")
        return BUILTIN_AVATARS[k]
    if isinstance(key, str):
        s = key.strip().lower()
        if s in _BUILTIN_BY_NAME:
            return _BUILTIN_BY_NAME[s]
        m = re.fullmatch(r"random-(-?\d+)", s)
        if m:
            return random_avatar(int(m.group(1)))
        if s.isdigit():
            return get_avatar(int(s))
        raise ValueError(f"unknown avatar {key!r}; built-ins: {sorted(_BUILTIN_BY_NAME)} or 'random-<seed>'")
    raise TypeError(f"cannot make an avatar from {type(key).__name__}")
