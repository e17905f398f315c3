"""The cut-out draw on torch (engines/tiny/cutout_torch.py) draws the numpy draw's frames (engines/tiny/cutout.py).

Tolerance (measured 2026-12-06, torch 2.13 CPU, 2-core machine): the sampling coordinates are float32 on the device
and float64 in numpy, and the skin's redness is mixed after sampling rather than before: max |torch - numpy| 3.0e-5
to 6.1e-5 in [-1, 1] (a 130th of a uint8 level), PSNR 127-135 dB over 22 frames (every emotion, twice) of 6 avatars
(tools.cutout_torch_check; the same on an H100: docs/bench/cutout_gpu_2026-12-06). The bounds below, 1e-3 (an
eighth of a level) and 90 dB, fail on any misplaced layer, a wrong atlas pick or a limb's stretch gone wrong (each
moves whole strokes, tenths of the range), and leave room for a GPU's rounding.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from avatarcast.engines.avatar_world.motions import pose_at, sample_variation  # noqa: E402
from avatarcast.engines.avatar_world.reference import canonical_pose  # noqa: E402
from avatarcast.engines.backends.base import BackendError  # noqa: E402
from avatarcast.engines.tiny import cutout, cutout_torch  # noqa: E402
from avatarcast.engines.tiny.motion_engine import MotionEngine  # noqa: E402
from avatarcast.engines.tiny.motion_weights import (  # noqa: E402
    auto_draw,
    cutout_runs_on,
    load_motion_manifest,
    motion_folder,
)
from avatarcast.vocabulary import EMOTIONS  # noqa: E402

MAX_ABS = 1e-3
MIN_PSNR = 90.0
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def engine() -> MotionEngine:
    torch.set_num_threads(1)
    return MotionEngine.from_folder(None, draw="cutout", threads=1)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return 10 * np.log10(4.0 / mse) if mse else float("inf")  # peak-to-peak 2


def _motions(engine: MotionEngine, avatar: str, seed: int) -> np.ndarray:
    """Every emotion's pose, held-out variations, at an off-beat time: (len(EMOTIONS), D) raw motions."""
    return np.stack(
        [
            engine.motion(avatar, pose_at(e, 1.7 + 0.9 * k, sample_variation(seed + k), 0.9))
            for k, e in enumerate(EMOTIONS)
        ]
    ).astype(np.float32)


@pytest.mark.parametrize("avatar", ["pip", "luna", "random-424242"])
def test_torch_draws_the_numpy_frames_for_every_emotion(engine, avatar):
    """luna holds the wand (a pair-moved stick, a point-moved star); the random avatar's parts are parametric."""
    key, prepared = engine.prepared_avatar(avatar)
    cut = prepared.ref
    dev = cutout_torch.to_device_layers(cut, CPU)
    m = _motions(engine, avatar, 900_300)
    box = engine.draw_box(m)
    want = cutout.draw(cut, m, box)
    got = cutout_torch.draw_t(dev, m, np.tile(box[:2], (len(m), 1)), np.tile(box[2:], (len(m), 1)), CPU)[0].numpy()
    assert got.shape == want.shape
    err = np.abs(got - want)
    assert err.max() <= MAX_ABS and _psnr(got, want) >= MIN_PSNR, (err.max(), _psnr(got, want))
    assert (want[:, 3] > -1.0).mean() > 0.05  # the avatar is in the box (not two empty frames agreeing)


def test_streams_of_other_avatars_and_boxes_draw_as_each_alone(engine):
    """One draw_boxes_t call (the engine's on CUDA): streams of two avatars, interleaved, each in its own box (of
    other sizes: one flat buffer of canvases), an avatar's streams in two goes (max_rows), against numpy stream by
    stream; and draw_streams_t (boxes of one size)."""
    avatars = ["pip", "random-424242", "pip", "pip"]
    prepared = [engine.prepared_avatar(a)[1].ref for a in avatars]
    devs = {id(c): cutout_torch.to_device_layers(c, CPU) for c in prepared}
    refs = [devs[id(c)] for c in prepared]
    m = np.stack([_motions(engine, a, 900_400 + 10 * i)[2 * i : 2 * i + 4] for i, a in enumerate(avatars)])
    boxes = [engine.draw_box(x) for x in m]
    assert len({b[2:] for b in boxes}) > 1  # the streams' boxes do differ in size
    backend = cutout_torch.TorchCutoutBackend.from_folder(load_motion_manifest(motion_folder(None, "cutout")), "cpu")
    backend.max_rows = 8  # pip's three streams in two goes: the cap on frames a go
    got = backend.draw_boxes_t(refs, m, boxes)
    for i in range(len(avatars)):
        want = cutout.draw(prepared[i], m[i], boxes[i])
        assert got[i].shape == want.shape and np.abs(got[i].numpy() - want).max() <= MAX_ABS, i
    one = (0, 0, 384, 448)  # the whole window
    same = backend.draw_streams_t(refs[:2], torch.from_numpy(m[:2]), torch.zeros(2, m.shape[2]), [one], host=m[:2])
    for i in range(2):
        assert np.abs(same[i].numpy() - cutout.draw(prepared[i], m[i], one)).max() <= MAX_ABS


