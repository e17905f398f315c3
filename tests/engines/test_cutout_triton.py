"""The Triton kernels of the cut-out draw and the device compose (engines/tiny/cutout_triton.py, triton_kernels.py)
against the torch ops they replace and the numpy draw, on the CPU through Triton's interpreter (TRITON_INTERPRET=1:
the same kernel source, run by numpy) where there is no GPU. Skipped where Triton is not installed: it comes with
torch's CUDA wheels, not with the CPU build this project's install takes (`pip install triton` adds it).

Tolerance: the draw's arithmetic is cutout_torch's in float32, in another order (each sub-pixel's layers in
registers instead of a gather and a scatter a slot), so the bound is test_cutout_torch's (1e-3 in [-1, 1]; measured
2.2e-5 to 3.0e-5 against numpy on pip, luna and random-424242, 2026-12-07). The compose's arithmetic is the torch
compose's to the operation: its uint8 frames are the torch compose's within a level.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():  # the interpreter: read when triton is imported, so before
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from avatarcast.engines.avatar_world.motions import pose_at, sample_variation  # noqa: E402
from avatarcast.engines.tiny import cutout, cutout_torch  # noqa: E402
from avatarcast.engines.tiny.motion_compose import DeviceCompose  # noqa: E402
from avatarcast.engines.tiny.motion_engine import MotionEngine  # noqa: E402
from avatarcast.vocabulary import EMOTIONS  # noqa: E402

MAX_ABS = 1e-3


@pytest.fixture(scope="module")
def device():
    """CUDA where there is one, else the CPU through the interpreter."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="module")
def engine() -> MotionEngine:
    torch.set_num_threads(1)
    return MotionEngine.from_folder(None, draw="cutout", threads=1)


def test_the_triton_draw_draws_the_torch_and_numpy_frames(engine, device):
    """Two avatars in one call (luna's wand: pair- and point-moved layers; the random avatar's parametric limbs),
    frames of every kind of emotion, boxes of two sizes (the flat output's runs), a frame off the map (transparent)."""
    names = ["luna", "random-424242"]
    cuts = [engine.prepared_avatar(a)[1].ref for a in names]
    avatars = [cutout_torch.to_device_layers(c, device) for c in cuts]
    m = [
        np.stack(
            [engine.motion(a, pose_at(e, 1.3 + k, sample_variation(900_700 + k), 0.9)) for k, e in enumerate(EMOTIONS)]
        ).astype(np.float32)[i::5][:2]
        for i, a in enumerate(names)
    ]
    m[1][1, 5] = np.nan  # cutout.draw's transparent frame
    boxes = [engine.draw_box(x[np.isfinite(x).all(1)]) for x in m]
    assert boxes[0][2:] != boxes[1][2:]
    which = np.repeat([0, 1], 2)
    origins = np.concatenate([np.tile(b[:2], (2, 1)) for b in boxes])
    sizes = np.concatenate([np.tile(b[2:], (2, 1)) for b in boxes])
    motions = np.concatenate(m)
    texels = cutout_torch.joined_texels(avatars)
    eager = cutout_torch.draw_frames_t(avatars, which, motions, origins, sizes, device, texels)
    got = cutout_torch.draw_frames_t(avatars, which, motions, origins, sizes, device, texels, kernel="triton")
    assert [g.shape for g in got] == [e.shape for e in eager]
    for i, (g, e) in enumerate(zip(got, eager)):
        g = g.cpu().numpy()
        want = cutout.draw(cuts[i], m[i], boxes[i])
        assert np.abs(g - e.cpu().numpy()).max() <= MAX_ABS
        assert np.abs(g - want).max() <= MAX_ABS, (i, np.abs(g - want).max())
        assert (want[:, 3] > -1.0).mean() > 0.05  # the avatar is drawn (not two empty boxes agreeing)
    assert (got[1][1].cpu().numpy() == -1.0).all()


def test_the_triton_compose_composes_the_torch_composes_frames(engine, device):
    """Streams of two avatars with effects on (love's hearts, sleepy's zzz, happy's sparkles): the kernel lays the
    effects' canvas over the window and writes uint8 RGBA; the torch compose does it with ops."""
    specs = [("pip", "love", 1), ("random-424242", "sleepy", 2), ("pip", "happy", 3)]
    lat = engine.sample_chunks([engine.start_stream(a, e, seed=s) for a, e, s in specs])[:, :2]
    B, T = lat.shape[:2]
    raw = (lat.reshape(B, T, -1) * engine.std + engine.mean).astype(np.float32)
    on_torch = MotionEngine.from_folder(None, draw="cutout", backend="torch", device="cpu")
    comp = DeviceCompose(on_torch.window, device)
    avatars = [on_torch._avatar(a) for a, _, _ in specs]
    sprites = [comp.sprites(a.effects) for a in avatars]
    boxes = [on_torch.bucket_box(on_torch.draw_box(r)) for r in raw]
    drawn = on_torch.backend.draw_boxes_t([a.ref for a in avatars], raw, boxes)
    drawn = [d.to(device) for d in drawn]
    shown, _ = comp._placed(raw, sprites)
    assert len(shown) > 0  # effects on: the canvases are laid
    want = comp.frames(drawn, boxes, raw, sprites).cpu().numpy()
    comp.use_kernel("triton")
    got = comp.frames(drawn, boxes, raw, sprites).cpu().numpy()
    assert got.shape == want.shape == (B, T, on_torch.window.height, on_torch.window.width, 4)
    d = np.abs(got.astype(int) - want)
    assert d.max() <= 1 and (d > 0).mean() < 1e-4, (d.max(), (d > 0).mean())
    assert (want[..., 3] > 0).mean() > 0.02
