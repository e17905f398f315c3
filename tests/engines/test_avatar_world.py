"""Tests of the avatar world (tools/avatar_world).  Fast: a few seconds on one core."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from avatarcast import vocabulary
from avatarcast.engines.avatar_world import (
    BUILTIN_AVATARS,
    EMOTIONS,
    AvatarParams,
    MotionVariation,
    Pose,
    blend_poses,
    get_avatar,
    pose_at,
    random_avatar,
    render_clip,
    render_frame,
    render_sequence,
    sample_variation,
)
from avatarcast.engines.avatar_world import render as rd
from tools.avatar_world import dataset as ds
from tools.avatar_world.dataset import DATA_VERSION, iter_shards, write_dataset

W, H = 640, 360


def _sil(frames: np.ndarray) -> np.ndarray:
    return frames[..., 3] > 127


# --- rendering basics -------------------------------------------------------------


def test_emotions_order_fixed():
    """The avatar world renders the vocabulary's emotions in its order (the datasets' and the weights' index)."""
    assert EMOTIONS == vocabulary.EMOTIONS


def test_frame_shape_dtype_alpha():
    av = BUILTIN_AVATARS[0]
    q = pose_at("idle", 0.0, MotionVariation())
    f = render_frame(av, q)
    assert f.shape == (H, W, 4) and f.dtype == np.uint8
    for y, x in ((0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1)):
        assert f[y, x, 3] == 0
    rig = rd._rig(av, q, W, H)
    cx, cy = (int(round(v)) for v in rig.tc)
    assert f[cy, cx, 3] == 255
    hx, hy = (int(round(v)) for v in rig.head_c)
    assert f[hy, hx, 3] == 255
    # anti-aliased: partially transparent edge pixels exist
    a = f[..., 3]
    assert ((a > 0) & (a < 255)).sum() > 200
    # standing on the ground line, 230-290 px tall (incl. headwear)
    ys = np.where(a.max(1) > 0)[0]
    assert 325 <= ys.max() <= 340
    assert 230 <= ys.max() - ys.min() <= 290
    # other sizes scale
    g = render_frame(av, q, 320, 180)
    assert g.shape == (180, 320, 4) and g[..., 3].max() == 255


def test_determinism():
    a = render_clip(1, "happy", 3, seed=5)
    b = render_clip(1, "happy", 3, seed=5)
    assert a.shape == (3, H, W, 4) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    c = render_clip(1, "happy", 3, seed=6)
    assert a.tobytes() != c.tobytes()
    f1, l1 = render_sequence(2, [("sad", 2, 0.7), ("love", 2, 1.0)], seed=3)
    f2, l2 = render_sequence(2, [("sad", 2, 0.7), ("love", 2, 1.0)], seed=3)
    assert f1.tobytes() == f2.tobytes() and np.array_equal(l1, l2)


def test_every_emotion_differs_from_idle_and_moves():
    # same seed -> same variation/start time, so differences come from the motion itself
    av = BUILTIN_AVATARS[5]
    n, fps = 8, 4
    idle = _sil(render_clip(av, "idle", n, seed=1, fps=fps, start_time=0.0))
    idle_area = idle.sum() / n
    for emo in EMOTIONS[1:]:
        s = _sil(render_clip(av, emo, n, seed=1, fps=fps, start_time=0.0))
        diff = (s ^ idle).sum() / n / idle_area  # silhouette difference vs idle
        motion = (s[1:] ^ s[:-1]).sum() / (n - 1) / idle_area  # silhouette change over time
        # measured (kiko/pip/tok): diff 0.18 (sad) .. 0.58, motion 0.06 (idle itself) .. 0.67
        assert diff > 0.12, (emo, diff)
        assert motion > 0.04, (emo, motion)


def test_whole_body_in_frame_every_emotion():
    # all built-ins (at 320x180: the geometry scales with the frame) and two random avatars at full size,
    # at intensity 1 with the largest amplitude, over more than one loop
    loud = MotionVariation(tempo=1.0, amplitude=1.2, phase=0.0)
    cases = [(a, 320, 180) for a in BUILTIN_AVATARS] + [(random_avatar(s), W, H) for s in (2, 9)]
    for av, w, h in cases:
        for emo in EMOTIONS:
            for t in np.arange(0.0, 2.6, 0.25):
                f = render_frame(av, pose_at(emo, float(t), loud, 1.0), w, h)
                a = f[..., 3]
                border = max(a[:2].max(), a[-2:].max(), a[:, :2].max(), a[:, -2:].max())
                assert border == 0, (av.name, emo, t)


def test_intensity_scales():
    v = MotionVariation()
    lo = pose_at("excited", 0.2, v, 0.3)
    hi = pose_at("excited", 0.2, v, 1.0)
    assert isinstance(hi, Pose)
    assert lo.fx_sparkles < hi.fx_sparkles
    assert abs(lo.arm_l_sh - 22) < abs(hi.arm_l_sh - 22)
    with pytest.raises(ValueError):
        pose_at("grumpy", 0.0, v)


