"""The shipped motion folders on torch: their graphs' weights read back into torch networks
(engines/tiny/motion_graph_weights.py) draw the frames onnxruntime draws, and a graph that does not fill them is
refused with a typed error.

Tolerances (measured 2026-12-06, 2-core CPU, torch 2.13 CPU against onnxruntime, tests below):
- the denoiser (int8 weights, dequantized as DequantizeLinear does): max |torch - onnxruntime| 1.9e-6 on a velocity
  whose spread is 2.2, so 1e-4; the sampled motions the same.
- the decoder's part-mask network is static int8 (QDQ): torch fake-quantizes each activation as the graph does, but
  its float inputs differ from onnxruntime's by ~5e-6 (grid sampling, the written-out softmax), which moves a value
  that sits on a rounding edge by one quantization step, and the step carries through 11 quantized convolutions to
  the part logits. A few pixels on the edge between two parts (or of the silhouette) then take the other side's
  colour: max up to 2 (the range), in 0.06-0.37% of a box's values (pip, kiko, random-900008, both folders and the
  cheaper rung); onnxruntime itself moves by 0.056 between its optimized and its reference (unoptimized) runs of the
  same graph. Hence a mean and a share, not a max: PSNR over the box >= 40 dB (measured 48.7-65.0) and under 1% of
  values more than two uint8 levels apart (a margin for other CPUs' rounding). The float (non-int8) graph of
  test_motion_onnx.py's exported folder agrees within 2 levels.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from avatarcast.engines.tiny.motion_engine import MotionEngine  # noqa: E402
from avatarcast.engines.tiny.motion_graph_weights import GraphWeightsError  # noqa: E402
from avatarcast.engines.tiny.motion_torch import TorchMotionBackend  # noqa: E402
from avatarcast.engines.tiny.motion_weights import (  # noqa: E402
    GRAPHS,
    SHIPPED,
    load_motion_manifest,
    motion_folder,
    write_motion_manifest,
)

SPECS = {"copy": ("pip", "happy", 3), "residual": ("random-900008", "love", 5)}  # one avatar each: a render costs
LEVEL = 2 / 255  # one uint8 level in the decoder's [-1, 1]


@pytest.fixture(scope="module", params=["copy", "residual"])
def engines(request) -> tuple[MotionEngine, MotionEngine, tuple]:
    """The shipped folder on onnxruntime and on torch, and a spec of the stream to draw."""
    torch.set_num_threads(2)
    draw = request.param
    return (
        MotionEngine.from_folder(None, threads=2, draw=draw),
        MotionEngine.from_folder(None, threads=2, draw=draw, backend="torch", device="cpu"),
        SPECS[draw],
    )


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * np.log10(4.0 / mse) if mse else float("inf")  # peak-to-peak 2


def test_torch_samples_and_draws_what_onnxruntime_does(engines) -> None:
    """The denoiser's velocity and the sampled motions to 1e-4; the drawn box (and the cheaper rung's, where the folder
    names one) to the module docstring's tolerance."""
    onnx_e, torch_e, (av, emotion, seed) = engines
    a, b = onnx_e.start_stream(av, emotion, 0.9, seed), torch_e.start_stream(av, emotion, 0.9, seed)
    r = np.random.default_rng(0)
    T, D = onnx_e.cfg.chunk_frames, onnx_e.cfg.latent_channels
    x = r.standard_normal((2, T * D, 1, 1)).astype(np.float32)
    args = (x, np.array([0.0, 0.5], np.float32), np.full(2, 0.5, np.float32), np.stack([a.ctx, b.ctx]))
    args += (np.stack([a.ref, b.ref]), np.array([2, 7]), np.array([0.9, 1.0], np.float32))
    want_v, got_v = onnx_e.backend.denoise(*args), torch_e.backend.denoise(*args)
    assert np.abs(want_v - got_v).max() < 1e-4 and want_v.std() > 0.5
    for _ in range(2):  # off the rest pose
        lat = onnx_e.sample_chunks([a])
        np.testing.assert_allclose(torch_e.sample_chunks([b]), lat, atol=1e-4)
    m = (lat[0, :2, :, 0, 0] * onnx_e.std + onnx_e.mean).astype(np.float32)  # two frames: torch's CPU draw is slow
    box = onnx_e.draw_box(m)
    ra, rb = onnx_e._avatar(av), torch_e._avatar(av)
    assert torch_e.backend.cheaper_draw == onnx_e.backend.cheaper_draw
    for cheaper in [False, True] if onnx_e.backend.cheaper_draw else [False]:
        want = onnx_e.backend.draw(ra.ref, m, ra.ref_motion, box, cheaper)
        got = torch_e.backend.draw(rb.ref, m, rb.ref_motion, box, cheaper)
        db, apart = _psnr(want, got), float((np.abs(want - got) > 2 * LEVEL).mean())
        assert db >= 40 and apart < 1e-2, (av, cheaper, db, apart)
        assert (want[:, 3] > 0).mean() > 0.1  # an avatar is drawn


