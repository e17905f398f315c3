"""The avatar cut into layers: what the cut-out draw (engines/tiny/cutout.py) moves, drawn once per avatar.

render_frame draws a frame as a list of steps on one canvas (shadow, legs, torso, head, face, arms, ...). Here each
step of the canonical pose is drawn on its own canvas, and each limb's polyline is cut at its joint into two segments
whose outlines and fills are separate layers (a polyline's outline goes under both its segments' fills). Moved by
its part's rigid map (skeleton.PARTS, from the motion's keypoints) and laid over one another in this order, the
layers give the avatar at the motion's pose with nothing to infer: every pixel the parts in front hide in the
canonical pose (the torso under a lowered arm) is in its own layer.

Layers are drawn at CUTOUT_SCALE times the frame's size (the renderer's own supersampling is on top): moving a
finer picture and box-filtering it down blurs the strokes less than moving the frame itself.

Like the canonical frame and the expression atlas (reference.py), the layers are the avatar's reference, drawn by the
renderer when an avatar is prepared; serving never draws a frame with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from avatarcast.vocabulary import FRAME_HEIGHT, FRAME_WIDTH

from . import render as R
from .avatars import get_avatar
from .motions import MotionVariation, Pose, pose_at
from .reference import canonical_pose, expression_faces
from .skeleton import FACE_FIELDS

CUTOUT_SCALE = 2
FACE = "face:"  # the face's layers: FACE + each of render.FACE_STEPS, a picture per atlas face (face_atlas)
EYE = "@"  # face:<step>@<side>: an eye's or a brow's layer, one side (-1: screen left, 1: right)
SKIN = ("head_back", "head")  # layers in the skin's colour, which the pose's face_red reddens (reddened)
AT = "at:"  # a mover "at:<keypoint>": moved with that keypoint alone (a translation: the shoe, the hand)
PAIR = "pair:"  # a mover "pair:<a>,<b>": the similarity taking two points to theirs (the wand's stick)
# a mover "bone:<a>,<b>,<limb>": a limb segment from point a to b, stretched as render._ik stretches a reaching limb:
# its round ends (bone_caps' radius for "leg" or "arm") move with a and b, the straight part between lengthens, and
# its width stays (a similarity would thicken a stretched limb)
BONE = "bone:"
# a mover "neck:" or "neck:wide": the neck's accessory (bowtie, scarf), turned with the torso and moved with its top
# (render.neck_offset) but not squashed with it, as render draws it at a fixed size; "wide": its width follows the
# torso's (a scarf spans it). The torso's affine map squashed and stretched them with the torso (a dancing bowtie)
NECK = "neck:"
HAT_STAR = "hat_star"  # nor this: the wizard hat's star, render.HAT_STAR_AT on the head (from its keypoints)
WAND_TIP = "wand_tip"  # a point the motion does not hold: where render._wand_tip puts it, from the right forearm

Step = Callable[[R._Painter, R._Rig, R._Head], None]


@dataclass(frozen=True)
class Layer:
    """One step of the drawing, premultiplied float32 (h, w, 4) in [0, 1], cropped to where it is not transparent;
    (row, column) of its first pixel in the frame at `scale` times the frame's size."""

    name: str
    mover: str  # a skeleton.PARTS name, AT + a point, PAIR + two points, or BONE + a limb segment (module constants)
    row: int
    col: int
    pixels: np.ndarray
    scale: int


