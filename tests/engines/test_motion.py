"""Architecture 3: the motion latent (engines/avatar_world/skeleton.py) and the decoder that moves the
reference frame by it (engines/tiny/motion.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from avatarcast.engines.avatar_world import BUILTIN_AVATARS, pose_at, random_avatar, render_frame, sample_variation  # noqa: E402
from avatarcast.engines.avatar_world.skeleton import (  # noqa: E402
    EXPR_OFFSET,
    KEYPOINTS,
    MOTION_DIM,
    N_POINTS,
    PARTS,
    keypoints_px,
    motion_vector,
    to_window,
)
from avatarcast.engines.tiny.config import TinyConfig  # noqa: E402
from avatarcast.engines.tiny.model import frames_to_tensor, tensor_to_rgba  # noqa: E402
from avatarcast.engines.tiny.motion import MotionDecoder, part_maps  # noqa: E402

CFG = TinyConfig()
W, H = CFG.window_width, CFG.pad_height


def _mv(av, q) -> np.ndarray:
    return motion_vector(av, q, CFG.window_x0, CFG.window_width, CFG.pad_top, CFG.pad_height)


@pytest.mark.parametrize(
    "avatar,emotion,t",
    [(BUILTIN_AVATARS[2], "happy", 0.3), (BUILTIN_AVATARS[0], "excited", 1.1), (random_avatar(7), "sad", 2.0)],
)
def test_keypoints_lie_on_the_drawn_avatar(avatar, emotion, t):
    """Every body keypoint is on a drawn pixel: the labels say where the renderer put the parts
    (hips, knees and ankles added to the pelvis twice would land in the air or the ground)."""
    q = pose_at(emotion, t, sample_variation(3), 1.0)
    frame = render_frame(avatar, q)
    kp = keypoints_px(avatar, q)
    on_body = [n for n in KEYPOINTS if n not in ("torso_side", "head_up", "face_up", "ground_side", "ground")]
    for name in on_body:
        x, y = kp[KEYPOINTS.index(name)]
        assert frame[int(y), int(x), 3] > 0, f"{name} at ({x:.0f}, {y:.0f}) is on a transparent pixel"
    # the shadow's centre is on the ground's shadow, under the avatar
    gx, gy = kp[KEYPOINTS.index("ground")]
    assert 0 < frame[int(gy), int(gx), 3] < 255


def test_motion_vector_layout():
    av = BUILTIN_AVATARS[1]
    q = pose_at("love", 0.7, sample_variation(1), 0.8)
    v = _mv(av, q)
    assert v.shape == (MOTION_DIM,) and v.dtype == np.float32
    kp = v[:EXPR_OFFSET].reshape(N_POINTS, 2)
    assert np.all(np.abs(kp) < 1.0)  # the avatar stands inside the window
    # window edges map to -1 and 1 (pixel edges, as grid_sample with align_corners=False reads them)
    edges = to_window(
        np.array([[CFG.window_x0, -CFG.pad_top], [CFG.window_x0 + W, H - CFG.pad_top]], float),
        CFG.window_x0,
        W,
        CFG.pad_top,
        H,
    )
    np.testing.assert_allclose(edges, [[-1, -1], [1, 1]])


def test_part_maps_undo_a_rigid_move():
    """Keypoints rotated and shifted as one body: every part's map takes its target keypoints back to
    the reference ones (in pixels, so the window's aspect does not bend the rotation)."""
    torch.manual_seed(0)
    kp_r = torch.rand(2, N_POINTS, 2) * 1.6 - 0.8
    s = torch.tensor([W / 2, H / 2])
    c, sn = math.cos(0.3), math.sin(0.3)
    rot = torch.tensor([[c, -sn], [sn, c]])
    kp_t = ((kp_r * s) @ rot.T + torch.tensor([10.0, -5.0])) / s
    A, b = part_maps(kp_t, kp_r, W, H)
    for k, (name, idx) in enumerate(PARTS):
        for i in idx:
            back = (A[:, k] @ kp_t[:, i, :, None])[..., 0] + b[:, k]
            torch.testing.assert_close(back, kp_r[:, i], atol=1e-4, rtol=0, msg=name)


def _ref_tensor(av) -> torch.Tensor:
    from avatarcast.engines.avatar_world.reference import canonical_pose
    from tools.train_tiny import to_window_tensor

    f = render_frame(av, canonical_pose())[:, CFG.window_x0 : CFG.window_x0 + W]
    return to_window_tensor(torch.from_numpy(np.ascontiguousarray(f))[None], CFG)


def test_moved_reference_is_exact_at_rest_and_under_a_whole_pixel_shift():
    """Target = reference: every part's map is the identity and the moved pixels are the reference's,
    exactly. All keypoints 8 pixels to the right: every moving part's grid reads the reference 8 pixels
    to the left (the half-pixel conventions of the keypoints, the grids and grid_sample agree)."""
    from avatarcast.engines.avatar_world.reference import canonical_pose
    from avatarcast.engines.tiny.motion import part_grids, pixel_centres, warp

    av = BUILTIN_AVATARS[3]
    ref = _ref_tensor(av)
    rm = torch.from_numpy(_mv(av, canonical_pose()))[None]
    dec = MotionDecoder().eval()
    with torch.no_grad():
        _, parts = dec(rm, rm, ref, dec.encode_reference(ref), return_parts=True)
    # within 2 steps of 255 (the still part keeps a sliver of share at the outlines); half a pixel off would be 1
    torch.testing.assert_close(parts["moved"], ref, atol=0.02, rtol=0)
    shifted = rm.clone()
    shifted[:, :EXPR_OFFSET:2] += 2 * 8 / W
    kp_t, kp_r = shifted[:, :EXPR_OFFSET].reshape(1, N_POINTS, 2), rm[:, :EXPR_OFFSET].reshape(1, N_POINTS, 2)
    A, b = part_maps(kp_t, kp_r, W, H)
    grids = part_grids(A, b, pixel_centres(H, W, kp_t))
    for k, (name, idx) in enumerate(PARTS):
        moved = warp(ref + 1, grids[:, k]) - 1
        if idx:
            torch.testing.assert_close(moved[..., 8:], ref[..., :-8], atol=1e-3, rtol=0, msg=name)
        else:  # the still part's map is never read
            continue


def test_a_box_draws_the_same_pixels_as_the_whole_window():
    """The CPU draws only a box around the avatar: with the generator's and the masks' residual layers
    at their zero start, a box's pixels equal the whole window's there, but for its edge (every coordinate
    of the crop, at every level, is where the whole window has it)."""
    av = BUILTIN_AVATARS[0]
    ref = _ref_tensor(av)
    from avatarcast.engines.avatar_world.reference import canonical_pose

    rm = torch.from_numpy(_mv(av, canonical_pose()))[None]
    m = torch.from_numpy(_mv(av, pose_at("excited", 0.6, sample_variation(2), 1.0)))[None]
    dec = MotionDecoder().eval()
    with torch.no_grad():
        feats = dec.encode_reference(ref)
        full = dec(m, rm, ref, feats)
        box = (96, 136, 160, 176)
        crop = dec(m, rm, ref, feats, box=box)
    # the box's outer 4 pixels may differ: the grid mixed at 1/4 is upsampled, and at a box's edge the
    # upsampling has no neighbour outside (serving boxes keep a margin of empty pixels round the avatar)
    torch.testing.assert_close(crop[..., 4:-4, 4:-4], full[..., 100:252, 140:308], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="multiples of 8"):
        dec(m, rm, ref, feats, box=(4, 0, 64, 64))


def test_motion_denoiser_fits_the_samplers_call_and_starts_still():
    """The motion denoiser takes the image denoiser's call (a 1 x 1 image of T*D channels) and returns a
    velocity; fresh, its clean-chunk estimate is the last context frame repeated, so one Euler step from
    any noise lands on a still avatar (the "x" parametrization turned into a velocity correctly)."""
    from avatarcast.engines.sampler import ShortcutFlowSampler
    from avatarcast.engines.tiny.motion_denoiser import MotionDenoiser

    T, K, D = CFG.chunk_frames, CFG.context_frames, MOTION_DIM
    den = MotionDenoiser(D, T, K, n_emotions=11).eval()
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(3, K * D, 1, 1, generator=g)
    ref = torch.randn(3, D, 1, 1, generator=g)
    x = torch.randn(3, T * D, 1, 1, generator=g)
    sampler = ShortcutFlowSampler(steps=1, min_shortcut=CFG.min_shortcut)
    with torch.no_grad():
        for t in sampler.timesteps:
            v = den(
                x, torch.full((3,), float(t)), torch.full((3,), 1.0), ctx, ref, torch.tensor([0, 4, 10]), torch.ones(3)
            )
            assert v.shape == x.shape
            x = sampler.step(v, t, x)
    last = ctx.reshape(3, K, D)[:, -1:]
    torch.testing.assert_close(x.reshape(3, T, D), last.expand(3, T, D), atol=1e-5, rtol=0)


def test_train_motion_runs_and_resumes(tmp_path):
    """Two decoder steps on a few rendered frames, then one more from the checkpoint: the step count goes on."""
    from tools import train_motion

    args = ["--work", str(tmp_path / "w"), "--ckpt", str(tmp_path / "ck"), "--minutes", "0"]
    args += ["--random-avatars", "1", "--variants", "1", "--per-clip", "1", "--batch", "2", "--crop", "64"]
    args += ["--workers", "1", "--no-eval", "--face-boost", "4", "--face-crops", "1"]
    train_motion.main([*args, "--min-steps", "2"])
    assert torch.load(tmp_path / "ck" / "motion.pt")["step"] == 2
    train_motion.main([*args, "--min-steps", "1"])
    assert torch.load(tmp_path / "ck" / "motion_ema.pt")["step"] == 3
    # a decoder that copies atlas faces, started from that one's weights (its atlas mix fresh)
    atlas_args = [a if a != str(tmp_path / "ck") else str(tmp_path / "ck2") for a in args]
    train_motion.main([*atlas_args, "--atlas", "--residual", "--init-from", str(tmp_path / "ck" / "motion_ema.pt")])
    kept = torch.load(tmp_path / "ck2" / "motion_ema.pt")
    assert kept["step"] == 1 and kept["shape"]["atlas"] == 11 and "atlas_mix.2.bias" in kept["ema"]
    assert kept["shape"]["residual"] and "res.weight" in kept["ema"]


def test_train_motion_den_keeps_its_size_and_the_engine_reads_it(tmp_path):
    """The denoiser's size is the run's (--width, --blocks), recorded in its checkpoints: a resumed run keeps
    it whatever it is asked, and MotionEngine.load builds that size from the file."""
    from avatarcast.engines.tiny.motion_engine import MotionEngine
    from tools import train_motion, train_motion_den

    ck = tmp_path / "ck"
    args = ["--work", str(tmp_path / "w"), "--ckpt", str(ck), "--minutes", "0", "--random-avatars", "0"]
    args += ["--variants", "1", "--workers", "1", "--batch", "8", "--eval-every", "0"]
    args += ["--own-context-after", "1", "--device", "cpu"]
    train_motion_den.main([*args, "--min-steps", "2", "--width", "48", "--blocks", "1"])
    train_motion_den.main([*args, "--min-steps", "1", "--width", "96", "--blocks", "3"])
    kept = torch.load(ck / "motion_den.pt")
    assert kept["step"] == 3 and kept["arch"] == {"width": 48, "blocks": 1}
    dec = ["--work", str(tmp_path / "w"), "--ckpt", str(ck), "--minutes", "0", "--random-avatars", "0"]
    dec += ["--variants", "1", "--per-clip", "1", "--batch", "1", "--crop", "64", "--workers", "1", "--no-eval"]
    train_motion.main([*dec, "--min-steps", "1"])
    engine = MotionEngine.load(ck / "motion_ema.pt", ck / "motion_den.pt")
    den = engine.backend.denoiser  # type: ignore[attr-defined]  (the torch backend's)
    assert den.inp.out_features == 48 and len(den.blocks) == 1


def test_the_face_weight_covers_the_drawn_face():
    """The training's face boost sits on the rendered head: its disc is opaque around the face keypoint, and a
    box sees the same disc as the whole window does."""
    from tools.train_motion import CFG, _face_px, _face_weight, _mv, _window
    from tools.train_tiny import to_window_tensor

    av = BUILTIN_AVATARS[2]
    q = pose_at("happy", 1.3, sample_variation(5), 1.0)
    win = to_window_tensor(torch.from_numpy(_window(render_frame(av, q)))[None], CFG)
    H, W = CFG.pad_height, CFG.window_width
    face = _face_px(torch.from_numpy(_mv(av, q))[None], H, W)
    w = _face_weight(face, (0, 0, H, W), 4.0)[0, 0]
    inside = w > 1
    assert w.max() == 4.0 and w.min() == 1.0
    alpha = win[0, 3] > 0
    assert alpha[inside].float().mean() > 0.8  # on the head (a disc shifted by the window offset: 0.18)
    ys, xs = torch.nonzero(inside, as_tuple=True)
    assert abs(xs.float().mean() + 0.5 - face[0, 0]) < 1 and abs(ys.float().mean() + 0.5 - face[0, 1]) < 1
    box = (64, 192, 128, 128)
    torch.testing.assert_close(_face_weight(face, box, 4.0)[0, 0], w[64:192, 192:320])


@pytest.fixture(scope="module")
def motion_engine(tmp_path_factory):
    """Architecture 3's engine from the checkpoint files training writes, fresh weights (no training here)."""
    from avatarcast.engines.tiny.motion import shape_to_dict
    from avatarcast.engines.tiny.motion_denoiser import MotionDenoiser
    from avatarcast.engines.tiny.motion_engine import MotionEngine
    from avatarcast.vocabulary import EMOTIONS

    ck = tmp_path_factory.mktemp("m3")
    torch.manual_seed(0)
    dec = MotionDecoder()
    torch.save({"ema": dec.state_dict(), "shape": shape_to_dict(dec.shape), "step": 0}, ck / "motion_ema.pt")
    cfg = TinyConfig()
    den = MotionDenoiser(MOTION_DIM, cfg.chunk_frames, cfg.context_frames, len(EMOTIONS))
    stats = {"mean": torch.linspace(-0.1, 0.1, MOTION_DIM), "std": torch.linspace(0.5, 1.5, MOTION_DIM)}
    torch.save({"ema": den.state_dict(), "step": 0, **stats}, ck / "motion_den.pt")
    return MotionEngine.load(ck / "motion_ema.pt", ck / "motion_den.pt")


def test_the_engine_draws_a_box_that_holds_the_avatar():
    """The engine decodes only a box around the keypoints (BOX_MARGIN head radii past them). With the shipped
    decoder (engines/tiny/weights/motion, on onnxruntime), on held-out poses of avatars with big ears, hair and
    hats: the whole window's drawing is empty outside the box, and the box's frames score as well against the
    renderer as the whole window's (the mask U-Net's zero padding at the box's edges moves some pixels, in
    training too: it learnt on 192-pixel crops)."""
    from avatarcast.engines.avatar_world import get_avatar
    from avatarcast.engines.avatar_world.render import landmarks
    from avatarcast.engines.tiny.motion_engine import MotionEngine
    from avatarcast.engines.tiny.window import window_to_rgba
    from tools.eval.fidelity import frame_scores

    e = MotionEngine.from_folder(None, threads=2)
    w = e.window
    box_s, full_s = [], []
    for name, emotion in (("luna", "surprised"), ("random-900008", "love"), ("random-900035", "angry")):
        av = get_avatar(name)
        q = pose_at(emotion, 1.7, sample_variation(41), 1.0)
        m = e.motion(av, q)[None]
        by, bx, bh, bw = e.draw_box(m)
        a = e._avatar(av)
        y = np.clip(e.backend.draw(a.ref, m, a.ref_motion, (0, 0, w.pad_height, w.window_width)), -1, 1)
        outside = np.ones((w.pad_height, w.window_width), bool)
        outside[by : by + bh, bx : bx + bw] = False
        assert float(y[0, 3][outside].max()) < -1.0 + 1e-3, name  # transparent (alpha under 1/2000)
        a.effects.lay(y, m)
        full = np.zeros((360, 640, 4), np.uint8)
        full[:, w.window_x0 : w.window_x0 + w.window_width] = window_to_rgba(y[:, :, w.pad_top : w.pad_top + 360])[0]
        truth, head = render_frame(av, q), landmarks(av, q).head
        box_s.append(frame_scores(truth, e.draw(av, m)[0], head)["avatar_psnr_db"])
        full_s.append(frame_scores(truth, full, head)["avatar_psnr_db"])
    assert min(box_s) > 18 and abs(np.mean(box_s) - np.mean(full_s)) < 0.3, (box_s, full_s)


def test_the_motion_engine_runs_streams_from_rest(motion_engine):
    """A fresh denoiser keeps a stream where it is, so the first chunk is the avatar's rest pose four times,
    drawn by the decoder from the canonical frame: the engine's normalization, context and drawing line up."""
    from avatarcast.engines.avatar_world.reference import rest_pose

    e = motion_engine
    av = BUILTIN_AVATARS[4]
    s = e.start_stream(av, "happy", seed=7)
    twin = s.copy()
    lat = e.sample_chunks([s])
    T, K = e.cfg.chunk_frames, e.cfg.context_frames
    assert lat.shape == (1, T, MOTION_DIM, 1, 1) and s.frames_done == T and twin.frames_done == 0
    np.testing.assert_array_equal(s.ctx, lat[0, T - K :].reshape(-1, 1, 1))
    raw = lat[0, :, :, 0, 0] * e.std + e.mean
    np.testing.assert_allclose(raw, np.tile(_mv(av, rest_pose()), (T, 1)), atol=1e-4)
    frames = e.decode_chunks([s], lat)
    assert frames.shape == (1, T, 360, 640, 4) and frames.dtype == np.uint8
    drawn, truth = frames[0, 0, ..., 3] > 127, render_frame(av, rest_pose())[..., 3] > 127
    assert (drawn & truth).sum() / (drawn | truth).sum() > 0.8  # where the renderer draws the avatar at rest
    np.testing.assert_array_equal(e.sample_chunks([twin]), lat)  # a twin with the same noise: the same chunk
    with pytest.raises(ValueError):
        e.decode_chunks([s], lat, cheaper=True)
    clip = e.generate_clip(av, "sad", 6, seed=1)
    assert clip.shape == (6, 360, 640, 4)


def test_the_fidelity_eval_reconstructs_through_the_motion_engine(motion_engine):
    """Architecture 3's reconstruction in the fidelity eval: the held-out frames' true motion, drawn. Even the
    fresh decoder (its skeleton prior alone) puts the avatar where the renderer does."""
    from tools.eval import holdout
    from tools.eval.fidelity import reconstruction

    avatars = holdout.eval_avatars(1, 1)
    rec = reconstruction(motion_engine, holdout.reconstruction_frames(avatars, 2))
    assert rec["n_frames"] == 4 and set(rec["by_group"]) == {"builtin", "heldout"}
    assert rec["overall"]["alpha_iou"]["mean"] > 0.8


def test_the_atlas_holds_each_emotions_face_and_the_canonical_frame_elsewhere():
    """Only the face differs: the effects (the "!" of surprised, the hearts of love) are sprites, laid over the
    frame at their own clock's phase (test_effect_sprites_...)."""
    from avatarcast.engines.avatar_world.reference import atlas_frames, canonical_frame, canonical_pose
    from avatarcast.engines.avatar_world.render import landmarks
    from avatarcast.vocabulary import EMOTIONS

    av = BUILTIN_AVATARS[1]
    atlas, canon = atlas_frames(av), canonical_frame(av)
    assert atlas.shape == (len(EMOTIONS), 360, 640, 4)
    x0, y0, x1, y1 = (int(round(v)) for v in landmarks(av, canonical_pose()).head)
    outside = np.ones(canon.shape[:2], bool)
    outside[max(0, y0 - 4) : y1 + 4, max(0, x0 - 4) : x1 + 4] = False
    for emotion in EMOTIONS:
        face = atlas[EMOTIONS.index(emotion)]
        np.testing.assert_array_equal(face[outside], canon[outside], err_msg=emotion)
    happy = atlas[EMOTIONS.index("happy")].astype(int) - canon.astype(int)
    assert np.abs(happy).max() > 100  # closed laughing eyes and an open mouth are not the canonical face


def test_effect_sprites_draw_the_renderers_effects_where_the_motion_puts_them():
    """Over a transparent frame, the layer draws what render_effects draws for held-out poses of a dancing
    avatar (moved, its head turned): each particle's picture at its size, where the motion puts it. The
    renderer's own effects are the reference; an effect whose strength is off draws nothing, and pixels no
    sprite covers are the frame's, exactly."""
    from avatarcast.engines.avatar_world.reference import effect_sprites
    from avatarcast.engines.avatar_world.render import render_effects
    from avatarcast.engines.tiny.effects import EffectLayer

    av = BUILTIN_AVATARS[3]
    layer = EffectLayer.in_window(effect_sprites(av), CFG)
    x0, x1 = CFG.window_x0, CFG.window_x0 + CFG.window_width
    ious = {}
    for emotion in ("love", "sleepy", "excited", "surprised", "confused", "angry", "sad"):
        for t in (0.45, 2.2):
            q = pose_at(emotion, t, sample_variation(77), 1.0)
            truth = render_effects(av, q)[:, x0:x1, 3] > 127
            m = torch.from_numpy(_mv(av, q))[None]
            below = torch.full((1, 4, CFG.pad_height, CFG.window_width), -1.0)
            got = tensor_to_rgba(layer.over(below, m)[:, :, CFG.pad_top : CFG.pad_top + CFG.height])[0].numpy()
            drawn = got[..., 3] > 127
            assert truth.sum() > 100, (emotion, t)
            ious[(emotion, t)] = (truth & drawn).sum() / (truth | drawn).sum()
    # one picture a particle, placed by its own clock: 0.952 / 0.912 at quarter-pixel offsets, 0.945 / 0.869 at half
    # (one picture a whole effect at 12 phases of its clock: 0.753 / 0.374)
    assert np.mean(list(ious.values())) > 0.9 and min(ious.values()) > 0.8, ious
    # effects off: the frame comes back as it went in
    q = pose_at("idle", 1.0, sample_variation(77), 1.0)
    frame = torch.rand(1, 4, CFG.pad_height, CFG.window_width) * 2 - 1
    out = layer.over(frame, torch.from_numpy(_mv(av, q))[None])
    torch.testing.assert_close(out, frame, atol=1e-6, rtol=0)
    # training's gradient reaches the frame where no sprite covers it, and none under an opaque sprite
    frame = frame.clone().requires_grad_()
    love = torch.from_numpy(_mv(av, pose_at("love", 0.45, sample_variation(77), 1.0)))[None]
    layer.over(frame, love).sum().backward()
    alpha = layer.canvas(love[0].numpy())[3]
    assert frame.grad is not None
    g = frame.grad[0, 0].numpy()
    assert (alpha > 0.999).sum() > 100 and np.abs(g[alpha > 0.999]).max() < 1e-3 and np.all(g[alpha == 0] == 1.0)


def test_the_motion_carries_every_number_the_particles_need():
    """EffectLayer.particles (from a motion vector) are the renderer's particles of the pose the motion was made
    from: the same particles, in the same order, within a thousandth of a pixel and of a size, whatever the avatar,
    emotion, time, strength and head turn; a motion with a number that is not finite has none."""
    from dataclasses import astuple

    from avatarcast.engines.avatar_world.particles import EFFECTS, particles
    from avatarcast.engines.avatar_world.reference import effect_sprites
    from avatarcast.engines.avatar_world.render import avatar_effect_geometry, pose_cycles
    from avatarcast.engines.tiny.effects import EffectLayer

    seen, compared = set(), 0
    for av in (BUILTIN_AVATARS[0], BUILTIN_AVATARS[4], "random-900002"):
        layer = EffectLayer.in_window(effect_sprites(av), CFG)
        for emotion in ("love", "sleepy", "excited", "surprised", "confused", "angry", "sad", "idle"):
            for t, k in ((0.37, 1.0), (1.93, 0.6), (3.71, 0.35)):
                q = pose_at(emotion, t, sample_variation(int(t * 100)), k)
                want = particles(
                    avatar_effect_geometry(av, q), {n: getattr(q, n) for n in EFFECTS}, pose_cycles(q), q.face_dy
                )
                got = layer.particles(_mv(av, q))
                assert [(p.effect, p.slot, p.kind) for p in got] == [(p.effect, p.slot, p.kind) for p in want]
                for a, b in zip(got, want):
                    np.testing.assert_allclose(astuple(a)[3:], astuple(b)[3:], atol=1e-3, err_msg=f"{emotion} {a}")
                seen |= {p.kind for p in want}
                compared += len(want)
    assert compared > 200 and len(seen) >= 10, (compared, seen)  # nearly every kind, many particles
    bad = _mv(BUILTIN_AVATARS[0], pose_at("love", 0.5, sample_variation(1), 1.0))
    bad[0] = np.nan
    assert layer.particles(bad) == [] and layer.placements(bad) == []


def test_placements_many_are_placements_and_sampling_frame_by_frame():
    """EffectLayer.placements_many (the device compose's, all of an avatar's frames at once) places what placements
    and sampling place frame by frame, to the bit: which effects are on, their pictures, anchors, turns and regions;
    frames whose effect lands outside the window are left out of the regions but not of `on`."""
    from avatarcast.engines.avatar_world.reference import effect_sprites
    from avatarcast.engines.tiny.effects import EffectLayer

    av = BUILTIN_AVATARS[3]
    layer = EffectLayer.in_window(effect_sprites(av), CFG)
    emotions = ("love", "sleepy", "excited", "surprised", "confused", "angry", "sad", "idle")
    m = np.stack([_mv(av, pose_at(e, t, sample_variation(77), 1.0)) for e in emotions for t in (0.3, 1.1, 2.2)])
    # the same frames moved off the window (each effect lands outside) and turned (the up keypoints moved)
    off = m.copy()
    off[:, : 2 * N_POINTS : 2] += 3.0
    turned = m.copy()
    turned[:, 1 : 2 * N_POINTS : 2] += np.linspace(-0.2, 0.2, len(m))[:, None] * np.arange(N_POINTS) / N_POINTS
    m = np.concatenate([m, off, turned]).astype(np.float32)
    full = (0, 0, CFG.pad_height, CFG.window_width)
    want: dict[tuple[int, int], tuple] = {}
    on: dict[int, list[int]] = {}
    for f, x in enumerate(m):
        for p in layer.placements(x):
            on.setdefault(p.effect, []).append(f)
            w = layer.sampling(p, full)
            if w is not None:
                want[(p.effect, f)] = (p.level, p.phase, *p.target, w.c, w.s, w.y0, w.y1, w.x0, w.x1)
    got: dict[tuple[int, int], tuple] = {}
    for pl in layer.placements_many(m):
        assert pl.on.tolist() == on.pop(pl.effect)
        for i, f in enumerate(pl.frames.tolist()):
            got[(pl.effect, f)] = tuple(
                a[i].item() for a in (pl.level, pl.phase, pl.tx, pl.ty, pl.c, pl.s, pl.y0, pl.y1, pl.x0, pl.x1)
            )
    assert not on and got == want
    assert len(want) > 20 and len({e for e, _ in want}) > 3  # several effects placed
    assert len(want) < sum(len(layer.placements(x)) for x in m)  # and some landing outside


def test_a_decoder_with_an_atlas_copies_the_face_its_motion_asks_for():
    """A fresh decoder with an atlas moves the atlas face nearest to the motion's face fields (here: the
    laughing face, at a dancing pose), exactly as the same decoder without the atlas moves that face's frame:
    the face is copied, not drawn. The learnt residual can pick another face."""
    import dataclasses

    from avatarcast.engines.avatar_world.reference import atlas_frames, expression_faces
    from avatarcast.engines.tiny.motion import MotionShape

    av = BUILTIN_AVATARS[2]
    ref = _ref_tensor(av)
    atlas = frames_to_tensor(torch.from_numpy(atlas_frames(av)), CFG)[None]
    names = [e for e, _ in expression_faces()]
    laughing = dict(expression_faces())["laughing"]
    pose = dataclasses.replace(pose_at("excited", 0.7, sample_variation(3), 1.0), **laughing)
    m = torch.from_numpy(_mv(av, pose))[None]
    plain = MotionDecoder().eval()
    dec = MotionDecoder(dataclasses.replace(MotionShape(), atlas=11)).eval()
    dec.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        feats = plain.encode_reference(ref)
        _, laugh = plain(m, m, atlas[:, names.index("laughing")], feats, return_parts=True)
        _, canon = plain(m, m, ref, feats, return_parts=True)
        _, mixed = dec(m, m, ref, feats, return_parts=True, atlas=atlas)
        torch.testing.assert_close(mixed["moved"], laugh["moved"], atol=0.02, rtol=0)
        assert (laugh["moved"] - canon["moved"]).abs().max() > 0.5  # and that is not the canonical face
        dec.atlas_mix[2].bias[1 + names.index("sad")] = 1000.0
        _, sad = plain(m, m, atlas[:, names.index("sad")], feats, return_parts=True)
        _, mixed = dec(m, m, ref, feats, return_parts=True, atlas=atlas)
    torch.testing.assert_close(mixed["moved"], sad["moved"], atol=1e-4, rtol=0)
    with pytest.raises(ValueError):
        dec(m, m, ref, feats)  # an atlas decoder without its atlas


def test_a_residual_gives_a_saturated_copy_mask_generator_a_gradient():
    """Every trained decoder's copy logit went past 15 on every pixel: sigmoid's slope is 0 in float32 there, so
    the generator gets no gradient (tools/motion_copy.py). The same weights with a residual (MotionShape.residual,
    zero at first) draw the same frame, and the frame's loss reaches the residual's weights."""
    import dataclasses

    torch.manual_seed(3)
    shape = dataclasses.replace(MotionDecoder().shape, ref_channels=(8, 8, 8), mask_channels=(8, 8, 8))
    shape = dataclasses.replace(shape, gen_channels=(8, 8, 8), cond_dim=16)
    old = MotionDecoder(shape)
    with torch.no_grad():
        torch.nn.init.normal_(old.out.weight, std=0.05)
        old.out.bias[4] = 40.0  # saturated, as training left them
    new = MotionDecoder(dataclasses.replace(shape, residual=True))
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    assert sorted(missing) == ["res.bias", "res.weight"] and not unexpected
    from avatarcast.engines.avatar_world.reference import canonical_pose
    from tools.train_motion import _window
    from tools.train_tiny import to_window_tensor

    av = BUILTIN_AVATARS[1]
    ref = to_window_tensor(torch.from_numpy(_window(render_frame(av, canonical_pose())))[None], CFG)
    m = torch.from_numpy(_mv(av, pose_at("happy", 0.7, sample_variation(2), 1.0)))[None]
    rm = torch.from_numpy(_mv(av, canonical_pose()))[None]
    box = (96, 160, 96, 96)
    target = torch.rand(1, 4, 96, 96) * 2 - 1
    grads = {}
    for name, dec in (("old", old), ("new", new)):
        y = dec(m, rm, ref, dec.encode_reference(ref), box=box)
        (y - target).abs().mean().backward()
        grads[name] = (y.detach(), dec.out.weight.grad, getattr(dec, "res", None))
    torch.testing.assert_close(grads["old"][0], grads["new"][0])
    assert float(grads["old"][1].abs().max()) == 0.0  # the old path: nothing reaches the generator
    assert float(grads["new"][2].weight.grad.abs().max()) > 0
