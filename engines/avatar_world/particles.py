"""Where each effect particle is: the one home of the effects' kinematics (issue 16).

An effect (sparkles, hearts, tears, sweat, "!", "zzz", "?", steam) is a few particles, each a small picture that
moves on its effect's clock around the head or the torso. `particles` says, for one frame, which particles are
drawn, in the renderer's order, and where: their kind, centre, size and turn. It needs only what a motion vector
carries (the head's centre and turn, the torso's centre, the face's drop, each effect's strength and each clock's
phase) and an avatar's constants (EffectGeometry), so:
- the renderer (render._draw_effects) draws each particle where this says, from its pose;
- the served draws (engines/tiny/effects.py) lay each particle's picture, drawn once per avatar, where this says
  from the motion, by the particle's own clock instead of a picture of the whole effect at a few phases of it
  (a particle moved between those phases by up to a twelfth of its path: 3-7 dB of the draw's error).
Pure math: no drawing, no numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FX_ON = 0.15  # an effect is drawn while its strength is above this
_TWO_PI = 2.0 * math.pi

# Each effect's particles, by their fixed number (`slot`, whether or not a frame draws it: a served draw lays each
# slot's pictures in the renderer's order): each one's kind. A kind's picture depends on its size alone (for
# streams, on the rounded width of their line) and, for streams alone, on the head's turn: the others are drawn
# upright wherever they are.
SLOT_KINDS: dict[str, tuple[str, ...]] = {
    "fx_sparkles": ("spark_a", "spark_b", "spark_a", "spark_b", "spark_a", "spark_b", "spark_a"),
    "fx_hearts": ("heart", "heart", "heart"),
    "fx_tears": ("stream_l", "tear", "tear", "stream_r", "tear", "tear"),
    "fx_sweat": ("sweat",),
    "fx_exclaim": ("exclaim",),
    "fx_zzz": ("z", "z", "z"),
    "fx_question": ("question",),
    "fx_steam": ("puff", "puff", "puff", "puff", "anger"),
}
EFFECTS: tuple[str, ...] = tuple(SLOT_KINDS)  # in the order they are drawn (Pose's, skeleton.FX_FIELDS's names)
KINDS: tuple[str, ...] = tuple(dict.fromkeys(k for kinds in SLOT_KINDS.values() for k in kinds))
TURNING = frozenset({"stream_l", "stream_r"})  # drawn along the head's axes: their pictures turn with it
STREAM_WIDTH = 0.1  # a tear stream's line width at strength 1, in head radii


@dataclass(frozen=True)
class EffectGeometry:
    """An avatar's constants the particles need (render._Rig's, frame pixels) and where the head and torso are."""

    g: float  # the avatar's scale
    ol: float  # the effects' outline width (render: rig.ol * 0.85)
    head_r: float
    width: int  # the frame's size: particles are kept inside it
    height: int
    ground: float  # the ground row: sparkles stay above it
    top: float  # render.effects_top: a particle that would reach above this row is not drawn
    head_c: tuple[float, float]
    head_ang: float  # degrees, as render._Rig
    tc: tuple[float, float]  # the torso's centre


@dataclass(frozen=True)
class Particle:
    """One particle of one frame: its effect's particle number `slot` (SLOT_KINDS), of `kind` (KINDS), drawn with its
    centre at (x, y) (frame pixels) at `size` (the renderer's size parameter of that kind; for streams, the effect's
    strength). A stream is drawn along the
    head's axes: (x, y) is then the head's centre, `turn` the head's angle (degrees) and `drop` how far down the
    head's y axis (head radii) its points are moved, as render._Head places them."""

    effect: str
    slot: int
    kind: str
    x: float
    y: float
    size: float
    turn: float = 0.0
    drop: float = 0.0


def _clampf(v: float, lo: float, hi: float) -> float:
    return lo if v < lo else hi if v > hi else v


