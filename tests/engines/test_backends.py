"""avatarcast.engines.backends: onnxruntime and torch (CPU) on random small weights, the TinyEngine on top,
TensorRT's cache keys and errors, and the engine benchmark."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from avatarcast.engines.backends import BackendError, create_backend
from avatarcast.engines.tiny.weights import load_manifest
from tools import export_tiny as ex


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("w") / "tiny"
    ex.random_weights(out, small=True, seed=7, lowres=True)
    return out


@pytest.fixture(scope="module")
def manifest(weights):
    return load_manifest(weights)


@pytest.fixture(scope="module")
def ort_be(manifest):
    return create_backend("onnxruntime", manifest, threads=1)


@pytest.fixture(scope="module")
def torch_be(manifest):
    return create_backend("torch", manifest, device="cpu", threads=1)


def _call(be, graph, feeds):
    if graph == "encoder":
        return be.encode(feeds["frames"])
    if graph == "decoder":
        return be.decode(feeds["latents"])
    return be.denoise(**feeds)


# --- create_backend ---------------------------------------------------------------------------


def test_create_backend_errors(manifest, monkeypatch):
    with pytest.raises(BackendError, match="unknown backend"):
        create_backend("tensorflow", manifest)
    with pytest.raises(BackendError, match="unknown device"):
        create_backend("onnxruntime", manifest, device="tpu")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendError, match="CUDAExecutionProvider.*onnxruntime-gpu"):
            create_backend("onnxruntime", manifest, device="cuda")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="device='cuda'"):
            create_backend("torch", manifest, device="cuda")
        with pytest.raises(BackendError, match="cuda_graphs"):
            create_backend("torch", manifest, device="cpu", cuda_graphs=True)
    with pytest.raises(BackendError, match="GPU only"):
        create_backend("tensorrt", manifest, device="cpu")
    # neither tensorrt nor tensorrt_rtx importable -> one clear error naming both
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)
    with pytest.raises(BackendError, match="import tensorrt.*import tensorrt_rtx"):
        create_backend("trt", manifest)
    from avatarcast.engines.backends.tensorrt_backend import build_engines

    with pytest.raises(BackendError, match="TensorRT"):
        build_engines(None, "/tmp/x", manifest=manifest)
    # a missing onnxruntime package is a BackendError too
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendError, match="onnxruntime"):
        create_backend("onnxruntime", manifest)


def test_ort_backend_describe_and_options(ort_be, manifest):
    d = ort_be.describe()
    assert d["backend"] == "onnxruntime" and d["device"] == "cpu" and d["threads"] == 1
    assert ort_be.providers == ["CPUExecutionProvider"]
    be2 = create_backend("onnxruntime", manifest, threads=1, decode_batch=2, spinning=True, arena=False)
    z = ex.example_inputs(manifest.config, 5, seed=1)["decoder"]["latents"]
    a, b = ort_be.decode(z), be2.decode(z)  # 5 frames: one run vs runs of 2, 2, 1
    assert a.shape == (5, 360, 640, 4) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


# --- parity -----------------------------------------------------------------------------------


def test_torch_cpu_matches_onnxruntime(ort_be, torch_be, manifest):
    feeds = ex.example_inputs(manifest.config, 3, seed=11)
    for g in ("encoder", "decoder", "denoiser"):
        a, b = _call(ort_be, g, feeds[g]), _call(torch_be, g, feeds[g])
        assert a.shape == b.shape and a.dtype == b.dtype, g
        diff = np.abs(a.astype(np.float64) - b)
        if a.dtype == np.uint8:
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
        else:
            assert diff.max() < 1e-4 * max(1.0, np.abs(a).max()), (g, diff.max())
    d = torch_be.describe()
    assert d["dtype"] == "float32" and d["cuda_graphs"] is False and d["compile"] is False


def test_half_resolution_decoder_on_both_backends(ort_be, torch_be, manifest):
    """The ladder's lowest rung: the same output size, the pooled latents' decode upscaled, and
    onnxruntime and torch agree; the weights hash (the latents cache's key) ignores it."""
    import torch

    from avatarcast.engines.tiny.crop import grid_to_frames
    from avatarcast.engines.tiny.model import FrameDecoder
    from avatarcast.engines.tiny.weights import load_lowres_module

    assert manifest.has_lowres and ort_be.has_lowres and torch_be.has_lowres
    z = ex.example_inputs(manifest.config, 3, seed=4)["decoder"]["latents"]
    a, b = ort_be.decode(z, lowres=True), torch_be.decode(z, lowres=True)
    assert a.shape == b.shape == (3, 360, 640, 4) and a.dtype == np.uint8
    diff = np.abs(a.astype(int) - b)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    with torch.no_grad():
        want = FrameDecoder(manifest.config, load_lowres_module(manifest))(torch.from_numpy(z)).numpy()
    assert np.abs(a.astype(int) - grid_to_frames(want, manifest.config)).max() <= 1
    assert not np.array_equal(a, ort_be.decode(z))  # a different decoder from the full one
    plain = ex.random_weights(ort_be.manifest.path.parent / "plain", small=True, seed=7)
    be = create_backend("onnxruntime", plain, threads=1)
    assert not plain.has_lowres and not be.has_lowres
    np.testing.assert_array_equal(be.decode(z, lowres=True), be.decode(z))  # no rung: the full decoder
    added = ex.write_lowres(load_lowres_module(manifest), plain, {"test": True})
    assert added.has_lowres and added.weights_hash == plain.weights_hash
    assert added.training["lowres"]["onnx_check"]["ok"] and added.training["denoiser_steps"] == 0


def test_tensorrt_rtx_builds_the_half_resolution_decoder(manifest, tmp_path):
    """TensorRT-RTX builds ahead of time without a GPU: the lowres graph gets its own cached engine."""
    pytest.importorskip("tensorrt_rtx_bindings")
    from avatarcast.engines.backends.tensorrt_backend import build_engines

    kw = dict(
        max_batch=4, module="tensorrt_rtx", graphs=("decoder", "decoder_lowres"), manifest=manifest, log=lambda *a: None
    )
    first = build_engines(None, tmp_path, **kw)
    assert all(r["built"] and r["bytes"] > 0 for r in first.values())
    assert first["decoder"]["key"] != first["decoder_lowres"]["key"]  # other ONNX bytes, other engine
    again = build_engines(None, tmp_path, **kw)
    assert all(not r["built"] and r["key"] == first[g]["key"] for g, r in again.items())


def test_torch_bucket_padding_and_splitting(manifest):
    """The padded/static-buffer path (used with CUDA graphs or compile) gives the eager results."""
    be = create_backend("torch", manifest, device="cpu", threads=1, buckets=(1, 2, 4))
    assert [be.bucket(n) for n in (1, 2, 3, 4, 9)] == [1, 2, 4, 4, 4]
    feeds = ex.example_inputs(manifest.config, 6, seed=5)
    eager_dec = be.decode(feeds["decoder"]["latents"])
    eager_den = be.denoise(**feeds["denoiser"])
    be.compile = True  # route through the bucket runners without compiling (fns are eager)
    for n in (3, 6):  # 3 -> padded to 4; 6 -> split into 4 + 2
        np.testing.assert_array_equal(be.decode(feeds["decoder"]["latents"][:n]), eager_dec[:n])
        sub = {k: v[:n] for k, v in feeds["denoiser"].items()}
        np.testing.assert_allclose(be.denoise(**sub), eager_den[:n], atol=1e-5)
    assert set(be.warmup([1, 3, 9], graphs=("decoder",))) == {("decoder", 1), ("decoder", 4)}  # 9 = 4+4+1
    assert set(be.warmup([6], graphs=("denoiser",))) == {("denoiser", 4), ("denoiser", 2)}


# --- the engine on onnxruntime ------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(weights):
    from avatarcast.engines.tiny.engine import TinyEngine

    return TinyEngine.load(weights, backend="onnxruntime", steps=2, threads=1)


def test_engine_end_to_end(engine):
    cfg = engine.cfg
    st = engine.start_stream(0, "happy", seed=1)
    frames = engine.next_chunk([st])[0]
    assert frames.shape == (cfg.chunk_frames, 360, 640, 4) and frames.dtype == np.uint8
    assert st.frames_done == cfg.chunk_frames
    assert st.ctx.shape == (cfg.context_frames * cfg.latent_channels, *cfg.latent_hw)
    # determinism given the seed
    a = engine.next_chunk([engine.start_stream(0, "happy", seed=9)])[0]
    b = engine.next_chunk([engine.start_stream(0, "happy", seed=9)])[0]
    np.testing.assert_array_equal(a, b)
    c = engine.next_chunk([engine.start_stream(0, "happy", seed=10)])[0]
    assert not np.array_equal(a, c)


def test_engine_half_resolution_clips(engine):
    """The same stream (same seed) decoded both ways: same size, same motion source, other pixels."""
    assert engine.has_lowres
    full = engine.generate_clip(1, "happy", 4, seed=3)
    low = engine.generate_clip(1, "happy", 4, seed=3, lowres=True)
    assert low.shape == full.shape == (4, 360, 640, 4) and low.dtype == np.uint8
    assert not np.array_equal(low, full)


def test_engine_emotion_switch_between_chunks(engine):
    s1 = engine.start_stream(1, "idle", seed=3)
    s2 = engine.start_stream(1, "idle", seed=3)
    l1, l2 = engine.sample_chunks([s1]), engine.sample_chunks([s2])
    np.testing.assert_array_equal(l1, l2)
    engine.set_emotion(s2, "angry", 0.7)
    assert s2.emotion == engine.emotions.index("angry") and s2.intensity == pytest.approx(0.7)
    n1, n2 = engine.sample_chunks([s1]), engine.sample_chunks([s2])
    assert n1.shape == n2.shape and np.abs(n1 - n2).max() > 1e-4  # the new emotion changes the next chunk
    np.testing.assert_array_equal(s1.ctx, n1[0, -engine.cfg.context_frames :].reshape(s1.ctx.shape))
    with pytest.raises(ValueError):
        engine.set_emotion(s2, "bored")


def test_engine_batching_matches_one_by_one(engine):
    mk = lambda: [engine.start_stream(0, "happy", seed=21), engine.start_stream(2, "sad", 0.5, seed=22)]  # noqa: E731
    together = engine.next_chunk(mk())
    alone = [engine.next_chunk([s])[0] for s in mk()]
    for a, b in zip(together, alone):
        d = np.abs(a.astype(np.int16) - b)
        assert d.max() <= 1 and (d > 0).mean() < 1e-3


# --- tensorrt (no GPU here: keys, profiles, the graph rewrite, clear errors) ----------------------


def test_tensorrt_cache_key_and_support():
    from avatarcast.engines.backends.tensorrt_backend import batch_profile
    from avatarcast.engines.backends.tensorrt_build import engine_cache_key
    from avatarcast.engines.backends.tensorrt_runtime import unsupported_reason
    from avatarcast.engines.tiny.model import TinyConfig

    cfg = TinyConfig()
    prof = batch_profile(cfg, "denoiser", 256, 32)
    assert prof["x"] == ((1, 32, 48, 56), (32, 32, 48, 56), (256, 32, 48, 56)) and prof["t"][2] == (256,)
    assert batch_profile(cfg, "encoder", 256)["frames"][2] == (16, 360, 640, 4)
    base = dict(
        onnx_sha256="a" * 64,
        profile=prof,
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability=(9, 0),
        trt_version="10.13.0",
        flavor="tensorrt",
        precision="fp16",
    )
    k = engine_cache_key(**base)
    assert k == engine_cache_key(**base) and len(k) == 64
    changes = dict(
        onnx_sha256="b" * 64,
        profile=batch_profile(cfg, "denoiser", 128, 32),
        gpu_name="NVIDIA H200",
        compute_capability=(8, 9),
        trt_version="10.14.1",
        flavor="tensorrt_rtx",
        precision="fp32",
    )
    keys = {k}
    for field, value in changes.items():
        keys.add(engine_cache_key(**{**base, field: value}))
    assert len(keys) == 1 + len(changes)
    msg = unsupported_reason("tensorrt_rtx", "1.2.0", (9, 0), "NVIDIA H100 80GB HBM3")
    assert "TensorRT-RTX" in msg and "9.0" in msg and "Hopper" in msg
    assert unsupported_reason("tensorrt_rtx", "1.2.0", (8, 9), "NVIDIA RTX 4090") is None
    assert unsupported_reason("tensorrt", "10.13", (9, 0), "NVIDIA H100") is None
    assert "7.5" in unsupported_reason("tensorrt", "10.13", (7, 0), "Tesla V100")


def test_wan_graphs_share_the_batch_profile():
    """The Wan export's profiles come from the same helper as the tiny graphs': batch 1, opt, max before each shape."""
    from avatarcast.engines.wan.export import batch_profile

    info = {"shapes": {"x": [2, 48, 3, 22, 40], "t": [2, 660]}}
    assert batch_profile(info, 16) == {
        "x": ((1, 48, 3, 22, 40), (8, 48, 3, 22, 40), (16, 48, 3, 22, 40)),
        "t": ((1, 660), (8, 660), (16, 660)),
    }
    assert batch_profile(info, 4)["t"] == ((1, 660), (4, 660), (4, 660))
    assert batch_profile(info, 4, opt_batch=2)["x"][1][0] == 2


def test_tensorrt_build_cli_says_what_is_missing(weights, monkeypatch, capsys):
    """`python -m ...tensorrt_backend build` without TensorRT: exit 2 and the import errors, not a traceback."""
    from avatarcast.engines.backends.tensorrt_backend import main

    for name in ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings"):
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["build", "--weights", str(weights), "--json"]) == 2
    assert "tensorrt_backend: error:" in capsys.readouterr().err