@pytest.mark.parametrize("engines", ["copy"], indirect=True)  # the batched arithmetic is both folders' alike
def test_the_batched_draw_is_each_streams_draw_over_the_common_box(engines) -> None:
    """On CUDA decode_chunks draws every stream in one call, over the streams' common box: row for row what the
    stream's own draw of that box is."""
    _, torch_e, spec = engines
    specs = [spec, SPECS["residual"]]
    states = [torch_e.start_stream(av, e, 0.9, s) for av, e, s in specs]
    lat = torch_e.sample_chunks(states)[:, :1]  # a frame each: the arithmetic is per row
    raw = (lat.reshape(2, -1, torch_e.cfg.latent_channels) * torch_e.std + torch_e.mean).astype(np.float32)
    avatars = [torch_e._avatar(av) for av, _, _ in specs]
    box = torch_e.draw_box(raw.reshape(-1, raw.shape[-1]))
    be = torch_e.backend
    both = be.draw_streams([x.ref for x in avatars], raw, np.stack([x.ref_motion for x in avatars]), box)
    for i, x in enumerate(avatars):
        np.testing.assert_allclose(both[i], be.draw(x.ref, raw[i], x.ref_motion, box), atol=1e-5)
    be.batch_streams = True
    try:
        assert torch_e.decode_chunks(states, lat).shape == (2, 1, 360, 640, 4)
    finally:
        be.batch_streams = False


def _compose_engine(draw: str, batch_streams: bool) -> MotionEngine:
    """The shipped folder on CPU torch composing on the device (what CUDA does by default)."""
    man = load_motion_manifest(motion_folder(None, draw))
    be = TorchMotionBackend.from_folder(man, "cpu", compose=True, batch_streams=batch_streams)
    return MotionEngine(be, man.mean, man.std, 2, man.weights_hash)


@pytest.mark.parametrize("draw", ["copy", "residual"])
def test_the_device_compose_is_the_numpy_compose(draw) -> None:
    """engines/tiny/motion_compose.py (CUDA's compose, here on CPU torch): each stream's frames, effects included,
    equal MotionEngine._compose's of the same drawn box to the bit (measured 2026-12-06: 0 of 33 M values apart in
    3 streams x 3 chunks, copy and residual; two effects overlapping may move a level: the bound allows one)."""
    torch.set_num_threads(2)
    e = _compose_engine(draw, batch_streams=False)
    # hearts on two avatars whose sprites differ in size (one call lays them: the first GPU run failed there),
    # and another effect; an effect in most chunks
    specs = [("pip", "love", 3), ("random-900008", "love", 4), ("random-900008", "surprised", 5)]
    states = [e.start_stream(av, em, 1.0, s) for av, em, s in specs]
    sizes = {tuple(p.shape for p in e._avatar(json.loads(s.avatar_key), s.avatar_key).sprites.pics) for s in states}
    assert len(sizes) > 1
    lat = e.sample_chunks(states)[:, :2]  # two frames each: torch's CPU draw is slow
    got = e.decode_chunks(states, lat)
    raw = (lat.reshape(len(states), 2, -1) * e.std + e.mean).astype(np.float32)
    laid = 0
    for st, m, frames in zip(states, raw, got):
        a = e._avatar(json.loads(st.avatar_key), st.avatar_key)
        box = e.draw_box(m)
        want = e._compose(a, m, box, e.backend.draw(a.ref, m, a.ref_motion, box))
        apart = np.abs(frames.astype(np.int16) - want)
        assert apart.max() <= 1 and (apart > 0).mean() < 1e-4, (st.avatar_key, int(apart.max()))
        laid += sum(len(a.effects.placements(x)) for x in m)
    assert laid > 0  # the effects' path ran


def test_streams_own_boxes_in_one_call_are_each_streams_draw() -> None:
    """On CUDA each stream draws its own box grown to a bucket (MotionEngine.bucket_box), a bucket's streams in one
    call with one box a row: row for row the stream's own draw of that box, composed to the same frames."""
    torch.set_num_threads(2)
    e = _compose_engine("copy", batch_streams=True)
    specs = [("pip", "happy", 3), ("random-900008", "love", 5), ("kiko", "sad", 1)]
    states = [e.start_stream(av, em, 1.0, s) for av, em, s in specs]
    lat = e.sample_chunks(states)[:, :1]
    got = e.decode_chunks(states, lat)
    raw = (lat.reshape(len(states), 1, -1) * e.std + e.mean).astype(np.float32)
    H, W = e.window.pad_height, e.window.window_width
    for st, m, frames in zip(states, raw, got):
        a = e._avatar(json.loads(st.avatar_key), st.avatar_key)
        by, bx, bh, bw = e.bucket_box(e.draw_box(m))
        drawn = e.backend.draw(a.ref, m, a.ref_motion, (by, bx, bh, bw))
        cut = (by, bx, min(bh, H - by), min(bw, W - bx))  # a bucket may reach past the window
        want = e._compose(a, m, cut, drawn[..., : cut[2], : cut[3]])
        assert np.abs(frames.astype(np.int16) - want).max() <= 1, st.avatar_key


