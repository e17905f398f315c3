"""The tiny engine: sampler maths, network shapes, the shipped weights end to end, training."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avatarcast.engines.sampler import FlowMatchEulerSampler, ShortcutFlowSampler
from avatarcast.engines.tiny.config import TinyConfig
from avatarcast.engines.tiny.weights import DEFAULT_DIR, load_manifest

ROOT = Path(__file__).resolve().parents[2]


# --- sampler -----------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_shortcut_sampler_reaches_the_data_point_with_exact_velocity(steps):
    """With the true rectified-flow velocity (x1 - x)/(1 - t), Euler lands on x1 at any step count."""
    rng = np.random.default_rng(steps)
    x1 = rng.standard_normal(32)
    x = rng.standard_normal(32)
    s = ShortcutFlowSampler(steps=steps)
    assert s.timesteps == [i / steps for i in range(steps)]
    for t in s.timesteps:
        x = s.step((x1 - x) / (1 - t), t, x)
    np.testing.assert_allclose(x, x1, atol=1e-9)


def test_shortcut_sampler_model_step_size():
    assert ShortcutFlowSampler(steps=1).model_step_size == 1.0
    assert ShortcutFlowSampler(steps=4).model_step_size == 0.25
    # finer than the smallest trained shortcut: queried as a plain flow
    assert ShortcutFlowSampler(steps=64, min_shortcut=1 / 32).model_step_size == 0.0
    with pytest.raises(ValueError, match="steps must be"):
        ShortcutFlowSampler(steps=0)


def test_flow_match_euler_schedule():
    s = FlowMatchEulerSampler(steps=4, shift=5.0)
    assert len(s.timesteps) == 4 and s.sigma_list[0] == pytest.approx(1.0) and s.sigma_list[-1] == 0.0
    assert all(a > b for a, b in zip(s.sigma_list, s.sigma_list[1:]))
    # shift > 1 spends more of the trajectory at high noise
    assert s.sigma_list[1] > 0.75
    # integrating a constant velocity moves x by exactly sigma_0 * v
    x = np.zeros(3)
    for t in s.timesteps:
        x = s.step(np.ones(3), t, x)
    np.testing.assert_allclose(x, np.ones(3))
    d = FlowMatchEulerSampler(sigmas=[1.0, 0.75, 0.5, 0.25])  # a distilled 4-step schedule
    assert d.steps == 4 and d.timesteps == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="decreasing"):
        FlowMatchEulerSampler(sigmas=[0.5, 0.9])


# --- networks ----------------------------------------------------------------------------

SMALL = TinyConfig(
    enc_channels=(8, 16, 16),
    enc_blocks=(1, 1, 1),
    dec_channels=(16, 16, 8),
    dec_blocks=(1, 1, 0),
    den_channels=(32, 32, 32),
    cond_dim=32,
)


def test_network_shapes_and_frame_roundtrip():
    torch = pytest.importorskip("torch")
    from avatarcast.engines.tiny.model import (
        Decoder,
        Denoiser,
        Encoder,
        FrameDecoder,
        FrameEncoder,
        frames_to_tensor,
        tensor_to_frames,
    )

    torch.manual_seed(0)
    cfg = SMALL
    C, (H, W) = cfg.latent_channels, cfg.latent_hw
    assert (H, W) == (48, 56)
    frames = torch.randint(0, 256, (3, 360, 640, 4), dtype=torch.uint8)
    frames[..., 3] = 255  # opaque: premultiplication is then lossless
    x = frames_to_tensor(frames, cfg)
    assert x.shape == (3, 4, 384, 448) and float(x.min()) >= -1 and float(x.max()) <= 1
    back = tensor_to_frames(x, cfg)
    assert back.shape == (3, 360, 640, 4) and back.dtype == torch.uint8
    win = slice(cfg.window_x0, cfg.window_x0 + cfg.window_width)  # the window comes back, the rest is transparent
    assert int((back[:, :, win].int() - frames[:, :, win].int()).abs().max()) <= 1
    assert int(back[:, :, : cfg.window_x0].max()) == 0 and int(back[:, :, win.stop :].max()) == 0
    z = FrameEncoder(cfg, Encoder(cfg))(frames)
    assert z.shape == (3, C, H, W)
    # the decoder graph takes any crop of the grid and gives its cells' pixels
    assert FrameDecoder(cfg, Decoder(cfg))(z).shape == (3, 384, 448, 4)
    assert FrameDecoder(cfg, Decoder(cfg))(z[:, :, 8:20, 4:28]).shape == (3, 96, 192, 4)
    den = Denoiser(cfg)
    v = den(
        torch.randn(2, cfg.chunk_frames * C, H, W),
        torch.rand(2),
        torch.rand(2),
        torch.randn(2, cfg.context_frames * C, H, W),
        torch.randn(2, C, H, W),
        torch.tensor([0, 10]),
        torch.rand(2),
    )
    assert v.shape == (2, cfg.chunk_frames * C, H, W)


def _noise_left_after_training(cfg, steps: int = 80) -> float:
    """Flow-match a small denoiser on one fixed chunk; the share of the noise its 1-step sample keeps."""
    import torch

    from avatarcast.engines.tiny.model import Denoiser

    torch.manual_seed(0)
    C, T, K, (H, W) = cfg.latent_channels, cfg.chunk_frames, cfg.context_frames, cfg.latent_hw
    x1 = torch.nn.functional.interpolate(torch.randn(1, T * C, H // 4, W // 4), size=(H, W), mode="bilinear")
    x1 = x1 / x1.std()  # a smooth chunk: what a real latent chunk is next to per-cell noise
    ctx, ref, emo, inten = torch.zeros(1, K * C, H, W), torch.zeros(1, C, H, W), torch.zeros(1).long(), torch.ones(1)
    den = Denoiser(cfg)
    opt = torch.optim.Adam(den.parameters(), lr=2e-3)
    B = 8
    for _ in range(steps):
        x0, t = torch.randn(B, T * C, H, W), torch.rand(B)
        xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * x1
        v = den(
            xt, t, torch.zeros(B), ctx.expand(B, -1, -1, -1), ref.expand(B, -1, -1, -1), emo.expand(B), inten.expand(B)
        )
        loss = (v - (x1 - x0)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x0 = torch.randn(B, T * C, H, W)
        one = torch.ones(B)
        sample = x0 + den(
            x0, 0 * one, one, ctx.expand(B, -1, -1, -1), ref.expand(B, -1, -1, -1), emo.expand(B), inten.expand(B)
        )
    return float(((sample - x1) * x0).sum() / (x0 * x0).sum())


def test_denoiser_removes_noise_wider_than_its_first_level():
    """A patch-2 chunk has T*C*4 = 128 noise values per position; SMALL's U-Net has 32 channels there.

    A network that outputs the velocity must hand the noise through those channels and keeps most
    of it in its samples (speckle, whatever the step count); the default, which outputs the clean
    chunk, does not have to.
    """
    pytest.importorskip("torch")
    cfg = dataclasses.replace(SMALL, height=64, pad_height=64, width=64, window_x0=0, window_width=64)
    assert cfg.den_pred == "x" and cfg.chunk_frames * cfg.latent_channels * cfg.patch**2 > cfg.den_channels[0]
    assert _noise_left_after_training(cfg) < 0.1
    assert _noise_left_after_training(dataclasses.replace(cfg, den_pred="v")) > 0.5


def test_config_roundtrip():
    cfg = TinyConfig(chunk_frames=8)
    again = TinyConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.latent_hw == (48, 56) and again.pad_top == 12


def test_manifest_config_from_before_the_window_means_the_first_model():
    """A manifest without `arch` is the first model: whole frame, 16x downsampling, no patches, no crop."""
    old = {
        k: v
        for k, v in TinyConfig().to_dict().items()
        if k
        not in (
            "arch",
            "window_x0",
            "window_width",
            "patch",
            "enc_blocks",
            "dec_blocks",
            "background_latent",
            "crop_threshold",
            "crop_margin",
            "den_pred",
        )
    }
    old.update(
        latent_channels=16,
        downsample=16,
        enc_channels=[32, 64, 128, 128],
        dec_channels=[128, 64, 32, 16],
        latent_mean=[0.0] * 16,
        latent_std=[1.0] * 16,
    )
    cfg = TinyConfig.from_dict(old)
    assert (cfg.arch, cfg.window_x0, cfg.window_width, cfg.patch, cfg.crop_threshold) == (1, 0, 640, 1, 0.0)
    assert cfg.den_pred == "v" and cfg.latent_hw == (24, 40)


def test_config_from_before_den_pred_means_a_velocity_denoiser():
    """The first architecture-2 run's config.json has no den_pred: its denoiser outputs the velocity."""
    old = {k: v for k, v in TinyConfig().to_dict().items() if k != "den_pred"}
    assert TinyConfig.from_dict(old).den_pred == "v" and TinyConfig().den_pred == "x"
    with pytest.raises(ValueError, match="den_pred"):
        TinyConfig(den_pred="eps")


