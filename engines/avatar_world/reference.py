"""The avatar's reference frames: the identity an engine is conditioned on."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from .avatars import get_avatar
from .motions import MotionVariation, Pose, pose_at
from .particles import EFFECTS, FX_ON, KINDS, SLOT_KINDS, STREAM_WIDTH, TURNING, EffectGeometry, Particle, particles
from .render import SS, avatar_effect_geometry, line_px, particle_picture, render_frame


def rest_pose() -> Pose:
    """Idle at t=0, neutral variation, half intensity: how a stream stands before it reacts."""
    return pose_at("idle", 0.0, MotionVariation(1.0, 1.0, 0.0), 0.5)


def reference_frame(avatar) -> np.ndarray:
    """The avatar standing at rest, RGBA uint8 (360, 640, 4): architectures 1 and 2 condition on it."""
    return render_frame(get_avatar(avatar), rest_pose())


def canonical_pose() -> Pose:
    """The rest pose with the arms held out and the feet apart: nothing in front of the torso or the legs.

    Architecture 3 (engines/tiny/motion.py) draws a frame by moving this frame's parts, and it can only
    copy what this frame shows: at rest the arms hide the torso's sides, so a raised arm would uncover
    pixels the decoder must invent.
    """
    return dataclasses.replace(
        rest_pose(), arm_l_sh=80.0, arm_l_el=0.0, arm_r_sh=80.0, arm_r_el=0.0, leg_l_hip=9.0, leg_r_hip=9.0
    )


def canonical_frame(avatar) -> np.ndarray:
    """The avatar in canonical_pose, RGBA uint8 (360, 640, 4): what architecture 3 copies from."""
    return render_frame(get_avatar(avatar), canonical_pose())


@functools.cache
def _typical(emotion: str) -> dict[str, float]:
    """The median of each face and effect field over four seconds of the emotion at full intensity: the face
    and effects the emotion holds, without its brief blinks and talking (computed once per emotion)."""
    from .skeleton import FACE_FIELDS, FX_FIELDS

    poses = [pose_at(emotion, float(t), MotionVariation(1.0, 1.0, 0.0), 1.0) for t in np.arange(0.0, 4.0, 0.05)]
    return {f: float(np.median([getattr(q, f) for q in poses])) for f in FACE_FIELDS + FX_FIELDS}


def expression_faces() -> tuple[tuple[str, dict[str, float]], ...]:
    """Each emotion's typical face fields, placed where the canonical face is (face_dx, face_dy: the face
    keypoints move it). Architecture 3's expression atlas is keyed on them."""
    from avatarcast.vocabulary import EMOTIONS

    from .skeleton import FACE_FIELDS

    canon = canonical_pose()
    out = []
    for emotion in EMOTIONS:
        face = {f: _typical(emotion)[f] for f in FACE_FIELDS}
        face["face_dx"], face["face_dy"] = canon.face_dx, canon.face_dy
        out.append((emotion, face))
    return tuple(out)


def atlas_frames(avatar) -> np.ndarray:
    """The canonical frame with each emotion's typical face (expression_faces), RGBA uint8 (K, 360, 640, 4):
    what architecture 3 copies expressions from. Outside the face they are the canonical frame. The effects
    are not in it: each particle moves on its own clock, and effect_sprites draws its pictures."""
    av = get_avatar(avatar)
    canon = canonical_pose()
    return np.stack([render_frame(av, dataclasses.replace(canon, **face)) for _, face in expression_faces()])


@dataclasses.dataclass(frozen=True)
class EffectSprites:
    """An avatar's effect particles (particles.KINDS), each drawn alone once at a ladder of sizes: what the served
    draws lay over their frames, each particle where particles.particles puts it from the frame's motion.

    crops[k]: (levels, variants, h, w, 4) uint8 straight-alpha RGBA of kind k, all in one box whose first pixel is
    boxes[k] = (row, column) of the frame; level l draws the particle at size sizes[k][l] (streams: at strength
    sizes[k][l], one level a line width); variant v with its centre at anchors[k] + offsets[v] (frame pixels x, y;
    streams: the head's centre, turned 0 degrees, and one variant). geometry: the avatar's particles.EffectGeometry
    (its head and torso where the pictures were drawn; a frame's motion moves them)."""

    kinds: tuple[str, ...]
    crops: tuple[np.ndarray, ...]
    sizes: tuple[np.ndarray, ...]
    boxes: tuple[tuple[int, int], ...]
    anchors: tuple[tuple[float, float], ...]
    offsets: tuple[tuple[float, float], ...]
    geometry: EffectGeometry