def steps(avatar, pose: Pose, k: float) -> list[tuple[str, str, Step]]:
    """(name, mover, step) in render_frame's order; the limbs' polylines cut at the joints. k: the frame's height
    over the renderer's reference height (render_frame's k)."""
    av = get_avatar(avatar)
    skin, body, limb, legc, shoe = R._palette(av, pose)
    out: list[tuple[str, str, Step]] = [("shadow", "ground", lambda pt, rig, H: R._draw_shadow(pt, rig, k))]
    if av.accessory == "backpack":
        out.append(("backpack", "torso", lambda pt, rig, H: R._draw_backpack_back(pt, av, rig)))
    out.append(("head_back", "head", lambda pt, rig, H: R._draw_head_back(pt, av, rig, H, skin)))

    for i, sd in ((0, "l"), (1, "r")):
        out += _limb(i, sd, ("thigh", "shin"), ("hips", "knees", "ankles"), ("hip", "knee", "ankle"), legc, "leg")
        out.append((f"foot_{sd}", f"{AT}ankle_{sd}", _foot(i, shoe)))
    out += [
        ("torso", "torso", lambda pt, rig, H: R._draw_torso(pt, av, rig, body)),
        ("accessory", _accessory_mover(av.accessory), lambda pt, rig, H: R._draw_accessory_front(pt, av, rig)),
        ("head", "head", lambda pt, rig, H: R._draw_head(pt, av, rig, pose, H, skin)),
    ]
    for step in R.FACE_STEPS:  # the eyes and brows one side a layer: each eye opens and grows about its own centre,
        if step in R._SIDED_STEPS:  # each brow rises on its own
            out += [(f"{FACE}{step}{EYE}{sd}", "face", _eye_step(step, sd, av, pose, skin)) for sd in (-1, 1)]
        else:
            out.append((FACE + step, "face", _face_step(step, av, pose, skin)))
    out += [("head_front", "head", lambda pt, rig, H: R._draw_head_front(pt, av, rig, H, star=False))]
    if av.headwear == "hat":  # its star stays upright as the head turns (as render draws it)
        out.append(("hat_star", f"{AT}{HAT_STAR}", lambda pt, rig, H: R._draw_hat_star(pt, av, rig, H)))
    for i, sd in ((0, "l"), (1, "r")):
        names, joints = ("upper_arm", "forearm"), ("shoulders", "elbows", "hands")
        out += _limb(i, sd, names, joints, ("shoulder", "elbow", "hand"), limb, "arm")
        out.append((f"hand_{sd}", f"{AT}hand_{sd}", _hand(i, av.skin)))
    if av.accessory == "star_wand":  # the stick turns with the forearm, the star stays upright (render._wand_tip)
        out.append(("wand_stick", f"{PAIR}hand_r,{WAND_TIP}", lambda pt, rig, H: R._draw_wand(pt, av, rig, "stick")))
        out.append(("wand_star", f"{AT}{WAND_TIP}", lambda pt, rig, H: R._draw_wand(pt, av, rig, "star")))
    return out


def _accessory_mover(accessory: str) -> str:
    """How the accessory in front of the torso moves: the backpack's straps with the torso (they span it), the
    scarf and the bowtie with the neck."""
    return "torso" if accessory == "backpack" else NECK + ("wide" if accessory == "scarf" else "")


def _limb(
    i: int, sd: str, names: tuple[str, str], joints: tuple[str, str, str], points: tuple[str, str, str], col, kind: str
) -> list[tuple[str, str, Step]]:
    """A limb's polyline (rig joints, e.g. hips -> knees -> ankles; keypoints hip_l, ...) cut at its middle joint:
    both segments' outlines, then both fills, each segment a BONE that stretches."""
    bones = [f"{BONE}{points[j]}_{sd},{points[j + 1]}_{sd},{kind}" for j in (0, 1)]

    def segment(j: int, outline: bool) -> Step:
        def step(pt: R._Painter, rig: R._Rig, H: R._Head) -> None:
            w = getattr(rig, f"{kind}_w") + (2.0 * rig.ol if outline else 0.0)
            pt.line([getattr(rig, joints[j])[i], getattr(rig, joints[j + 1])[i]], pt.ol if outline else col, w)

        return step

    outlines = [(f"{names[j]}_outline_{sd}", bones[j], segment(j, True)) for j in (0, 1)]
    return outlines + [(f"{names[j]}_{sd}", bones[j], segment(j, False)) for j in (0, 1)]


def _foot(i: int, shoe) -> Step:
    return lambda pt, rig, H: R._draw_foot(pt, rig, i, shoe)