def test_fp16_conv_rewrite_is_valid_and_equivalent(weights, manifest):
    """The TensorRT fp16 rewrite keeps the function (onnxruntime runs it; TensorRT builds it)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

    from avatarcast.engines.backends.tensorrt_graph import trt_graph
    from avatarcast.engines.tiny.external_data import inline_graph

    feeds = ex.example_inputs(manifest.config, 2, seed=4)
    for g in ("encoder", "decoder", "denoiser"):
        model = onnx.load_from_string(trt_graph(inline_graph(weights / f"{g}.onnx"), "fp16"))
        uint8_in = [i.name for i in model.graph.input if i.type.tensor_type.elem_type == TensorProto.UINT8]
        uint8_out = [o.name for o in model.graph.output if o.type.tensor_type.elem_type == TensorProto.UINT8]
        for n in model.graph.node:  # TensorRT takes uint8 only straight into / out of a Cast
            if set(n.input) & set(uint8_in) or set(n.output) & set(uint8_out):
                assert n.op_type == "Cast", (g, n.op_type)
        convs = [n for n in model.graph.node if n.op_type == "Conv"]
        inits = {i.name: i.data_type for i in model.graph.initializer}
        assert convs and all(inits[n.input[1]] == TensorProto.FLOAT16 for n in convs)
        s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        r = ort.InferenceSession(str(weights / f"{g}.onnx"), providers=["CPUExecutionProvider"])
        a, b = s.run(None, feeds[g])[0], r.run(None, feeds[g])[0]
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.abs(a.astype(np.float64) - b).max() <= max(1.0, 2e-2 * np.abs(b).max())


# --- the benchmark ------------------------------------------------------------------------------


def test_bench_engine_json(weights, capsys):
    from avatarcast.realtime.bench.engine import main

    rc = main(
        [
            "--engine",
            "tiny",
            "--backend",
            "onnxruntime",
            "--sessions",
            "2",
            "--seconds",
            "0.1",
            "--steps",
            "1",
            "--threads",
            "1",
            "--weights",
            str(weights),
            "--warmup",
            "1",
            "--min-chunks",
            "2",
            "--json",
        ]
    )
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    for key in (
        "engine",
        "backend",
        "device",
        "threads",
        "sessions",
        "steps",
        "resolution",
        "chunk_frames",
        "frames",
        "seconds",
        "fps",
        "chunk_latency_ms",
        "denoise_ms",
        "decode_ms",
        "realtime_streams",
        "weights_hash",
    ):
        assert key in r, key
    assert r["engine"] == "tiny" and r["backend"] == "onnxruntime" and r["resolution"] == "640x360"
    assert r["sessions"] == 2 and r["steps"] == 1 and r["threads"] == 1 and r["chunks"] >= 2
    assert r["frames"] == r["chunks"] * 2 * r["chunk_frames"]
    assert set(r["chunk_latency_ms"]) >= {"p50", "p95"} and r["fps"] > 0
    assert r["realtime_streams"] == int(r["fps"] // 8)
    assert r["weights_hash"] == load_manifest(weights).weights_hash
    # the human table, and a clear error for a backend that cannot run here
    assert (
        main(
            [
                "--engine",
                "tiny",
                "--backend",
                "onnxruntime",
                "--sessions",
                "1",
                "--seconds",
                "0",
                "--steps",
                "1",
                "--threads",
                "1",
                "--weights",
                str(weights),
                "--warmup",
                "0",
                "--min-chunks",
                "1",
            ]
        )
        == 0
    )
    assert "fps" in capsys.readouterr().out
    assert main(["--backend", "onnxruntime", "--device", "cuda", "--weights", str(weights)]) in (0, 2)


def test_bench_engine_through_the_scheduler(weights, capsys):
    """--scheduler: sessions through the server's EngineScheduler (its batching), each asking for its next chunk once
    it has the last; the report counts the timed chunks and the calls they took."""
    from avatarcast.realtime.bench.engine import main

    args = ["--engine", "tiny", "--sessions", "3", "--steps", "1", "--threads", "1", "--weights", str(weights)]
    assert main([*args, "--seconds", "2", "--scheduler", "--max-batch", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["through"] == "scheduler" and r["sessions"] == 3 and r["max_batch"] == 2 and r["pipeline_depth"] == 1
    assert r["chunks"] >= 3 and r["fps"] > 0 and 1.0 <= r["mean_batch"] <= 2.0  # three sessions, calls of two at most
    assert r["chunk_interval_ms_p95"] >= r["chunk_interval_ms_p50"] > 0
    assert r["realtime_streams"] == int(r["fps"] // 8)