# --- the shipped weights -----------------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    from avatarcast.engines.tiny.engine import TinyEngine

    return TinyEngine.load(backend="onnxruntime", steps=2)


def test_shipped_weights_are_complete_small_and_verified():
    m = load_manifest()
    total = sum(p.stat().st_size for p in DEFAULT_DIR.iterdir())
    assert total < 50e6, f"shipped weights are {total / 1e6:.1f} MB, expected under 50 MB"
    for name in m.files:
        m.file(name, verify=True)  # raises WeightsError on a hash mismatch
    assert m.data_version.startswith("avatar-world")
    assert m.training["denoiser_steps"] > 1000 and m.training["ae_steps"] > 1000
    assert len(m.config.emotions) >= 10


def test_generation_is_deterministic_and_looks_like_an_avatar(engine):
    a = engine.generate_clip(2, "happy", 8, seed=7)
    b = engine.generate_clip(2, "happy", 8, seed=7)
    c = engine.generate_clip(2, "happy", 8, seed=8)
    assert a.shape == (8, 360, 640, 4) and a.dtype == np.uint8
    assert np.array_equal(a, b), "same seed must give identical frames"
    assert not np.array_equal(a, c), "another seed must give other frames"
    alpha = a[..., 3].astype(float) / 255
    assert alpha[:, :20, :20].max() < 0.1, "corners must stay transparent"
    cover = (alpha > 0.5).mean()
    assert 0.02 < cover < 0.4, f"the avatar should cover a few % of the frame, got {cover:.3f}"
    motion = np.abs(np.diff(alpha, axis=0)).mean()
    assert motion > 1e-3, f"a happy dance must move (mean alpha change {motion:.5f})"