def _hand(i: int, skin) -> Step:
    return lambda pt, rig, H: R._draw_hand(pt, rig, i, skin)


def _eye_step(step: str, sd: int, av, pose: Pose, skin) -> Step:
    return lambda pt, rig, H: R._draw_face_side(step, pt, av, pose, H, skin, sd)


def _face_step(step: str, av, pose: Pose, skin) -> Step:
    return lambda pt, rig, H: R._draw_face_step(step, pt, av, pose, H, skin)


def _draw(avatar, pose: Pose, names: set[str] | None, scale: int, head_only: bool = False) -> list[Layer]:
    """Each step (or those in `names`) drawn alone, at `scale` times the frame's size, box-filtered from the renderer's
    supersampling (SS: a canvas CUTOUT_SCALE * SS times the frame's). (The renderer's own canvas, its raster before
    the box filter, composes to render_frame's frame to the bit unmoved, but moved and sampled it drew the dev frames
    0.1-0.2 dB worse when SS was 2: its edges are aliased.)"""
    av = get_avatar(avatar)
    width, height = FRAME_WIDTH * scale, FRAME_HEIGHT * scale
    rig = R._rig(av, pose, width, height)
    H = R._Head(rig)
    x0, x1 = R._band(rig, width, height)
    y0, y1 = 0, height
    if head_only:  # the face's steps: a canvas around the head (a fraction of the band's pixels)
        (cx, cy), reach = rig.head_c, 1.6 * rig.head_r
        x0, x1 = max(x0, int(cx - reach)), min(x1, int(cx + reach) + 1)
        y0, y1 = max(0, int(cy - reach)), min(height, int(cy + reach) + 1)
    out = []
    ss = R.SS
    img = Image.new("RGBa", ((x1 - x0) * ss, (y1 - y0) * ss), (0, 0, 0, 0))  # one canvas, cleared after each step
    for name, mover, step in steps(av, pose, height / R.REF_H):
        if names is not None and name not in names:
            continue
        step(R._Painter(img, ss, x0, y0, av.outline), rig, H)
        drawn = img.getbbox()
        if drawn is None:  # a step that draws nothing for this avatar (no accessory in front)
            continue
        # the box filter on the premultiplied canvas, as render_frame's _finish, kept premultiplied; only over the
        # pixels the step drew, its box grown to whole SS x SS blocks (the same blocks as the whole canvas's: the
        # same values; filtering every step's whole canvas was half of an avatar's preparation)
        bl, bt = drawn[0] // ss * ss, drawn[1] // ss * ss
        br, bb = -(-drawn[2] // ss) * ss, -(-drawn[3] // ss) * ss
        box = img.crop((bl, bt, br, bb))
        img.paste((0, 0, 0, 0), (bl, bt, br, bb))  # every pixel drawn is in that box: the canvas is clear again
        px = np.asarray(box.reduce(ss) if ss > 1 else box, np.float32) / 255.0
        rows, cols = np.nonzero(px[..., 3] > 0)
        if len(rows) == 0:
            continue
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        top, left = y0 + bt // ss, x0 + bl // ss
        out.append(Layer(name, mover, int(r0 + top), int(c0 + left), np.ascontiguousarray(px[r0:r1, c0:c1]), scale))
    return out


def cutout_layers(avatar, scale: int = CUTOUT_SCALE) -> list[Layer]:
    """The avatar's layers in canonical_pose, in drawing order (its canonical face's steps among them)."""
    return _draw(avatar, canonical_pose(), None, scale)


def atlas_poses() -> list[Pose]:
    """The poses whose faces the cut-out draw picks from: the canonical face, each emotion's typical one
    (reference.expression_faces, architecture 3's atlas), and each of those blinking (eyes shut)."""
    canon = canonical_pose()
    faces = [{f: getattr(canon, f) for f in FACE_FIELDS}] + [dict(face) for _, face in expression_faces()]
    faces += [{**face, "eye_open": 0.0} for face in faces]
    return [dataclasses.replace(canon, **face) for face in faces]


# The face fields each face step's picture depends on (render's face steps; the eyes' pupils, lids and glasses are
# picked with the eyes). The cut-out draw picks each step's picture from the atlas pose nearest in these.
PICK_FIELDS: dict[str, tuple[str, ...]] = {
    "blush": ("blush", "face_red"),
    # face_red: a sleepy eye's lid is drawn in the skin's colour, which reddens (an angry face's lids on a sad one
    # were red bars)
    "eyes": ("eye_open", "eye_scale", "eye_curve", "eye_heart", "mouth_smile", "face_red"),
    "brows": ("brow_angle", "eye_scale"),  # their height is moved to the motion's (render.brow_lift)
    "mouth": ("mouth_open", "mouth_smile", "mouth_width", "mouth_wavy", "mouth_teeth"),
}
WITH_EYES = ("pupils", "lids", "glasses")  # steps drawn, and picked, with the eyes
# Face steps that get more atlas poses of their own (step_poses), and how many an emotion
MORE_POSES: tuple[str, ...] = ("eyes", "mouth", "brows")
POSES_PER_EMOTION = 16


def pick_group(step: str) -> str:
    """The PICK_FIELDS entry a face step (without its side) is picked by."""
    return "eyes" if step in WITH_EYES else step


def step_poses(group: str, per_emotion: int = POSES_PER_EMOTION) -> list[Pose]:
    """More faces for the cut-out draw to pick one step group's pictures from (drawn for that group alone). An
    emotion's mouth opens and closes as it talks, laughs or gasps (surprised: open 0.15-1.0, as wide as 0.5-1.0), its
    eyes widen with its intensity, and between emotions and intensities faces pass through fields no typical face has
    (the dev frames' surprised heads: 22 dB with the typical faces alone). For each emotion, `per_emotion` of the
    values of the group's PICK_FIELDS its motion takes (four seconds, three intensities, the neutral variation),
    spread over them (farthest point first, from the typical one; each field scaled by its spread over every
    emotion's), on that emotion's typical face."""
    fields = PICK_FIELDS[group]
    canon = canonical_pose()
    neutral = MotionVariation(1.0, 1.0, 0.0)
    seen = {
        emotion: np.array(
            [
                [getattr(q, f) for f in fields]
                for q in (
                    pose_at(emotion, float(t), neutral, k) for t in np.arange(0.0, 4.0, 0.1) for k in (0.5, 0.75, 1.0)
                )
            ]
        )
        for emotion, _ in expression_faces()
    }
    scale = np.maximum(np.concatenate(list(seen.values())).std(0), 0.05)
    out = []
    for emotion, face in expression_faces():
        pts = seen[emotion] / scale
        typical = np.array([face[f] for f in fields]) / scale
        chosen = [int(np.argmin(((pts - typical) ** 2).sum(1)))]
        far = ((pts - pts[chosen[0]]) ** 2).sum(1)
        while len(chosen) < per_emotion and far.max() > 1e-6:
            chosen.append(int(np.argmax(far)))
            far = np.minimum(far, ((pts - pts[chosen[-1]]) ** 2).sum(1))
        for i in chosen:
            out.append(
                dataclasses.replace(canon, **{**face, **dict(zip(fields, (float(v) for v in seen[emotion][i])))})
            )
    return out


@dataclass(frozen=True)
class FaceAtlas:
    """Each face step's pictures (one per atlas pose, in canonical_pose's place) and the poses' face fields. The
    poses are atlas_poses (every step drawn) and then each MORE_POSES group's step_poses (drawn for that group's
    steps alone: `drawn_for`)."""

    fields: np.ndarray  # (E, len(FACE_FIELDS))
    layers: dict[str, list[Layer | None]]  # step (an eye's: step@side) -> E pictures (None: nothing drawn there)
    pupil_reach: np.ndarray  # (E, 2) head radii per unit of pupil_x, pupil_y (render.pupil_reach; 0: no pupils)
    brow_heights: np.ndarray  # (E, 2) each side's render.brow_lift (screen left, right), head radii
    drawn_for: tuple[str, ...]  # (E,): "" (every step drawn) or the pick group (pick_group) it was drawn for alone


def _as_float32(q: Pose) -> Pose:
    return dataclasses.replace(q, **{f: float(np.float32(getattr(q, f))) for f in FACE_FIELDS})


def face_atlas(avatar, scale: int = CUTOUT_SCALE) -> FaceAtlas:
    """The face steps drawn in each of atlas_poses, and each MORE_POSES group's in its step_poses (on a canvas
    around the head)."""
    av = get_avatar(avatar)
    names = [x for x, _, _ in steps(av, canonical_pose(), 1.0) if x.startswith(FACE)]
    layers: dict[str, list[Layer | None]] = {x[len(FACE) :]: [] for x in names}
    todo = [(q, "", set(names)) for q in atlas_poses()]
    for group in MORE_POSES:
        mine = {x for x in names if pick_group(x[len(FACE) :].partition(EYE)[0]) == group}
        todo += [(q, group, mine) for q in step_poses(group)]
    # each pose's face fields as the atlas keeps them (float32): a pose is drawn with the very values its picture is
    # picked by, so a field a hair below a threshold of the renderer (mouth_open 0.06999... of step_poses) is not
    # drawn on one side (a line) and picked on the other (an open mouth: cutout._look reads 0.07 as float32)
    todo = [(_as_float32(q), g, drawn) for q, g, drawn in todo]
    for q, _, drawn in todo:
        got = {x.name: x for x in _draw(av, q, drawn, scale, head_only=True)}
        for x in names:
            layers[x[len(FACE) :]].append(got.get(x))
    poses = [q for q, _, _ in todo]
    reach = np.array([R.pupil_reach(av, q) or (0.0, 0.0) for q in poses], np.float32)
    fields = np.array([[getattr(q, f) for f in FACE_FIELDS] for q in poses], np.float32)
    brows = np.array([[R.brow_lift(q, sd) for sd in (-1, 1)] for q in poses], np.float32)
    return FaceAtlas(fields, layers, reach, brows, tuple(g for _, g, _ in todo))


def bone_caps(avatar) -> dict[str, float]:
    """The radius of a limb's outlined stroke (its round ends), frame pixels: "leg" and "arm"."""
    rig = R._rig(get_avatar(avatar), canonical_pose(), FRAME_WIDTH, FRAME_HEIGHT)
    return {"leg": rig.leg_w / 2.0 + rig.ol, "arm": rig.arm_w / 2.0 + rig.ol}


def eye_centres(avatar, scale: int = CUTOUT_SCALE) -> np.ndarray:
    """(2, 2): the canonical pose's eye centres (screen left, right), (x, y) in the frame's pixels at `scale`."""
    av = get_avatar(avatar)
    q = canonical_pose()
    H = R._Head(R._rig(av, q, FRAME_WIDTH * scale, FRAME_HEIGHT * scale))
    return np.array([R.eye_centre(q, H, sd) for sd in (-1, 1)])


def reddened(avatar, scale: int = CUTOUT_SCALE) -> list[Layer]:
    """The SKIN layers with the face fully red (face_red 1): a frame's skin is the mix of these and the canonical
    ones by its face_red (render._palette mixes the colour linearly, and the shapes do not change)."""
    return _draw(avatar, dataclasses.replace(canonical_pose(), face_red=1.0), set(SKIN), scale)


__all__ = [
    "AT",
    "BONE",
    "CUTOUT_SCALE",
    "EYE",
    "FACE",
    "HAT_STAR",
    "NECK",
    "PAIR",
    "SKIN",
    "WAND_TIP",
    "FaceAtlas",
    "Layer",
    "atlas_poses",
    "bone_caps",
    "cutout_layers",
    "eye_centres",
    "face_atlas",
    "pick_group",
    "step_poses",
    "reddened",
    "steps",
]
