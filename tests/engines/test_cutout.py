"""The cut-out draw (engines/tiny/cutout.py): the avatar's layers moved by the motion, against the renderer's frames.

Reconstruction here is the fidelity eval's: a held-out pose's true motion drawn, and compared with the renderer's frame
of that pose. The thresholds sit between what the learnt decoders reach (the copy decoder 23.5 dB avatar PSNR on such
frames, docs/training/motion.md) and what the cut-out draw measured when they were written (27.5-29.8 dB), so a
regression to the learnt decoders' picture fails them.
"""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from avatarcast.engines.avatar_world.layers import FACE, cutout_layers, face_atlas
from avatarcast.engines.avatar_world.layers import _draw as _draw_layers
from avatarcast.engines.avatar_world.motions import pose_at, sample_variation
from avatarcast.engines.avatar_world.reference import canonical_pose
from avatarcast.engines.avatar_world.render import (
    MOUTH_FILL,
    MOUTH_LINE,
    SLEEPY_LID,
    TEETH_SHOWN,
    landmarks,
    render_frame,
)
from avatarcast.engines.avatar_world.skeleton import EXPR_OFFSET, FACE_FIELDS, N_POINTS
from avatarcast.engines.backends.base import BackendError
from avatarcast.engines.tiny import cutout
from avatarcast.engines.tiny.motion_engine import MotionEngine
from tools.eval import fidelity_metrics as fm


@pytest.fixture(scope="module")
def engine() -> MotionEngine:
    return MotionEngine.from_folder(None, draw="cutout", threads=1)


def _scores(engine: MotionEngine, avatar: str, q) -> tuple[float, float, float]:
    r = render_frame(avatar, q)
    g = engine.draw(avatar, engine.motion(avatar, q)[None])[0]
    mask = fm.avatar_mask(r)
    head = mask & fm.box_mask(mask.shape, landmarks(avatar, q).head)
    a, b = fm.premultiplied(r), fm.premultiplied(g)
    return fm.psnr(a, b, mask), fm.psnr(a, b, head), fm.alpha_iou(r, g)


