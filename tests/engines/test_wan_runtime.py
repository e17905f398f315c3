"""Serving the Wan engine through its exported graphs (engines/wan/runtime.py) on a tiny random
checkpoint: ONNX Runtime runs the transformer and the VAE's steady frame, chunk after chunk, with
the frames of the torch path; the errors for a missing or mismatched export; TensorRT refusing
clearly where it cannot run (no GPU it supports)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("onnxruntime")

from avatarcast.engines.wan.engine import WanEngine
from avatarcast.engines.wan.export import MANIFEST
from avatarcast.engines.wan.runtime import ExportError, GraphDenoiser, use_exported
from tests.engines.wan_checkpoint import TEXT_DIM, WAN_SHAPE

SHAPE = WAN_SHAPE

pytestmark = pytest.mark.slow  # the export fixture (tests/engines/conftest.py) takes a minute


@pytest.fixture(scope="module")
def exported(wan_exported):
    """The checkpoint and its export folder (tests/engines/conftest.py: exported once, shared with test_wan_export)."""
    ckpt, _, _, onnx = wan_exported
    return ckpt, onnx


def _frames(eng: WanEngine, chunks: int = 3) -> list[np.ndarray]:
    ref = eng.reference_latent(np.full((32, 64, 3), 128, np.uint8))
    gen = torch.Generator().manual_seed(0)
    # 512 tokens, as the server pads every prompt (the graph zero-pads shorter ones, which torch does not)
    embeds = [
        torch.cat([torch.randn(1, 5, TEXT_DIM, generator=gen), torch.zeros(1, 507, TEXT_DIM)], 1) for _ in range(2)
    ]
    states = [eng.start_stream(ref, e, seed=s) for e, s in zip(embeds, (0, 7))]
    return [eng.next_chunk(states) for _ in range(chunks)]


def test_onnxruntime_serves_the_exported_graphs_with_the_torch_frames(exported):
    ckpt, onnx = exported
    want = _frames(WanEngine.load(ckpt, **SHAPE))
    eng = WanEngine.load(ckpt, **SHAPE)
    use_exported(eng, onnx, "onnxruntime")
    assert isinstance(eng.denoiser, GraphDenoiser)
    got = _frames(eng)
    assert eng.vae_stream.compiled_calls > 0  # steady VAE frames went through the graph
    for g, w in zip(got, want, strict=True):
        g, w = np.asarray(g).astype(int), np.asarray(w).astype(int)
        assert g.shape == w.shape
        assert np.abs(g - w).max() <= 2 and np.abs(g - w).mean() < 0.1


def test_a_missing_or_mismatched_export_says_what_to_do(exported, tmp_path):
    ckpt, onnx = exported
    with pytest.raises(ExportError, match="avatarcast.engines.wan.export"):
        use_exported(WanEngine.load(ckpt, **SHAPE), tmp_path, "onnxruntime")
    other = WanEngine.load(ckpt, **dict(SHAPE, chunk_latent_frames=3))
    with pytest.raises(ExportError, match="chunk_latent_frames exported 2, serving 3"):
        use_exported(other, onnx, "onnxruntime")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / MANIFEST).write_text((onnx / MANIFEST).read_text())
    with pytest.raises(ExportError, match="wan_denoiser.onnx is missing"):
        use_exported(WanEngine.load(ckpt, **SHAPE), broken, "onnxruntime")


def test_tensorrt_refuses_clearly_without_a_gpu_it_supports(exported):
    from avatarcast.engines.backends.base import BackendError

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the device run builds and runs the engines")
    ckpt, onnx = exported
    with pytest.raises(BackendError, match="needs an NVIDIA GPU|TensorRT's Python bindings"):
        use_exported(WanEngine.load(ckpt, **SHAPE), onnx, "tensorrt")


def test_serve_settings_pick_the_exported_graphs(exported, tmp_path):
    from avatarcast.engines.wan.serving import WanAvatarEngine
    from avatarcast.realtime.avatars import resolve_avatar
    from avatarcast.realtime.settings import Settings

    ckpt, onnx = exported
    with pytest.raises(ValueError, match="wan_backend must be"):
        Settings(engine="wan", checkpoint=str(ckpt), wan_backend="tvm").validate()
    with pytest.raises(ValueError, match="give wan_export_dir"):
        Settings(engine="wan", checkpoint=str(ckpt), wan_backend="tensorrt").validate()
    kw = Settings(
        engine="wan",
        checkpoint=str(ckpt),
        wan_backend="onnxruntime",
        wan_export_dir=str(onnx),
        wan_chunk_latents=2,
        wan_height=32,
        wan_width=64,
        wan_prompt_embeds="random",
        steps=2,
    ).wan_kwargs()
    assert kw["backend"] == "onnxruntime" and kw["export_dir"] == str(onnx)
    av = WanAvatarEngine.load(cache_dir=tmp_path, **kw)
    assert isinstance(av.wan.denoiser, GraphDenoiser)
    state = av.start_stream(resolve_avatar("pip")[1], "happy", 1.0, seed=1)
    frames = av.next_chunk([state])
    assert len(frames) == 1 and frames[0].shape == (8, 360, 640, 4)