# --- poses / sequences --------------------------------------------------------------


def test_blend_endpoints():
    v = sample_variation(3)
    a, b = pose_at("happy", 0.4, v), pose_at("sad", 0.4, v)
    assert blend_poses(a, b, 0.0) == a
    assert blend_poses(a, b, 1.0) == b
    m = blend_poses(a, b, 0.5)
    assert m != a and m != b
    assert min(a.mouth_smile, b.mouth_smile) < m.mouth_smile < max(a.mouth_smile, b.mouth_smile)


def test_sample_variation_ranges():
    for s in range(50):
        v = sample_variation(s)
        assert 0.85 <= v.tempo <= 1.15 and 0.8 <= v.amplitude <= 1.2 and 0.0 <= v.phase < 1.0
    assert sample_variation(7) == sample_variation(7) != sample_variation(8)


def test_render_sequence_labels_and_continuity():
    segs = [("happy", 5, 1.0), ("sad", 6, 0.8), ("angry", 3, 1.0)]
    frames, labels = render_sequence(0, segs, seed=4, width=320, height=180)
    assert frames.shape == (14, 180, 320, 4) and labels.dtype == np.int64
    assert labels.tolist() == [2] * 5 + [5] * 6 + [6] * 3
    poses, _ = rd.sequence_poses(segs, seed=4)
    # motion time continues across segments
    ts = [q.fx_time for q in poses]
    assert all(t1 > t0 for t0, t1 in zip(ts, ts[1:]))
    # the first frames of a new segment are blends, not the pure new pose
    v = sample_variation(4)
    pure = pose_at("sad", 5 / 8, v, 0.8)
    assert poses[5] != pure
    assert abs(poses[5].mouth_smile - poses[4].mouth_smile) < abs(pure.mouth_smile - poses[4].mouth_smile)
    # without transition frames the pose switches at once
    p0, _ = rd.sequence_poses(segs, seed=4, transition_frames=0)
    assert p0[5] == pure


# --- avatars ---------------------------------------------------------------------------


def test_avatar_params_roundtrip_and_errors():
    assert len(BUILTIN_AVATARS) >= 6
    assert len({a.name for a in BUILTIN_AVATARS}) == len(BUILTIN_AVATARS)
    assert len({a.body_color for a in BUILTIN_AVATARS}) == len(BUILTIN_AVATARS)
    for av in list(BUILTIN_AVATARS) + [random_avatar(1)]:
        d = json.loads(json.dumps(av.to_dict()))
        assert AvatarParams.from_dict(d) == av
        assert dataclasses.asdict(av)["name"] == av.name
    good = BUILTIN_AVATARS[0].to_dict()
    bad_cases = [
        {**good, "body_shape": "triangle"},
        {**good, "headwear": "crown"},
        {**good, "eye_style": "laser"},
        {**good, "head_size": 5.0},
        {**good, "head_size": "big"},
        {**good, "skin": [300, 0, 0]},
        {**good, "skin": [1, 2]},
        {**good, "wings": True},
        {k: v for k, v in good.items() if k != "name"},
    ]
    for d in bad_cases:
        with pytest.raises(ValueError):
            AvatarParams.from_dict(d)
    with pytest.raises(ValueError):
        AvatarParams.from_dict("pip")
    assert AvatarParams.from_dict({**good, "skin": "#ff8000"}).skin == (255, 128, 0)


def test_random_avatar_and_get_avatar():
    assert random_avatar(42) == random_avatar(42)
    assert len({random_avatar(s) for s in range(20)}) == 20
    assert get_avatar(0) is BUILTIN_AVATARS[0]
    assert get_avatar(BUILTIN_AVATARS[2].name) == BUILTIN_AVATARS[2]
    assert get_avatar(BUILTIN_AVATARS[1].to_dict()) == BUILTIN_AVATARS[1]
    assert get_avatar("random-7") == random_avatar(7)
    assert get_avatar(BUILTIN_AVATARS[3]) is BUILTIN_AVATARS[3]
    with pytest.raises(ValueError):
        get_avatar(len(BUILTIN_AVATARS))
    with pytest.raises(ValueError):
        get_avatar("nobody")


# --- dataset ----------------------------------------------------------------------------


