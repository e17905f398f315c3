"""ONNX export of the Wan graphs (denoiser, steady-state VAE frame) on a tiny random checkpoint,
checked against torch with onnxruntime; and the TensorRT-RTX engine build where it is installed
(it builds ahead of time without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
ort = pytest.importorskip("onnxruntime")

from avatarcast.engines.wan.export import build  # noqa: E402
from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder, VaeStreamCache  # noqa: E402

pytestmark = pytest.mark.slow  # the export fixture (tests/engines/conftest.py) takes a minute


@pytest.fixture(scope="module")
def exported(wan_exported):
    """The engine and export_denoiser's and export_vae_step's records (export_all's), exported once a session."""
    _, eng, info, _ = wan_exported
    return eng, info


def test_denoiser_onnx_matches_torch_at_two_batch_sizes(exported):
    eng, info = exported
    sess = ort.InferenceSession(info["denoiser"]["path"], providers=["CPUExecutionProvider"])
    for B in (1, 3):  # traced at 1: the batch axis is dynamic
        x = torch.randn(B, *info["denoiser"]["shapes"]["x"][1:])
        t = torch.rand(B, info["denoiser"]["shapes"]["t"][1]) * 1000
        text = torch.randn(B, 512, eng.transformer.config.text_dim)
        with torch.no_grad():
            ref = eng.transformer(x, t, text, return_dict=False)[0].numpy()
        got = sess.run(None, {"x": x.numpy(), "t": t.numpy(), "text": text.numpy()})[0]
        assert got.shape == ref.shape == tuple(x.shape)
        np.testing.assert_allclose(got, ref, atol=2e-4, rtol=1e-3)


def test_vae_step_onnx_continues_a_stream_like_torch(exported):
    eng, info = exported
    sess = ort.InferenceSession(info["vae_step"]["path"], providers=["CPUExecutionProvider"])
    dec = StreamingVaeDecoder(eng.vae)
    cache = VaeStreamCache()
    h, w = eng.latent_hw
    dec.decode(torch.randn(1, eng.z_dim, 2, h, w), [cache])  # prime: the steady state
    feeds_caches = [f for f in cache.feats if torch.is_tensor(f)]
    assert len(feeds_caches) == len(info["vae_step"]["shapes"]) - 1
    z = torch.randn(1, eng.z_dim, 1, h, w)
    x = eng.vae.post_quant_conv(z).detach()
    feeds = {"x": x.numpy(), **{f"cache{i}": c.numpy() for i, c in enumerate(feeds_caches)}}
    outs = sess.run(None, feeds)
    with torch.no_grad():
        ref = eng.vae.decoder(x, feat_cache=list(cache.feats), feat_idx=[0])
    assert outs[0].shape == tuple(ref.shape) and ref.shape[2] == 4  # 4 video frames per latent frame
    np.testing.assert_allclose(outs[0], ref.numpy(), atol=1e-4, rtol=1e-3)
    assert len(outs) == 1 + len(feeds_caches)


def test_tensorrt_rtx_builds_engines_and_caches_them(exported, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings")
    _, info = exported
    first = build(info, tmp_path / "engines", max_batch=4, module="tensorrt_rtx", log=lambda m: None)
    assert set(first) == {"denoiser", "vae_step"}
    assert all(r["built"] and r["bytes"] > 0 for r in first.values())
    again = build(info, tmp_path / "engines", max_batch=4, module="tensorrt_rtx", log=lambda m: None)
    assert all(not r["built"] and r["key"] == first[k]["key"] for k, r in again.items())  # the engine cache
    other = build(info, tmp_path / "engines", max_batch=8, module="tensorrt_rtx", log=lambda m: None)
    assert other["denoiser"]["key"] != first["denoiser"]["key"]  # the profile is part of the key