# A particle is drawn at the ladder's size nearest its own (at most half a step away: 2.5%) and scaled to its size
# when laid; its outline, a fixed width, is then off by as much (0.1 px at 4 px).
SIZE_STEP = 1.05
# Each picture drawn at these offsets of its centre (frame pixels), a quarter pixel apart: the nearest leaves at most
# an eighth of a pixel for the bilinear laying to move it (half a pixel blurs an outline as much as the renderer's
# anti-aliasing; with half-pixel offsets, a quarter left, the dev frames read 0.07-0.10 dB lower; 20 MB an avatar
# against 5)
OFFSETS: tuple[tuple[float, float], ...] = tuple((dx / 4, dy / 4) for dy in range(4) for dx in range(4))


def _sizes_seen(geo: EffectGeometry) -> dict[str, list[float]]:
    """Every size particles.particles gives each kind, over strengths from the threshold to 1 and every phase
    of the clocks (the head and torso lowered, so that none is skipped for reaching the frame's top)."""
    from .skeleton import FX_FREQUENCIES  # where used, as this module's other functions import skeleton

    low = dataclasses.replace(geo, head_c=(geo.head_c[0], geo.head_c[1] + 60.0), tc=(geo.tc[0], geo.tc[1] + 60.0))
    seen: dict[str, list[float]] = {k: [] for k in KINDS}
    for s in np.linspace(FX_ON + 1e-3, 1.0, 18):
        for c in np.arange(0.0, 1.0, 1.0 / 48):
            for p in particles(low, {e: float(s) for e in EFFECTS}, (float(c),) * len(FX_FREQUENCIES), 0.0):
                seen[p.kind].append(p.size)
    return seen


def _ladder(kind: str, sizes: list[float], head_r: float) -> np.ndarray:
    """The sizes kind's pictures are drawn at: geometric steps over what it takes; for a stream one strength a line
    width (render.line_px), the width's middle."""
    lo, hi = min(sizes), max(sizes)
    if kind in TURNING:
        per = STREAM_WIDTH * head_r * SS  # canvas pixels of width per unit of strength
        widths = range(line_px(STREAM_WIDTH * head_r * lo), line_px(STREAM_WIDTH * head_r * hi) + 1)
        return np.array([w / per for w in widths], np.float64)
    n = max(1, int(math.ceil(math.log(hi / lo) / math.log(SIZE_STEP))) + 1)
    return np.geomspace(lo, hi, n)


def effect_sprites(avatar) -> EffectSprites:
    av = get_avatar(avatar)
    base = dataclasses.replace(canonical_pose(), **{f: 0.0 for f in EFFECTS})
    geo = avatar_effect_geometry(av, base)
    seen = _sizes_seen(geo)
    hx, hy = float(round(geo.head_c[0])), float(round(geo.head_c[1]))  # every picture's centre: a whole pixel
    crops, sizes, boxes, anchors = [], [], [], []
    for kind in KINDS:
        effect = next(e for e, kinds in SLOT_KINDS.items() if kind in kinds)
        ladder = _ladder(kind, seen[kind], geo.head_r)
        offsets = OFFSETS[:1] if kind in TURNING else OFFSETS
        pictures = [[Particle(effect, 0, kind, hx + dx, hy + dy, float(z)) for dx, dy in offsets] for z in ladder]
        # the box: where the largest picture reaches, at any offset, on a canvas it cannot leave, and a pixel more
        reach = int(math.ceil(3.0 * ladder[-1] + 4.0 * geo.ol + geo.head_r + 4.0))
        x0, y0 = int(hx) - reach, int(hy) - reach
        big = np.stack([particle_picture(av, geo, p, (x0, y0, 2 * reach, 2 * reach)) for p in pictures[-1]])
        ys, xs = np.nonzero(big[..., 3].max(0))
        if len(ys) == 0:
            raise ValueError(f"{av.name}: the {kind} particle draws nothing")
        w, h = int(xs.max() - xs.min()) + 3, int(ys.max() - ys.min()) + 3
        box = (x0 + int(xs.min()) - 1, y0 + int(ys.min()) - 1, w, h)
        crops.append(np.stack([np.stack([particle_picture(av, geo, p, box) for p in row]) for row in pictures]))
        sizes.append(ladder)
        boxes.append((box[1], box[0]))
        anchors.append((hx, hy))
    return EffectSprites(KINDS, tuple(crops), tuple(sizes), tuple(boxes), tuple(anchors), OFFSETS, geo)