def test_emotion_switch_mid_stream_continues_smoothly(engine):
    st = engine.start_stream(0, "sad", 1.0, seed=3)
    engine.sample_chunks([st])
    sad = engine.next_chunk([st])[0]
    engine.set_emotion(st, "excited", 1.0)
    first = engine.next_chunk([st])[0]
    later = np.concatenate([engine.next_chunk([st])[0] for _ in range(2)])
    a = lambda f: f[..., 3].astype(float) / 255  # noqa: E731
    # the first new frame continues from the last sad frame (no cut) ...
    seam = np.abs(a(first[:1]) - a(sad[-1:])).mean()
    # ... and the stream then moves into a different motion
    change = np.abs(a(later).mean(0) - a(sad).mean(0)).mean()
    assert seam < 0.05, f"seam between chunks too large: {seam:.4f}"
    assert change > seam / 4, (change, seam)
    with pytest.raises(ValueError, match="unknown emotion"):
        engine.set_emotion(st, "furious")


def test_batched_streams_match_single_streams(engine):
    s1, s2 = engine.start_stream(0, "love", seed=1), engine.start_stream(3, "angry", seed=2)
    batched = engine.sample_chunks([s1, s2])
    t1, t2 = engine.start_stream(0, "love", seed=1), engine.start_stream(3, "angry", seed=2)
    single = np.concatenate([engine.sample_chunks([t1]), engine.sample_chunks([t2])])
    np.testing.assert_allclose(batched, single, atol=2e-3)


@pytest.mark.slow
def test_cli_render_writes_playable_video(tmp_path):
    import av

    for name in ("happy.mp4", "happy.webm"):
        out = tmp_path / name
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "avatarcast.realtime.cli",
                "render",
                "--avatar",
                "1",
                "--emotion",
                "idle:0.5,happy:1",
                "--seconds",
                "1",
                "-o",
                str(out),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        with av.open(str(out)) as f:
            frames = [fr for fr in f.decode(video=0)]
        assert len(frames) == 12, f"{name}: expected 12 frames (1.5 s at 8 fps), got {len(frames)}"
        assert (frames[0].width, frames[0].height) == (640, 360)


# --- training ----------------------------------------------------------------------------