def test_the_numpy_part_maps_are_the_torch_ones():
    torch = pytest.importorskip("torch")
    from avatarcast.engines.tiny.motion import part_maps

    rng = np.random.default_rng(0)
    for _ in range(5):
        kp_t, kp_r = rng.uniform(-0.8, 0.8, (2, N_POINTS, 2))
        A, b = cutout.part_maps(kp_t, kp_r, 448, 384)
        At, bt = part_maps(torch.tensor(kp_t[None]), torch.tensor(kp_r[None]), 448, 384)
        np.testing.assert_allclose(A, At[0].numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(b, bt[0].numpy(), rtol=1e-6, atol=1e-9)


def test_layers_follow_the_renderers_order_and_cut_the_limbs_at_their_joints():
    names = [x.name for x in cutout_layers("luna")]
    assert names[0] == "shadow" and names[-1] == "wand_star"
    # a polyline's outline under both of its segments' fills, the hand over the arm
    for side in ("l", "r"):
        i = names.index
        assert i(f"upper_arm_outline_{side}") < i(f"forearm_outline_{side}") < i(f"upper_arm_{side}")
        assert i(f"forearm_{side}") < i(f"hand_{side}")
    assert names.index("torso") < names.index(FACE + "mouth") < names.index("upper_arm_outline_l")
    # every layer is cropped to what it draws, at twice the frame's size
    for x in cutout_layers("pip"):
        assert x.scale == 2 and x.pixels[..., 3].max() > 0
        assert x.pixels[0, :, 3].max() > 0 or x.pixels[:, 0, 3].max() > 0  # no empty margin left


def test_held_out_poses_are_drawn_close_to_the_renderer(engine):
    """True motion of held-out poses (seeds past the training range): avatar PSNR, head PSNR and alpha IoU."""
    got = []
    for avatar in ("pip", "luna", "random-900002"):
        for emotion in ("idle", "happy"):
            q = pose_at(emotion, 7.3, sample_variation(900_123), 0.8)
            got.append(_scores(engine, avatar, q))
    psnr, head, iou = np.mean(got, 0)
    assert psnr >= 27.0 and head >= 26.0 and iou >= 0.98, got


def test_the_wizard_hats_star_stays_upright_as_the_head_turns(engine):
    """render draws the hat's star upright wherever the turned head puts it; the cut-out draw moves it on its own
    (layers.HAT_STAR): over its pixels 23.8-24.8 dB at a 25-degree turn; turned with the head's layer, 11.6-11.8."""
    for tilt in (-25.0, 25.0):
        q = dataclasses.replace(canonical_pose(), head_tilt=tilt)
        (star,) = [x for x in _draw_layers("luna", q, {"hat_star"}, 1)]
        mask = np.zeros((360, 640), bool)
        h, w = star.pixels.shape[:2]
        mask[star.row : star.row + h, star.col : star.col + w] = star.pixels[..., 3] > 0.05
        r = fm.premultiplied(render_frame("luna", q))
        got = fm.premultiplied(engine.draw("luna", engine.motion("luna", q)[None])[0])
        assert fm.psnr(r, got, mask) >= 22.0, tilt


def test_the_face_follows_the_motion_between_atlas_faces(engine):
    """Pupils move inside the eyes, eyes close part way, the skin reddens, a brow rises: each drawn closer to the
    renderer than the atlas face nearest it would be (drawn here with those fields set back to the canonical
    face's)."""
    canon = canonical_pose()
    for avatar, change in (
        ("bun", {"pupil_x": 0.7, "pupil_y": -0.5}),
        ("pip", {"eye_open": 0.55}),
        ("tok", {"face_red": 1.0}),
        ("kiko", {"brow_raise": 0.12, "brow_asym": 0.8}),
    ):
        q = dataclasses.replace(canon, **change)
        r = fm.premultiplied(render_frame(avatar, q))
        mask = fm.avatar_mask(render_frame(avatar, q))
        m = engine.motion(avatar, q)
        as_canon = m.copy()
        for f in change:
            as_canon[EXPR_OFFSET + FACE_FIELDS.index(f)] = getattr(canon, f)
        drawn = fm.premultiplied(engine.draw(avatar, np.stack([m, as_canon])))
        follows, nearest = fm.psnr(r, drawn[0], mask), fm.psnr(r, drawn[1], mask)
        assert follows > nearest + 0.5, (avatar, change, follows, nearest)


def test_a_sleepy_eyes_lid_is_never_picked_across_its_threshold(engine):
    """render draws a sleepy eye's lid only while eye_scale < SLEEPY_LID: an excited face at intensity 0.99 (1.199)
    has it, excited's typical face (1.2) has not. The cut-out picks on the same side, for sleepy-eyed avatars only
    (the held-out frame of luna below scored 25.6 dB when its lidded eyes were drawn wide open)."""
    q = pose_at("excited", 7.8327, sample_variation(2545001353), 0.994)
    assert q.eye_scale < SLEEPY_LID < q.eye_scale + 0.01
    prepared = engine.prepared_avatar("luna")[1].ref
    assert prepared.lidded and not engine.prepared_avatar("pip")[1].ref.lidded
    m = engine.motion("luna", q)
    assert prepared.face_fields[prepared.pick("eyes", m), FACE_FIELDS.index("eye_scale")] < SLEEPY_LID
    avatar_db, head_db, _ = _scores(engine, "luna", q)
    assert avatar_db > 27.5 and head_db > 26.0, (avatar_db, head_db)


def test_the_face_atlas_holds_each_face_step_for_each_pose():
    atlas = face_atlas("bun")
    assert atlas.fields.shape == (len(atlas.pupil_reach), len(FACE_FIELDS))
    assert {"eyes@-1", "eyes@1", "pupils@-1", "brows@1", "mouth"} <= set(atlas.layers)
    shut = atlas.fields[:, FACE_FIELDS.index("eye_open")] < 0.22
    assert shut.any() and (~shut).any()
    heart = atlas.fields[:, FACE_FIELDS.index("eye_heart")] > 0.5
    drawn_for = np.array(atlas.drawn_for)
    for i, x in enumerate(atlas.layers["pupils@1"]):
        # a shut eye or a heart has no pupil to move; a pose drawn for the mouth or the brows alone has no eyes
        assert (x is None) == bool(shut[i] or heart[i] or drawn_for[i] in ("mouth", "brows"))
    # the added poses: each drawn for its group's steps alone, and more than the typical faces give
    assert set(drawn_for) == {"", "eyes", "mouth", "brows"}
    assert all((x is None) == (d not in ("", "brows")) for x, d in zip(atlas.layers["brows@1"], drawn_for))
    assert all((x is None) == (d not in ("", "mouth")) for x, d in zip(atlas.layers["mouth"], drawn_for))
    # each picture drawn with the very (float32) fields it is picked by: a mouth open exactly at the line threshold
    # (step_poses' 0.0699999..., kept as float32 0.07) was drawn as a line and picked as an open mouth
    fill = np.array(MOUTH_FILL, np.float32) / 255.0
    for x, f in zip(atlas.layers["mouth"], atlas.fields):
        if x is None or f[FACE_FIELDS.index("mouth_teeth")] > TEETH_SHOWN:
            continue
        px = x.pixels
        filled = ((px[..., 3] > 0.99) & (np.abs(px[..., :3] - fill).max(-1) < 0.02)).any()
        assert filled == (f[FACE_FIELDS.index("mouth_open")] >= MOUTH_LINE), f
    opens = atlas.fields[drawn_for == "mouth", FACE_FIELDS.index("mouth_open")]
    assert len(np.unique(opens.round(2))) > 20  # a talking mouth's openings, not the dozen typical ones


def test_the_engine_streams_the_cutout_draw_and_another_process_can_prepare_it(engine):
    caps = engine.capabilities
    assert caps.cheaper_decode is None and not caps.fewer_steps_cheaper
    st = [engine.start_stream("pip", "happy", seed=1), engine.start_stream("bun", "sad", seed=2)]
    frames = engine.next_chunk(st)
    assert [f.shape for f in frames] == [(4, 360, 640, 4)] * 2 and frames[0].dtype == np.uint8
    assert all(f[..., 3].max() == 255 for f in frames)
    # what realtime/prep.py sends across processes: plain arrays, drawn the same after the trip
    key, prepared = engine.prepared_avatar("pip")
    back = pickle.loads(pickle.dumps(prepared))
    m = engine.motion("pip", canonical_pose())[None]
    box = engine.draw_box(m)
    np.testing.assert_array_equal(cutout.draw(back.ref, m, box), cutout.draw(prepared.ref, m, box))
    with pytest.raises(BackendError):
        engine.backend.draw(prepared.ref, m, prepared.ref_motion, box, cheaper=True)


def test_a_motion_off_the_map_draws_nothing_rather_than_failing(engine):
    """A non-finite motion (a diverged sampler) or one far outside the window gives a transparent frame, not an
    IndexError from the layers' sampling."""
    m = engine.motion("pip", canonical_pose())
    bad = np.stack([m, m.copy(), m * 1e6])
    bad[1, 3] = np.nan
    key, prepared = engine.prepared_avatar("pip")
    got = cutout.draw(prepared.ref, bad, (0, 0, 64, 64))
    assert got.shape == (3, 4, 64, 64) and np.isfinite(got).all()
    assert (got[1:] == -1.0).all()  # the NaN frame and the far-away one: nothing drawn in the box


def test_the_cutout_draws_frames_keyed_apart_from_its_folders_decoder(engine):
    """The latents cache and the clip cache key their frames on the engine's weights hash: the cut-out draw's must
    not be the copy decoder's (same folder, same denoiser, other pictures), nor the folder's own, and each follows
    the versions of what draws its frames (CUTOUT_VERSION: the cut-out's alone; EFFECTS_VERSION: every draw's)."""
    from avatarcast.engines.tiny import motion_weights as mw

    copy = MotionEngine.from_folder(None, draw="copy", threads=1)
    folder = mw.load_motion_manifest(mw.SHIPPED).weights_hash
    assert len({engine.weights_hash, copy.weights_hash, folder}) == 3
    assert engine.weights_hash == mw.frames_hash(folder, "cutout")
    assert copy.weights_hash == mw.frames_hash(folder, "copy")
    assert len(engine.weights_hash) == len(copy.weights_hash)
    mw.CUTOUT_VERSION += 1
    try:
        assert mw.frames_hash(folder, "cutout") != engine.weights_hash
        assert mw.frames_hash(folder, "copy") == copy.weights_hash
    finally:
        mw.CUTOUT_VERSION -= 1
    mw.EFFECTS_VERSION += 1
    try:
        assert mw.frames_hash(folder, "cutout") != engine.weights_hash
        assert mw.frames_hash(folder, "copy") != copy.weights_hash
    finally:
        mw.EFFECTS_VERSION -= 1


def test_the_cutout_draw_is_refused_where_it_does_not_run():
    with pytest.raises(BackendError, match="not onnxruntime on cuda"):
        MotionEngine.from_folder(None, draw="cutout", backend="onnxruntime", device="cuda")


def test_cutout_is_the_cpus_default_draw():
    from avatarcast.realtime.settings import Settings, SettingValueError

    s = Settings(engine="motion")
    s.validate()
    assert s.motion_draw == "auto" and s.motion_folder_draw == "cutout" and not s.admits_at_cheaper_decode
    on_torch = Settings(engine="motion", backend="torch")
    on_torch.validate()
    assert on_torch.motion_folder_draw == "copy"  # auto: the copy decoder where it is the faster draw (torch)
    Settings(engine="motion", backend="torch", motion_draw="cutout").validate()  # the torch cut-out draw
    with pytest.raises(SettingValueError, match="onnxruntime on the CPU or on torch"):
        Settings(engine="motion", backend="tensorrt", motion_draw="cutout").validate()


def test_the_neck_accessories_keep_their_size_as_the_torso_squashes(engine):
    """A scarf and a bowtie hang from the torso's top at a fixed size (render._draw_accessory_front): moved by the
    torso's affine map they were squashed and stretched with a dancing torso (10-16 dB over their pixels at squash
    0.65 / 1.35); moved with the neck (layers.NECK) they stay the renderer's."""
    from avatarcast.engines.avatar_world import get_avatar

    for name in ("pip", "bun"):  # a scarf, a bowtie
        av = get_avatar(name)
        for squash in (0.65, 1.35):
            q = dataclasses.replace(canonical_pose(), squash=squash, body_tilt=6.0)
            ref = render_frame(av, q)
            bare = render_frame(dataclasses.replace(av, accessory="none"), q)
            mask = np.abs(ref.astype(int) - bare.astype(int)).max(-1) > 0  # the accessory's pixels
            got = engine.draw(av, engine.motion(av, q)[None])[0]
            assert mask.sum() > 150
            assert fm.psnr(fm.premultiplied(ref), fm.premultiplied(got), mask) > 18.0, (name, squash)
