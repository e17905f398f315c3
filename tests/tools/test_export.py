"""tools/export_tiny: weights folder from random modules and from a fake training checkpoint."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from avatarcast.engines.tiny.external_data import external_locations, inline_graph, safetensors_spans
from avatarcast.engines.tiny.model import Decoder, Denoiser, Encoder
from avatarcast.engines.tiny.weights import (
    ONNX_FILES,
    TORCH_FILE,
    WeightsError,
    file_sha256,
    load_manifest,
    load_torch_modules,
    write_manifest,
)
from tools import export_tiny as ex


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("w") / "tiny"
    manifest = ex.random_weights(out, small=True, seed=3)
    return out, manifest


def _session(path, threads=1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), so, providers=["CPUExecutionProvider"])


def test_folder_layout_and_manifest(small):
    out, m = small
    names = {p.name for p in out.iterdir()}
    assert names == {"manifest.json", TORCH_FILE, *ONNX_FILES.values()}
    assert set(m.files) == {TORCH_FILE, *ONNX_FILES.values()}
    for name, sha in m.files.items():
        assert len(sha) == 64 and m.file(name, verify=True).exists()
    assert m.data_version == "random-init"
    assert m.training["random_init"] is True and m.training["denoiser_steps"] == 0
    assert all(v["ok"] for v in m.training["onnx_check"].values())
    assert len(m.weights_hash) == 16
    assert load_manifest(out).weights_hash == m.weights_hash
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["engine"] == "tiny" and raw["config"]["den_channels"] == [32, 32, 32]


def test_onnx_matches_torch_all_graphs_dynamic_batch(small):
    out, m = small
    enc, dec, den = load_torch_modules(m)
    serve = ex.serving_modules((enc, dec, den), m.config)
    for batch in (1, 4):
        feeds = ex.example_inputs(m.config, batch, seed=batch)
        for g, module in serve.items():
            got = _session(out / ONNX_FILES[g]).run(None, feeds[g])[0]
            with torch.no_grad():
                want = module(*[torch.from_numpy(v) for v in feeds[g].values()]).numpy()
            assert got.shape == want.shape and got.shape[0] == batch and got.dtype == want.dtype
            diff = np.abs(got.astype(np.float64) - want)
            if got.dtype == np.uint8:
                assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
            else:
                assert diff.max() < 1e-4 * max(1.0, np.abs(want).max()), (g, batch, diff.max())
    shapes = {g: [(i.name, i.shape) for i in _session(out / ONNX_FILES[g]).get_inputs()] for g in ONNX_FILES}
    assert [n for n, _ in shapes["denoiser"]] == list(ex.DENOISER_INPUTS)
    assert shapes["encoder"][0][0] == "frames" and shapes["decoder"][0][0] == "latents"
    for ins in shapes.values():
        for _, s in ins:
            assert isinstance(s[0], str)  # symbolic (dynamic) batch axis


def test_initializers_are_fp16_with_cast_read_from_the_safetensors_file(small):
    import onnx
    from onnx import TensorProto

    out, m = small
    enc, dec, den = load_torch_modules(m)
    for g, mod in (("encoder", enc), ("decoder", dec), ("denoiser", den)):
        model = onnx.load(str(out / ONNX_FILES[g]))
        big = [i for i in model.graph.initializer if np.prod(i.dims) >= 16]
        fp32 = [i for i in big if i.data_type == TensorProto.FLOAT]
        # only the latent statistics (config values, not fp16-exact) stay float32
        assert all(i.name.startswith("norm.") and np.prod(i.dims) == 16 for i in fp32), [i.name for i in fp32]
        fp16 = [i for i in big if i.data_type == TensorProto.FLOAT16]
        assert len(fp16) > 0.5 * len(big)
        casts = [n for n in model.graph.node if n.op_type == "Cast" and n.input[0].endswith("__fp16")]
        assert len(casts) >= len(fp16)
        # every weight is stored once: each fp16 initializer is external data in tiny.safetensors
        bare = onnx.load(str(out / ONNX_FILES[g]), load_external_data=False)
        external = [i for i in bare.graph.initializer if i.data_location == TensorProto.EXTERNAL]
        assert {i.name for i in fp16} <= {i.name for i in external} and external_locations(bare) == {TORCH_FILE}
        n_params = sum(p.numel() for p in mod.parameters())
        assert (out / ONNX_FILES[g]).stat().st_size < 200_000 < 2 * n_params + 200_000


def test_fp16_initializers_lossless_and_keeps_inexact_values():
    from onnx import TensorProto, helper, numpy_helper

    exact = np.arange(64, dtype=np.float32) / 4
    inexact = (np.arange(64, dtype=np.float32) + 0.1) / 3
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "a"], ["y0"]), helper.make_node("Add", ["y0", "b"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])],
        [numpy_helper.from_array(exact, "a"), numpy_helper.from_array(inexact, "b")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    rep = ex.fp16_initializers(model)
    assert rep["fp16_initializers"] == 1 and rep["fp32_bytes_left"] == inexact.nbytes
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert types == {"a__fp16": TensorProto.FLOAT16, "b": TensorProto.FLOAT}
    x = np.ones(64, np.float32)
    got = _session(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, x + exact + inexact)


def test_weights_error_on_missing_or_corrupt_file(small, tmp_path):
    from avatarcast.engines.backends import create_backend

    src, _ = small
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    m = load_manifest(bad)
    p = bad / ONNX_FILES["denoiser"]
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="does not match"):
        m.file(ONNX_FILES["denoiser"], verify=True)
    with pytest.raises(WeightsError):
        create_backend("onnxruntime", m)
    # the graphs' weights live in tiny.safetensors: onnxruntime checks its hash too
    shutil.copy2(src / ONNX_FILES["denoiser"], p)
    t = bad / TORCH_FILE
    data = bytearray(t.read_bytes())
    data[-3] ^= 0xFF
    t.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="tiny.safetensors does not match"):
        create_backend("onnxruntime", load_manifest(bad))
    (bad / TORCH_FILE).unlink()
    with pytest.raises(WeightsError, match="missing"):
        create_backend("torch", m, device="cpu")
    with pytest.raises(WeightsError):
        load_manifest(tmp_path / "nowhere")


def test_link_an_inline_folder_in_place(small, tmp_path):
    """A folder of the older layout (weights inline in the graphs) linked by --link: the same graphs
    byte for byte once read back, the same outputs, and the weights (and their hash) untouched."""
    src, m = small
    old = tmp_path / "old"
    shutil.copytree(src, old)
    for name in ONNX_FILES.values():
        (old / name).write_bytes(inline_graph(src / name))  # as the exporter wrote them before linking
    inline = write_manifest(old, m.config, m.data_version, m.training)
    assert inline.files[TORCH_FILE] == m.files[TORCH_FILE] and inline.weights_hash == m.weights_hash
    sizes = {n: (old / n).stat().st_size for n in ONNX_FILES.values()}
    feeds = ex.example_inputs(m.config, 2, seed=9)
    before = {g: _session(old / n).run(None, feeds[g])[0] for g, n in ONNX_FILES.items()}
    assert ex.main(["--link", str(old)]) == 0
    linked = load_manifest(old)
    assert linked.weights_hash == m.weights_hash and linked.training["linked"]["graphs"] == sorted(ONNX_FILES.values())
    assert sorted(p.name for p in old.iterdir()) == sorted(["manifest.json", TORCH_FILE, *ONNX_FILES.values()])
    for g, name in ONNX_FILES.items():
        assert linked.file(name, verify=True) and file_sha256(old / name) != inline.files[name]
        assert hashlib.sha256(inline_graph(old / name)).hexdigest() == inline.files[name]
        np.testing.assert_array_equal(_session(old / name).run(None, feeds[g])[0], before[g])
    # the graphs no longer hold a second copy of the tensors of tiny.safetensors (those under 16 values stay fp32)
    saved = sum(sizes.values()) - sum((old / n).stat().st_size for n in ONNX_FILES.values())
    assert saved >= 0.95 * sum(n for _, n in safetensors_spans(old / TORCH_FILE).values())
    assert ex.link_folder(old, log=lambda *a: None).files == linked.files  # already linked: nothing changes


def _fake_checkpoint(ck, cfg, seed=0):
    ck.mkdir(parents=True)
    torch.manual_seed(seed)
    (ck / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    enc, dec = Encoder(cfg), Decoder(cfg)
    torch.save({"encoder": enc.state_dict(), "decoder": dec.state_dict(), "step": 1234}, ck / "ae.pt")
    for name, step in (("den.pt", 555), ("den_ema.pt", 556)):
        den = Denoiser(cfg)
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in den.state_dict().items()}
        torch.save({"model": sd, "step": step}, ck / name)
    (ck / "ae_loss.json").write_text(
        json.dumps(
            [{"step": 25, "time": 1.0, "rec": 0.5, "edge": 0.1}, {"step": 50, "time": 2.0, "rec": 0.3, "edge": 0.05}]
        )
    )
    (ck / "den_loss.json").write_text(json.dumps([{"step": 25, "time": 3.0, "flow": 0.9, "shortcut": 0.4}]))
    from PIL import Image

    for n in ("ae_loss.png", "den_loss.png"):
        Image.new("RGB", (4, 4)).save(ck / n)
    return enc, dec


def test_export_from_checkpoint_cli(tmp_path):
    cfg = ex.small_config()
    ck = tmp_path / "ckpt"
    enc, _ = _fake_checkpoint(ck, cfg)
    out, docs = tmp_path / "weights", tmp_path / "docs" / "training"
    rc = ex.main(["--ckpt", str(ck), "--out", str(out), "--use-ema", "--data-version", "aw-3", "--docs", str(docs)])
    assert rc == 0
    m = load_manifest(out)
    assert m.data_version == "aw-3"
    assert m.training["ae_steps"] == 1234 and m.training["denoiser_steps"] == 556
    assert m.training["denoiser_weights"] == "ema"
    assert m.training["ae_loss_final"]["rec"] == pytest.approx(0.4)
    assert sorted(p.name for p in docs.iterdir()) == ["ae_loss.png", "den_loss.png"]
    e2, _, _ = load_torch_modules(m)
    for (k, a), b in zip(enc.state_dict().items(), e2.state_dict().values()):
        torch.testing.assert_close(a.half().float(), b, rtol=0, atol=0, msg=k)
    # raw (non-EMA) weights, and a clear error for a folder that is not a checkpoint
    assert ex.main(["--ckpt", str(ck), "--out", str(tmp_path / "w2"), "--no-verify"]) == 0
    assert load_manifest(tmp_path / "w2").training["denoiser_steps"] == 555
    assert ex.main(["--ckpt", str(tmp_path / "empty"), "--out", str(tmp_path / "w3")]) == 2


def test_random_init_needs_explicit_out():
    with pytest.raises(SystemExit):
        ex.main(["--random-init"])