def test_rows_padded_for_cudnns_plans_draw_each_streams_frames() -> None:
    """pad_rows (the decoder's calls padded to a multiple of rows, the last stream drawn again, so cuDNN meets a few
    row counts): the streams' rows are what the unpadded call draws, and the extra rows are dropped."""
    torch.set_num_threads(2)
    e = _compose_engine("copy", batch_streams=True)
    be = e.backend
    raw, avatars = _streams(e, [("pip", "happy", 3), ("random-900008", "love", 5), ("kiko", "sad", 1)], 1)
    box = e.draw_box(raw.reshape(-1, raw.shape[-1]))
    args = ([a.ref for a in avatars], be.tensor(raw), be.tensor(np.stack([a.ref_motion for a in avatars])), [box])
    with torch.inference_mode():
        got, want = _padded_and_not(be, args, 8)
    assert got.shape == want.shape == (3, 1, 4, box[2], box[3])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def _streams(e, specs: list[tuple[str, str, int]], frames: int):
    """Streams started from (avatar, emotion, seed): the first `frames` frames of their first chunk as raw motions
    (B, frames, D) and their prepared avatars."""
    states = [e.start_stream(av, em, 1.0, s) for av, em, s in specs]
    lat = e.sample_chunks(states)[:, :frames]
    raw = (lat.reshape(len(states), frames, -1) * e.std + e.mean).astype(np.float32)
    return raw, [e._avatar(json.loads(s.avatar_key), s.avatar_key) for s in states]


def _padded_and_not(be, args: tuple, pad_rows: int):
    """(drawn with pad_rows, drawn without) by draw_streams_t; the backend left unpadded."""
    unpadded = be.draw_streams_t(*args)
    be.pad_rows = pad_rows
    try:
        return be.draw_streams_t(*args), unpadded
    finally:
        be.pad_rows = 0


def test_an_avatars_streams_are_mixed_in_one_call_to_the_bit() -> None:
    """The batched draw mixes each avatar's references once over all its streams' rows (TorchMotionBackend._mixed):
    row for row mixed_reference's of one stream, to the bit, and the padded call draws the same rows as the unpadded
    one (two frames a stream, so the matrix products run, as served; an avatar's streams side by side)."""
    torch.set_num_threads(2)
    e = _compose_engine("copy", batch_streams=True)
    be = e.backend
    raw, avatars = _streams(e, [("pip", "happy", 3), ("pip", "love", 4), ("kiko", "sad", 1)], 2)
    refs = [a.ref for a in avatars]
    assert refs[0] is refs[1] and refs[1] is not refs[2]
    m = be.tensor(raw)
    with torch.inference_mode():
        got = be._mixed(be.decoder, refs, m)
        want = torch.cat([be.decoder.mixed_reference(m[i], r.ref_win, r.atlas) for i, r in enumerate(refs)])
        assert torch.equal(got, want)
        box = e.draw_box(raw.reshape(-1, raw.shape[-1]))
        args = (refs, m, be.tensor(np.stack([a.ref_motion for a in avatars])), [box])
        padded, unpadded = _padded_and_not(be, args, 16)  # 8 streams of 2 rows: the last stream drawn 5 more times
    assert padded.shape == unpadded.shape == (3, 2, 4, box[2], box[3])
    torch.testing.assert_close(padded, unpadded, atol=1e-5, rtol=0)


def test_part_maps_of_every_part_at_once_are_each_parts_to_the_bit() -> None:
    """part_maps works out the parts of one kind together: the maps one part at a time, to the bit."""
    from avatarcast.engines.avatar_world.skeleton import N_POINTS, PARTS
    from avatarcast.engines.tiny import motion as mo

    g = torch.Generator().manual_seed(0)
    kt, kr = (torch.rand(5, N_POINTS, 2, generator=g) * 2 - 1 for _ in range(2))
    A, b = mo.part_maps(kt, kr, 448, 384)
    pt, pr = mo._px(kt, 448, 384), mo._px(kr, 448, 384)
    s = torch.tensor([224.0, 192.0])
    for k, (_, idx) in enumerate(PARTS):
        if len(idx) == 2:
            Ak, bk = mo._similarity(pt[:, idx[0]], pt[:, idx[1]], pr[:, idx[0]], pr[:, idx[1]])
        elif len(idx) == 3:
            Ak, bk = mo._affine(*(pt[:, i] for i in idx), *(pr[:, i] for i in idx))
        else:
            Ak, bk = torch.eye(2).expand(5, 2, 2), torch.zeros(5, 2)
        assert torch.equal(A[:, k], Ak * s[None, None, :] / s[None, :, None]), PARTS[k][0]
        assert torch.equal(b[:, k], bk / s), PARTS[k][0]