def _ops(fn, *args) -> int:
    """How many aten ops fn(*args) dispatches (on CUDA each is a kernel launch or more), views included."""
    from tools.cutout_torch_ops import count_ops

    return sum(count_ops(fn, *args)[1].values())


def test_a_call_over_many_avatars_issues_the_ops_of_one(engine):
    """The device's ops do not grow with the avatars in a call (a go per avatar was ~25 kernels a layer: 32,000
    launches a chunk of 200 streams on an H100, docs/bench/cutout_gpu_2026-12-06): streams of three avatars issue
    no more ops than as many streams of the one with the most layers, whose slots they share."""
    names = ["pip", "luna", "random-424242"]
    devs = {a: cutout_torch.to_device_layers(engine.prepared_avatar(a)[1].ref, CPU) for a in names}
    most = max(names, key=lambda a: len(devs[a].textures))
    m = np.stack([_motions(engine, a, 900_600 + 10 * i)[:2] for i, a in enumerate(names * 2)])
    box = engine.draw_box(m.reshape(-1, m.shape[2]))  # one size: as many runs of one size in both calls
    backend = cutout_torch.TorchCutoutBackend.from_folder(load_motion_manifest(motion_folder(None, "cutout")), "cpu")
    with torch.inference_mode():
        one = _ops(backend.draw_boxes_t, [devs[most]] * len(m), m, [box] * len(m))
        many = _ops(backend.draw_boxes_t, [devs[a] for a in names * 2], m, [box] * len(m))
    assert many <= one + 4, (many, one)  # + the joined texels
    assert one < 250, one  # some 90 ops a call (half of them views) and 3 a slot (33-37 slots)


def test_a_motion_off_the_map_draws_nothing_on_torch_too(engine):
    key, prepared = engine.prepared_avatar("pip")
    m = engine.motion("pip", canonical_pose())
    bad = np.stack([m, m.copy(), m * 1e6]).astype(np.float32)
    bad[1, 3] = np.nan
    dev = cutout_torch.to_device_layers(prepared.ref, CPU)
    got = cutout_torch.draw_t(dev, bad, np.zeros((3, 2), np.int64), np.full((3, 2), 64), CPU)[0].numpy()
    np.testing.assert_allclose(got, cutout.draw(prepared.ref, bad, (0, 0, 64, 64)), atol=MAX_ABS)
    assert (got[1:] == -1.0).all()


def test_the_engine_on_torch_serves_the_numpy_engines_frames(engine):
    """The whole chunk (sampled motions, the box, the effects laid by the compose) from `--backend torch
    --motion-draw cutout`: the host compose (CPU default) and the device compose with the streams batched (CUDA's
    path, here on the CPU) both give the numpy engine's uint8 frames within a level."""
    from avatarcast.engines.tiny.motion_compose import DeviceCompose

    on_torch = MotionEngine.from_folder(None, draw="cutout", backend="torch", device="cpu")
    assert on_torch.backend.draws_layers and on_torch.weights_hash == engine.weights_hash
    specs = [("pip", "happy", 1), ("random-424242", "angry", 2), ("pip", "love", 3)]
    lat = engine.sample_chunks([engine.start_stream(a, e, seed=s) for a, e, s in specs])
    want = engine.decode_chunks([engine.start_stream(a, e, seed=s) for a, e, s in specs], lat)
    got = on_torch.decode_chunks([on_torch.start_stream(a, e, seed=s) for a, e, s in specs], lat)
    assert np.abs(got.astype(int) - want).max() <= 1
    be = on_torch.backend
    be.batch_streams, be.compose_device = True, "cpu"
    on_torch._device_compose = DeviceCompose(on_torch.window, "cpu")
    on_torch._avatars.clear()  # prepared again, with device sprites
    batched = on_torch.decode_chunks([on_torch.start_stream(a, e, seed=s) for a, e, s in specs], lat)
    # the device compose lays overlapping effects one after the other (motion_compose.py): a level or two there
    d = np.abs(batched.astype(int) - want)
    assert d.max() <= 3 and (d > 1).mean() < 1e-4, (d.max(), (d > 1).mean())
    with pytest.raises(BackendError):
        be.draw(on_torch._avatar("pip").ref, lat[0, :, :, 0, 0], lat[0, 0, :, 0, 0], (0, 0, 8, 8), cheaper=True)