@pytest.mark.slow
def test_write_dataset_roundtrip(tmp_path):
    out = tmp_path / "ds"
    man = write_dataset(out, n_random_avatars=1, variants=1, clip_frames=4, workers=2, clips_per_shard=16)
    n_av = len(BUILTIN_AVATARS) + 1
    n_clips = n_av * len(EMOTIONS)
    assert man["data_version"] == DATA_VERSION and man["emotions"] == list(EMOTIONS)
    assert man["n_clips"] == n_clips and man["n_frames"] == n_clips * 4
    assert json.loads((out / "manifest.json").read_text())["n_shards"] == man["n_shards"]
    avs = json.loads((out / "avatars.json").read_text())
    assert len(avs) == n_av and AvatarParams.from_dict(avs[-1]) == random_avatar(0)
    shards = list(iter_shards(out))
    assert len(shards) == man["n_shards"] == -(-n_clips // 16)
    seen = set()
    for s in shards:
        n = len(s["avatar_id"])
        assert s["frames"].shape == (n, 4, H, W, 4) and s["frames"].dtype == np.uint8
        assert s["labels"].shape == (n, 4) and s["labels"].dtype == np.int64
        assert s["avatar_id"].dtype == np.int64 and s["seed"].dtype == np.int64
        assert s["intensity"].dtype == np.float32
        assert ((s["intensity"] >= 0.5) & (s["intensity"] <= 1.0)).all()
        # 4-frame clips never switch: every label is the clip's emotion
        assert (s["labels"] == s["emotion"][:, None]).all()
        seen |= {(int(a), int(e)) for a, e in zip(s["avatar_id"], s["emotion"])}
    assert seen == {(a, e) for a in range(n_av) for e in range(len(EMOTIONS))}
    # the same shard rendered in-process (1 worker) is byte-identical
    specs = ds.plan_clips(n_av, 1, 4, 0, 0.35)[:16]
    ds._init_worker(avs)
    ds._render_shard((str(tmp_path / "again.npz"), specs, 4))
    with np.load(tmp_path / "again.npz") as z:
        assert z["frames"].tobytes() == shards[0]["frames"].tobytes()


def test_plan_clips_switches():
    specs = ds.plan_clips(3, 4, 24, seed=1, switch_fraction=0.35)
    sw = [s for s in specs if s.switch_frame > 0]
    assert 0.15 < len(sw) / len(specs) < 0.55
    for s in sw:
        assert 6 <= s.switch_frame <= 24 - 8
        assert len(s.segments) == 2 and s.segments[1][0] == EMOTIONS[s.emotion]
        assert s.segments[0][0] != s.segments[1][0]
        assert s.segments[0][1] + s.segments[1][1] == 24
    assert specs == ds.plan_clips(3, 4, 24, seed=1, switch_fraction=0.35)


def test_an_open_mouth_changes_little_as_the_smile_crosses_zero():
    """The lips meet once at each corner: the mouth's outline was a bow-tie there for any smile above 0 (its mitred
    outline grew spikes and the mouth jumped to another shape between smile 0 and 0.005), which a talking face
    crosses all the time. Nearby smiles now draw nearly the same mouth, and no outline pixel outside it."""
    import dataclasses

    from avatarcast.engines.avatar_world.reference import canonical_pose
    from avatarcast.engines.avatar_world.render import landmarks

    for avatar in ("pip", "kiko"):
        for o in (0.12, 0.3, 0.6):
            q = dataclasses.replace(canonical_pose(), mouth_open=o, mouth_width=0.6)
            x0, y0, x1, y1 = (int(v) for v in landmarks(avatar, q).head)
            mouths = [
                render_frame(avatar, dataclasses.replace(q, mouth_smile=sm))[y0:y1, x0:x1, :3].astype(float)
                for sm in (-0.01, 0.0, 0.01, 0.03)
            ]
            for a, b in zip(mouths, mouths[1:]):
                assert (np.abs(a - b).max(-1) > 60).sum() <= 6, (avatar, o)  # a few pixels, not a new shape


def test_supersampling_converges_on_the_shapes():
    """render_frame(supersample=k): the default is the shipped frame to the bit, and finer canvases converge on the
    character's shapes (the fidelity eval scores against 8x: tools/eval/fidelity.py SHAPES_SS). 2x frames (shipped
    until 2026-12-07) are measurably off the shapes (PIL rounds coordinates down to the canvas grid), the shipped 4x
    ones much less, 8x not at all."""
    from tools.eval import fidelity_metrics as fm

    av, q = BUILTIN_AVATARS[2], pose_at("happy", 2.7, sample_variation(31), 0.9)
    assert np.array_equal(render_frame(av, q, supersample=rd.SS), render_frame(av, q))
    fine = render_frame(av, q, supersample=16)
    mask = fm.avatar_mask(fine)

    def psnr(k: int) -> float:
        return fm.psnr(fm.premultiplied(fine), fm.premultiplied(render_frame(av, q, supersample=k)), mask)

    p2, p4, p8 = psnr(2), psnr(4), psnr(8)  # 27.3, 34.6, 41.7 dB
    assert rd.SS == 4 and p2 < 31.0 and p4 > p2 + 5.0 and p8 > 38.0 and p8 > p4 + 5.0, (p2, p4, p8)