def particles(
    geo: EffectGeometry, strength: dict[str, float], cycles: tuple[float, ...], face_dy: float
) -> list[Particle]:
    """The particles one frame draws, in the renderer's order. strength: fx field -> strength; cycles: each
    skeleton.FX_FREQUENCIES clock's time in cycles (fx_time * frequency; only its fraction matters); face_dy: the
    pose's face drop (tears run from under the eyes)."""
    out: list[Particle] = []
    g, ol, r = geo.g, geo.ol, geo.head_r
    hx, hy = geo.head_c
    a = math.radians(geo.head_ang)
    hc, hs = math.cos(a), math.sin(a)

    def head(x: float, y: float) -> tuple[float, float]:  # render._Head: head radii, y down -> frame pixels
        return (hx + (x * hc - y * hs) * r, hy + (x * hs + y * hc) * r)

    top_lim, width = geo.top, geo.width
    s = strength.get("fx_sparkles", 0.0)
    if s > FX_ON:
        spots = [(-1.0, -0.55), (1.05, -0.75), (-1.15, 0.15), (1.2, 0.05), (-0.75, -1.0), (0.8, -1.05), (0.05, -1.25)]
        for i, (ax, ay) in enumerate(spots):
            tw = 0.5 + 0.5 * math.sin(_TWO_PI * (cycles[0] + i * 0.37))
            size = (7.0 + 10.0 * tw) * g * (0.5 + 0.5 * s)
            if size < 5.0 * g:
                continue
            cx = _clampf(geo.tc[0] + ax * 115 * g, size + 3, width - size - 3)
            cy = _clampf(geo.tc[1] + ay * 110 * g, top_lim + size, geo.ground - size)
            out.append(Particle("fx_sparkles", i, SLOT_KINDS["fx_sparkles"][i], cx, cy, size))
    s = strength.get("fx_hearts", 0.0)
    if s > FX_ON:
        for i in range(3):
            ph = (cycles[1] + i / 3.0) % 1.0
            size = (9.0 + 7.0 * ph) * g * (0.55 + 0.45 * s) * min(1.0, (1 - ph) * 5, ph * 6 + 0.2)
            x0 = (-1.25, 1.15, 1.45)[i] * r
            cx = hx + x0 + 9 * g * math.sin(_TWO_PI * (ph * 1.5 + i * 0.3))
            cy = hy - 0.2 * r - ph * 120 * g
            if size < 4 * g or cy - size < top_lim:
                continue
            out.append(Particle("fx_hearts", i, "heart", _clampf(cx, size + 3, width - size - 3), cy, size))
    s = strength.get("fx_tears", 0.0)
    if s > FX_ON:
        fy = max(-0.25, min(0.3, face_dy))
        for sd in (-1, 1):
            out.append(
                Particle(
                    "fx_tears", 0 if sd < 0 else 3, "stream_l" if sd < 0 else "stream_r", hx, hy, s, geo.head_ang, fy
                )
            )
            for j in range(2):
                ph = (cycles[2] + j * 0.5 + (0.25 if sd > 0 else 0.0)) % 1.0
                dx, dy = head(sd * (0.5 + 0.15 * ph), 0.22 + fy + ph * 0.8)
                out.append(
                    Particle("fx_tears", (0 if sd < 0 else 3) + 1 + j, "tear", dx, dy, 0.14 * r * (0.6 + 0.4 * s))
                )
    s = strength.get("fx_sweat", 0.0)
    if s > FX_ON:
        ph = cycles[3] % 1.0
        dx, dy = head(1.02, -0.45 + 0.3 * ph)
        out.append(Particle("fx_sweat", 0, "sweat", dx, dy, 0.2 * r * (0.6 + 0.4 * s)))
    s = strength.get("fx_exclaim", 0.0)
    if s > FX_ON:
        size = 32.0 * g * (0.55 + 0.45 * s)
        cx = _clampf(hx - 1.3 * r, size + 4, width - size - 4)
        cy = max(top_lim + 0.75 * size, hy - 1.0 * r)
        out.append(Particle("fx_exclaim", 0, "exclaim", cx, cy, size))
    s = strength.get("fx_zzz", 0.0)
    if s > FX_ON:
        for i in range(3):
            ph = (cycles[4] + i / 3.0) % 1.0
            size = (7.0 + 11.0 * ph) * g * (0.6 + 0.4 * s) * min(1.0, (1 - ph) * 6, ph * 8 + 0.3)
            cx = hx + 0.75 * r + ph * 70 * g + 5 * g * math.sin(_TWO_PI * ph)
            cy = hy - 0.75 * r - ph * 85 * g
            ext = 1.3 * size + ol
            if size < 4 * g or cy - ext < top_lim:
                continue
            out.append(Particle("fx_zzz", i, "z", _clampf(cx, ext + 4, width - ext - 4), cy, size))
    s = strength.get("fx_question", 0.0)
    if s > FX_ON:
        size = 24.0 * g * (0.6 + 0.4 * s)
        cx = hx + 1.25 * r + 3 * g * math.sin(_TWO_PI * cycles[5])
        cy = max(top_lim + size * 0.8, hy - 1.1 * r + 4 * g * math.sin(_TWO_PI * cycles[2]))
        out.append(Particle("fx_question", 0, "question", _clampf(cx, size + 4, width - size - 4), cy, size))
    s = strength.get("fx_steam", 0.0)
    if s > FX_ON:
        for sd in (-1, 1):
            for j in range(2):
                ph = (cycles[6] + j * 0.5 + (0.25 if sd > 0 else 0)) % 1.0
                size = (6.0 + 9.0 * ph) * g * (0.55 + 0.45 * s) * min(1.0, (1 - ph) * 5)
                cx = hx + sd * (0.95 * r + ph * 28 * g)
                cy = hy - 0.75 * r - ph * 45 * g
                if size < 3 * g or cy - size < top_lim:
                    continue
                out.append(
                    Particle(
                        "fx_steam",
                        (0 if sd < 0 else 2) + j,
                        "puff",
                        _clampf(cx, 1.6 * size + 4, width - 1.6 * size - 4),
                        cy,
                        size,
                    )
                )
        ax, ay = head(-0.55, -0.55)  # the anger mark on the forehead
        out.append(Particle("fx_steam", 4, "anger", ax, ay, 0.13 * r * (0.6 + 0.4 * s)))
    return out


__all__ = [
    "EFFECTS",
    "FX_ON",
    "KINDS",
    "SLOT_KINDS",
    "STREAM_WIDTH",
    "TURNING",
    "EffectGeometry",
    "Particle",
    "particles",
]