def test_where_the_cutout_draw_runs_is_one_predicate():
    from avatarcast.realtime.settings import Settings, SettingValueError

    assert cutout_runs_on("onnxruntime", "cpu") and cutout_runs_on("torch", "cuda") and cutout_runs_on("torch", "cpu")
    assert not cutout_runs_on("onnxruntime", "cuda") and not cutout_runs_on("tensorrt", "cuda")
    s = Settings(engine="motion", backend="torch", motion_draw="cutout")
    s.validate()
    assert s.motion_folder_draw == "cutout"
    assert Settings(engine="motion", backend="torch").motion_folder_draw == auto_draw("torch", "auto")
    with pytest.raises(SettingValueError):
        Settings(engine="motion", backend="onnxruntime", device="cuda", motion_draw="cutout").validate()
    with pytest.raises(BackendError, match="cut-out draw runs on onnxruntime on the CPU or on torch"):
        MotionEngine.from_folder(None, draw="cutout", backend="onnxruntime", device="cuda")


def test_auto_draws_the_cutout_on_cuda_where_triton_is(monkeypatch):
    """--motion-draw auto on torch: the cut-out draw on CUDA with Triton's kernels (faster than the copy decoder
    there, docs/bench/cutout_triton_2026-12-07), the copy decoder on CUDA without Triton and on the CPU; the
    backend and the compose pick Triton's kernels on CUDA only."""
    from avatarcast.engines.tiny import cutout_triton

    assert auto_draw("onnxruntime", "cpu") == "cutout" and auto_draw("torch", "cpu") == "copy"
    monkeypatch.setattr(cutout_triton, "available", lambda: None)
    assert auto_draw("torch", "cuda") == "cutout" and auto_draw("torch", "cuda:1") == "cutout"
    assert cutout_torch.default_kernel(torch.device("cuda")) == "triton"
    assert cutout_torch.default_kernel(CPU) == "eager" and auto_draw("torch", "cpu") == "copy"
    monkeypatch.setattr(cutout_triton, "available", lambda: "Triton is not installed")
    assert auto_draw("torch", "cuda") == "copy" and cutout_torch.default_kernel(torch.device("cuda")) == "eager"
    backend = cutout_torch.TorchCutoutBackend.from_folder(load_motion_manifest(motion_folder(None, "cutout")), "cpu")
    assert backend.kernel == "eager"
    with pytest.raises(BackendError, match="Triton is not installed"):
        backend.use_kernel("triton")
    with pytest.raises(BackendError, match="one of eager, compiled, triton"):
        backend.use_kernel("cuda-graphs")


def test_the_boxes_of_all_streams_at_once_are_each_streams_box(engine):
    """MotionEngine.draw_boxes (one go over a chunk's streams, CUDA's path) gives draw_box's box for each stream:
    sampled chunks of 40 streams in every emotion over the module's three avatars (the boxes read only the motions;
    a new avatar costs a second to prepare), and streams off the window to each side and partly off it."""
    avatars = ("pip", "luna", "random-424242")
    specs = [(avatars[i % 3], engine.emotions[i % len(engine.emotions)], 5 + i) for i in range(40)]
    states = [engine.start_stream(a, e, 1.0, s) for a, e, s in specs]
    for _ in range(2):
        lat = engine.sample_chunks(states)
        raw = (lat.reshape(len(states), lat.shape[1], -1) * engine.std + engine.mean).astype(np.float32)
        raw[0], raw[1], raw[2] = 5.0, -5.0, -0.999  # off to the right and below, off to the left and above, a corner
        raw[3, :, 0] += 1.3  # partly off the right side
        assert engine.draw_boxes(raw) == [engine.draw_box(r) for r in raw]