@pytest.mark.slow
def test_training_script_runs_and_resumes_on_cpu(tmp_path):
    """A few real optimisation steps of both stages on a tiny config, then a resume and the denadv stage.

    The denoiser starts after 2 clips and takes in the rest as they render; the resume reads the cache.
    """
    pytest.importorskip("torch")
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps(SMALL.to_dict()))
    cmd = [
        sys.executable,
        "-m",
        "tools.train_tiny",
        "--work",
        str(tmp_path / "work"),
        "--ckpt",
        str(ck),
        "--stages",
        "ae,denoiser",
        "--ae-minutes",
        "0",
        "--den-minutes",
        "0",
        "--random-avatars",
        "0",
        "--variants",
        "1",
        "--den-variants",
        "1",
        "--ae-clips",
        "4",
        "--ae-batch",
        "2",
        "--den-batch",
        "4",
        "--min-steps",
        "3",
        "--stats-clips",
        "2",
        # the ae stage's held-out figures from one clip of each of the 12 held-out avatars, not three (rendering
        # them was most of that stage's time here): the run still measures and reports them
        "--heldout-seeds",
        "1",
        "--clip-limit",
        "6",
        "--workers",
        "2",
        "--device",
        "cpu",
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    import torch

    ae = torch.load(ck / "ae.pt")
    den = torch.load(ck / "den_ema.pt")
    assert ae["step"] > 0 and den["step"] > 0
    assert (ck / "ae_loss.png").exists() and (ck / "den_loss.png").exists()
    cfg = json.loads((ck / "config.json").read_text())
    assert cfg["latent_std"] != [1.0] * 8, "latent statistics must be measured"
    assert cfg["crop_threshold"] > 0, "the empty cell's distance must be measured"
    r = subprocess.run(
        cmd[:-6]
        + ["--stages", "denoiser,denadv", "--clip-limit", "6", "--workers", "2", "--device", "cpu"]
        + ["--adv-minutes", "0", "--adv-batch", "2", "--adv-flow-batch", "4", "--adv-critic-warmup", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.load(ck / "den_ema.pt")["step"] > den["step"], "a second run must resume, not restart"
    report = json.loads((ck / "report.json").read_text())
    assert report["ae"]["frames"] == 12 * 4, "the ae stage's held-out figures: one 4-frame clip of each avatar"
    assert report["denadv"]["critic_steps"] >= 3, "denadv trains the denoiser against its own critic"
    assert (ck / "denadv_disc.pt").exists() and (ck / "samples_denadv.png").exists()
    pre = torch.load(ck / "den_ema_pre.pt", map_location="cpu")
    assert pre["step"] == report["denoiser"]["step"] < report["denadv"]["step"], "the denoiser denadv started from"


def test_paired_decoder_loss_is_zero_on_the_true_chunk_and_trains_on_a_wrong_one():
    """decft's paired loss: a sample equal to the true chunk costs nothing; a wrong one costs and trains.

    Seed 3's first draw takes the whole grid (a crop's zero-padded border would differ a little from the
    target, cropped from the whole grid's decoding, as in every crop the decoder trains on).
    """
    torch = pytest.importorskip("torch")
    import argparse
    import copy

    from avatarcast.engines.tiny.model import Decoder
    from tools.train_tiny import paired_loss

    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL)
    dec = Decoder(cfg)
    teacher = copy.deepcopy(dec).eval().requires_grad_(False)
    C, T = cfg.latent_channels, cfg.chunk_frames
    h, w = cfg.pad_height // cfg.downsample, cfg.window_width // cfg.downsample
    x1 = torch.randn(2, T * C, h, w)
    mean, std = torch.zeros(1, C, 1, 1), torch.ones(1, C, 1, 1)
    args = argparse.Namespace(avatar_boost=4.0, edge_weight=0.5)
    frame = 1
    true_raw = x1.reshape(2, T, C, h, w)[:, frame]
    whole = 3
    assert np.random.default_rng(whole).random() < 0.25
    same = paired_loss(dec, teacher, true_raw, x1, frame, mean, std, cfg, args, np.random.default_rng(whole))
    assert float(same) < 1e-6
    wrong_raw = true_raw + torch.randn(true_raw.shape)
    wrong = paired_loss(dec, teacher, wrong_raw, x1, frame, mean, std, cfg, args, np.random.default_rng(whole))
    assert float(wrong) > 1e-3
    wrong.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in dec.parameters())


def test_denadv_losses_reach_the_denoiser_through_the_frozen_decoder():
    """denadv: the served sample's decoding carries the anchor's and the critic's gradients to the denoiser only."""
    torch = pytest.importorskip("torch")
    import argparse

    from avatarcast.engines.tiny.model import Decoder, Denoiser
    from tools.train_denadv import generator_losses, last_layer, served_frames
    from tools.train_tiny import PatchDiscriminator

    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, height=64, pad_height=64, width=64, window_x0=0, window_width=64)
    C, T, K, (H, W) = cfg.latent_channels, cfg.chunk_frames, cfg.context_frames, cfg.latent_hw
    den, dec, disc = Denoiser(cfg), Decoder(cfg).eval().requires_grad_(False), PatchDiscriminator()
    batch = (
        torch.randn(2, T * C, H, W),
        torch.randn(2, K * C, H, W),
        torch.randn(2, C, H, W),
        torch.tensor([2, 5]),
        torch.ones(2),
    )
    mean, std = torch.zeros(1, C, 1, 1), torch.ones(1, C, 1, 1)
    gen = torch.Generator().manual_seed(0)
    fake, real = served_frames(den, dec, batch, cfg, 2, 1, gen, mean, std)
    assert fake.shape == real.shape == (2, 4, 64, 64) and fake.requires_grad and not real.requires_grad
    truth = batch[0].reshape(2, T, C, H, W)[:, 1]
    assert torch.allclose(real, dec(truth), atol=1e-6), "the critic's real side is the true chunk's decoding"
    args = argparse.Namespace(avatar_boost=4.0, edge_weight=0.5, adv_weight=0.5)
    anchor, g, lam = generator_losses(fake, real, disc, last_layer(den), args)
    assert float(anchor) > 0 and 0 < float(lam) < 1e3
    (anchor + lam * g).backward()
    assert all(p.grad is None for p in dec.parameters()), "the decoder is frozen"
    assert float(last_layer(den).grad.abs().sum()) > 0, "the losses reach the denoiser's output layer"
    copy = real.clone().requires_grad_(True)
    same, _, _ = generator_losses(copy, real, disc, copy, args)
    assert float(same) < 1e-6, "a sample that decodes to the true chunk costs the anchor nothing"