def test_the_decoders_bf16_option_is_off_unless_asked_and_only_bf16() -> None:
    """bf16 autocast moves edge pixels (docs/bench/motion_gpu_fast_2026-12-06: PSNR 50.8 dB against float32, max 255
    levels on 0.37% of values) and bought no speed on an H100: off by default, and no other precision is taken."""
    from avatarcast.engines.backends.base import BackendError

    man = load_motion_manifest(motion_folder(None, "copy"))
    be = TorchMotionBackend.from_folder(man, "cpu")
    assert be.amp is None and be.describe()["amp"] is None and not be.channels_last
    with pytest.raises(BackendError, match="amp"):
        TorchMotionBackend.from_folder(man, "cpu", amp="fp16")
    assert TorchMotionBackend.from_folder(man, "cpu", amp="bf16").describe()["amp"] == "bf16"


def _damaged_folder(tmp_path: Path, edit) -> Path:
    """The shipped copy folder's reference and decoder graphs with `edit(model)` applied to the decoder, its
    denoiser read where it ships, and a manifest of the new hashes (a folder that passes every check but weights')."""
    import onnx

    out = tmp_path / "damaged"
    out.mkdir(parents=True)
    man = load_motion_manifest(SHIPPED)
    shutil.copyfile(SHIPPED / GRAPHS["reference"], out / GRAPHS["reference"])
    model = onnx.load(str(SHIPPED / GRAPHS["decoder"]))
    edit(model)
    onnx.save(model, str(out / GRAPHS["decoder"]))
    den = {"denoiser": os.path.relpath(SHIPPED.resolve(), out.resolve())}
    write_motion_manifest(out, man.decoder_shape, man.denoiser_arch, man.mean, man.std, {}, den)
    return out


def _initializer(model, name: str):
    return next(i for i in model.graph.initializer if i.name == name)


def test_a_graph_that_does_not_fill_the_network_is_refused(tmp_path) -> None:
    from onnx import numpy_helper

    def rename(model) -> None:  # a weight the network looks for under another name
        _initializer(model, "dec.masks.out.bias").name = "dec.masks.out.bias_renamed"
        for n in model.graph.node:
            n.input[:] = ["dec.masks.out.bias_renamed" if i == "dec.masks.out.bias" else i for i in n.input]

    def reshape(model) -> None:  # one of another shape
        init = _initializer(model, "dec.atlas_mix.2.bias")
        init.CopyFrom(numpy_helper.from_array(np.zeros(7, np.float32), init.name))

    for name, edit, says in (("renamed", rename, "no weight"), ("reshaped", reshape, "atlas_mix.2.bias is")):
        folder = _damaged_folder(tmp_path / name, edit)
        with pytest.raises(GraphWeightsError, match=says):
            TorchMotionBackend.from_folder(load_motion_manifest(folder))
    # the same folder undamaged loads: the refusals are the edits'
    TorchMotionBackend.from_folder(load_motion_manifest(_damaged_folder(tmp_path / "whole", lambda m: None)))


def test_auto_picks_motion_on_torch_on_cuda() -> None:
    """`--engine auto` serves motion on onnxruntime (the CPU) and on torch on CUDA, where the server delivers its crisp
    picture faster than tiny's smudged one (docs/bench/motion_server_gpu_2026-12-07); tiny on torch on the CPU and on
    tensorrt. `--engine motion --backend torch` stays a valid choice on the CPU."""
    import torch

    from avatarcast.realtime.settings import Settings, default_engine

    Settings(engine="motion", backend="torch", device="cpu").validate()
    Settings(engine="motion", backend="torch", device="cuda").validate()
    assert Settings(backend="torch", device="cuda").engine == "motion"
    assert Settings(backend="torch", device="cuda:1").engine == "motion"
    assert Settings(backend="torch", device="cpu").engine == "tiny"
    assert Settings(backend="torch", device="auto").engine == ("motion" if torch.cuda.is_available() else "tiny")
    assert default_engine("tensorrt", "cuda") == "tiny" and default_engine("onnxruntime", "cpu") == "motion"
    assert default_engine("onnxruntime", "cuda") == "tiny"
    assert Settings(engine="tiny", backend="torch", device="cuda").engine == "tiny"  # a choice always wins
