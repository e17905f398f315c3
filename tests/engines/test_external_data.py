"""engines/tiny/external_data: graphs reading their fp16 weights from a safetensors file, as onnxruntime runs them."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from avatarcast.engines.tiny.external_data import (
    ExternalDataError,
    external_locations,
    inline_graph,
    link_initializers,
    safetensors_spans,
)
from avatarcast.engines.tiny.weights import DEFAULT_DIR, GRAPH_DATA, load_manifest


def _write_safetensors(path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(path))


def _graph(name: str, inits: list) -> onnx.ModelProto:
    """y = (x + a) * b, a and b fp16 initializers cast to float32 (as the exporter writes weights)."""
    nodes = [
        helper.make_node("Cast", ["a"], ["af"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "af"], ["y0"]),
        helper.make_node("Mul", ["y0", "bf"], ["y"]),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [7]) for n in ("x", "y")]
    g = helper.make_graph(nodes, name, io[:1], io[1:], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_onnxruntime_reads_unaligned_offsets_from_a_file_two_graphs_share(tmp_path):
    # 7 fp16 values (14 bytes) each: after the first, every tensor starts 2 bytes off a 4-byte boundary
    tensors = {f"t{i}": (np.arange(7) * (i + 1) / 8).astype(np.float16) for i in range(3)}
    _write_safetensors(tmp_path / "w.safetensors", tensors)
    spans = safetensors_spans(tmp_path / "w.safetensors")
    assert any(o % 4 for o, _ in spans.values())
    x = np.linspace(-1, 1, 7, dtype=np.float32)
    outs = []
    for name, (a, b) in {"g1": ("t0", "t1"), "g2": ("t1", "t2")}.items():
        model = _graph(name, [numpy_helper.from_array(tensors[a], "a"), numpy_helper.from_array(tensors[b], "b")])
        rep = link_initializers(model, tmp_path / "w.safetensors")
        assert rep["external_initializers"] == 2 and rep["inline_bytes"] == 0
        (tmp_path / f"{name}.onnx").write_bytes(model.SerializeToString())
        outs.append((ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"]), a, b))
    for sess, a, b in outs:  # both sessions open at once, on the same file
        want = (x + tensors[a].astype(np.float32)) * tensors[b].astype(np.float32)
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], want)


def test_link_keeps_what_the_file_does_not_hold_inline_and_inlines_back(tmp_path):
    a = (np.arange(7) / 4).astype(np.float16)
    other = (np.arange(7) / 3).astype(np.float16)  # not in the file: stays inline
    _write_safetensors(tmp_path / "w.safetensors", {"a": a, "a32": a.astype(np.float32)})
    model = _graph("g", [numpy_helper.from_array(a, "a"), numpy_helper.from_array(other, "b")])
    exported = model.SerializeToString()
    rep = link_initializers(model, tmp_path / "w.safetensors")
    assert rep["external_initializers"] == 1 and rep["inline_bytes"] == other.nbytes
    assert external_locations(model) == {"w.safetensors"}
    assert [i.name for i in model.graph.initializer if i.data_location == TensorProto.EXTERNAL] == ["a"]
    (tmp_path / "g.onnx").write_bytes(model.SerializeToString())
    assert inline_graph(tmp_path / "g.onnx") == exported  # byte for byte the graph before linking
    (tmp_path / "w.safetensors").unlink()
    with pytest.raises(ExternalDataError, match="does not resolve"):
        inline_graph(tmp_path / "g.onnx")


def test_safetensors_spans_match_the_library(tmp_path):
    from safetensors import safe_open

    tensors = {"x": np.ones((3, 5), np.float16), "y": np.arange(4, dtype=np.float32)}
    _write_safetensors(tmp_path / "w.safetensors", tensors)
    blob = (tmp_path / "w.safetensors").read_bytes()
    spans = safetensors_spans(tmp_path / "w.safetensors")
    with safe_open(str(tmp_path / "w.safetensors"), "np") as f:
        for k in f.keys():
            o, n = spans[k]
            assert blob[o : o + n] == f.get_tensor(k).tobytes()
    (tmp_path / "bad.safetensors").write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00{no}")
    with pytest.raises(ExternalDataError):
        safetensors_spans(tmp_path / "bad.safetensors")


def test_shipped_graphs_store_no_weight_twice():
    """Every fp16 weight of the shipped graphs is read from the safetensors file GRAPH_DATA names."""
    m = load_manifest(DEFAULT_DIR)
    for graph, name in m.onnx_files.items():
        model = onnx.load(str(DEFAULT_DIR / name), load_external_data=False)
        assert external_locations(model) == {GRAPH_DATA[graph]}, name
        inline = [i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT16 and i.raw_data]
        assert inline == [], (name, inline)