def test_critic_step_adds_the_r1_penalty_on_the_real_side():
    """disc_step (denadv's critic): with r1 > 0 the critic's loss gains (r1 / 2) E ||grad_x D(real)||^2, computed
    here by hand."""
    torch = pytest.importorskip("torch")
    import copy

    from tools.train_tiny import PatchDiscriminator, disc_step

    torch.manual_seed(0)
    disc = PatchDiscriminator(ch=16, layers=2)
    real, fake = torch.rand(3, 4, 32, 32), torch.rand(3, 4, 32, 32)
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(disc(x).sum(), x)
    expected = 0.5 * 2.0 * float(grad.pow(2).flatten(1).sum(1).mean())
    plain, penalized = copy.deepcopy(disc), copy.deepcopy(disc)
    cpu = torch.device("cpu")
    loss0, pen0 = disc_step(plain, torch.optim.SGD(plain.parameters(), lr=0.1), real, fake, cpu, 0.0)
    loss2, pen2 = disc_step(penalized, torch.optim.SGD(penalized.parameters(), lr=0.1), real, fake, cpu, 2.0)
    assert float(pen0) == 0.0 and float(pen2) == pytest.approx(expected, rel=1e-4) and expected > 0
    assert float(loss0) == pytest.approx(float(loss2)), "the hinge part is the same before the step"
    moved = [float((a - b).abs().sum()) for a, b in zip(plain.parameters(), penalized.parameters(), strict=True)]
    assert max(moved) > 0, "the penalty changes the critic's update"


def test_a_kept_checkpoint_with_only_ema_weights_resumes_the_denoiser_from_them(tmp_path):
    """tools/ckpt keeps den_ema.pt only: the trained network must start from it, not from random weights."""
    torch = pytest.importorskip("torch")
    from avatarcast.engines.tiny.model import Denoiser
    from tools.train_tiny import half_state, load_denoiser, save_small

    torch.manual_seed(0)
    trained = Denoiser(SMALL)
    save_small({"model": half_state(trained.state_dict()), "step": 1234}, tmp_path / "den_ema.pt")
    model, ema, step = load_denoiser(tmp_path, SMALL, torch.device("cpu"))
    assert step == 1234
    for a, b in zip(model.state_dict().values(), ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    w = next(iter(trained.state_dict().values()))
    assert torch.allclose(next(iter(model.state_dict().values())), w.half().float())
