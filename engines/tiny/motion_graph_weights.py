"""Architecture 3's torch networks filled from an exported folder's ONNX graphs (tools.export_motion wrote them).

The shipped folders hold no training checkpoint (the tree has a size budget), only the graphs that onnxruntime serves;
their initializers are the weights. What the export did to them, and how each is read back:
- fp16 weights stored as fp16 + Cast: cast back to float32 (lossless: the export rounded every weight to fp16 first);
- the denoiser's int8 weights (a DequantizeLinear of a constant, per row): dequantized;
- the decoder's part-mask convolutions in static int8 (QDQ, tools/motion_int8.py): weights and biases dequantized, and
  each activation's quantize-dequantize pair kept as a fake quantization (QDQConv2d), so torch computes the numbers
  onnxruntime's integer convolutions compute, not the float network they were calibrated from;
- convolution inputs padded with zero channels (tools/onnx_rewrites.py): the zero columns cut off (checked zero);
- parameters that constant folding merged into a constant (the part prior's widths, biases and sharpness, the atlas
  mix's temperature and faces): read back from the one node of the graph that reads each (`_FOLDED`), inverted.
Anything that cannot be matched raises GraphWeightsError: a network is filled whole, or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from avatarcast.engines.tiny.motion import MotionDecoder, shape_from_dict
from avatarcast.engines.tiny.motion_denoiser import MotionDenoiser, build_denoiser
from avatarcast.engines.tiny.motion_weights import MotionManifest
from avatarcast.engines.tiny.weights import WeightsError

DECODER_PREFIX = "dec."  # tools.export_motion traces the decoder inside a wrapper module (`self.dec`)
# The generator's modules: a copy-only decoder graph (tools.export_motion --copy-only) holds none of them.
GENERATOR = (
    *("cond.", "g8_in.", "g8.", "up4.", "g4_in.", "g4.", "up2.", "g2_in.", "g2."),
    *(
        "up1.",
        "out.",
        "res.",
        "tail.",
        "tail_px.",
        "tail_in.",
    ),  # the full-size tail, or MotionShape.half_tail's or quarter_tail's
)


class GraphWeightsError(WeightsError):
    """An exported graph's weights do not fill the torch network: a weight missing, unmatched, of another shape, or a
    graph laid out otherwise than tools.export_motion writes it."""


@dataclass(frozen=True)
class GraphConstants:
    """A graph's constants: every initializer, and every tensor computed from them alone by Identity, Cast,
    DequantizeLinear, Exp or Neg, as numpy arrays; and the graph's nodes, to find what reads them."""

    path: Path
    values: dict[str, np.ndarray]
    nodes: list  # onnx NodeProto
    inputs: frozenset[str]

    def readers(self, name: str) -> list:
        return [n for n in self.nodes if name in n.input]


def _attr(node, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def read_graph(path: Path) -> GraphConstants:
    """The graph's constants (GraphConstants). GraphWeightsError for a file onnx cannot read."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError, OSError, ...: all mean "not a graph we can read"
        raise GraphWeightsError(f"{path}: not a readable ONNX graph ({e})") from e
    g = model.graph
    values = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    for n in g.node:  # in graph order: a Cast may read a DequantizeLinear's scale, and the other way round
        if not all(i in values for i in n.input if i):
            continue
        if n.op_type == "Identity":  # torch's export shares equal initializers (zero-initialized layers) so
            values[n.output[0]] = values[n.input[0]]
        elif n.op_type in ("Exp", "Neg") and values[n.input[0]].dtype == np.float32:
            # what onnxruntime's optimizer folds (the shipped int8 graphs) and torch's export leaves (-t, exp(-t))
            x = values[n.input[0]]
            values[n.output[0]] = np.exp(x) if n.op_type == "Exp" else -x
        elif n.op_type == "Cast" and _attr(n, "to", 0) == onnx.TensorProto.FLOAT:
            values[n.output[0]] = values[n.input[0]].astype(np.float32)
        elif n.op_type == "DequantizeLinear":
            q, scale = values[n.input[0]], values[n.input[1]].astype(np.float32)
            zero = values[n.input[2]] if len(n.input) > 2 and n.input[2] else None
            shape = [1] * q.ndim
            if scale.size > 1:
                shape[_attr(n, "axis", 1) % q.ndim] = -1
            z = 0.0 if zero is None else zero.astype(np.float32).reshape(shape if zero.size > 1 else ())
            values[n.output[0]] = ((q.astype(np.float32) - z) * scale.reshape(shape if scale.size > 1 else ())).astype(
                np.float32
            )
    return GraphConstants(Path(path), values, list(g.node), frozenset(i.name for i in g.input))


def _made_by(consts: GraphConstants) -> dict[str, Any]:  # onnx NodeProto
    return {o: n for n in consts.nodes for o in n.output}


def _scope(node_name: str) -> str:
    """'/prior/Div_2' -> '/prior/'; '/Mul_1' -> '/'."""
    return node_name.rsplit("/", 1)[0] + "/"


@dataclass(frozen=True)
class _Folded:
    """Where constant folding left a parameter: the one constant of this shape that input `index` of an `op` node in
    module scope `scope` reads (and, if `other_from`, whose other input that op type makes)."""

    op: str
    scope: str
    index: int
    shape: tuple[int, ...]
    other_from: str | None = None

    def find(self, consts: GraphConstants, scope: str | None = None) -> np.ndarray:
        made_by = _made_by(consts)
        found: dict[str, np.ndarray] = {}
        for n in consts.nodes:
            if n.op_type != self.op or _scope(n.name) != (scope or self.scope) or len(n.input) <= self.index:
                continue
            name = n.input[self.index]
            v = consts.values.get(name)
            if v is None or v.dtype != np.float32 or tuple(v.shape) != self.shape:
                continue
            if self.other_from is not None:
                other = made_by.get(n.input[1 - self.index])
                if other is None or other.op_type != self.other_from:
                    continue
            found[name] = v
        if len(found) != 1:
            raise GraphWeightsError(
                f"{consts.path}: expected one folded constant {self.shape} read by a {self.op} in {scope or self.scope}"
                f", found {len(found)} ({sorted(found)[:4]})"
            )
        return next(iter(found.values()))


def _folded_decoder(dec: MotionDecoder, consts: GraphConstants) -> dict[str, np.ndarray]:
    """The decoder's parameters that constant folding merged into other constants, as state-dict entries; those the
    graph still holds by name (torch's export folds fewer than onnxruntime's optimizer, which the int8 pass ran) are
    left to `fill`."""
    p = len(dec.prior.bias) - 1  # moving parts (the still part has a bias only)
    named = {k for k in ("prior.log_width", "prior.bias", "prior.log_sharp", "atlas_log_temp", "atlas_faces")}
    named = {k for k in named if DECODER_PREFIX + k in consts.values}
    two_calls = any(_scope(n.name) == "/prior_1/" for n in consts.nodes)

    def find(spec: _Folded) -> np.ndarray:
        v = spec.find(consts)
        # the underlay runs the prior a second time (scope /prior_1/): the same constant, or a graph we do not know
        if spec.scope == "/prior/" and two_calls and not np.array_equal(spec.find(consts, "/prior_1/"), v):
            raise GraphWeightsError(f"{consts.path}: the part prior's two calls read different {spec.op} constants")
        return v

    def positive(v: np.ndarray, what: str) -> np.ndarray:
        if (v <= 0).any():
            raise GraphWeightsError(f"{consts.path}: the {what} is not positive")
        return v

    out: dict[str, np.ndarray] = {}
    if "prior.log_width" not in named:  # d / exp(log_width)
        out["prior.log_width"] = np.log(positive(find(_Folded("Div", "/prior/", 1, (1, p, 1, 1))), "prior's widths"))
        out["prior.log_width"] = out["prior.log_width"].reshape(p)
    if "prior.bias" not in named:  # bias[:-1] - 0.5 (d / w)^2, and bias[-1].expand(...)
        bones, still = find(_Folded("Sub", "/prior/", 0, (1, p, 1, 1))), find(_Folded("Expand", "/prior/", 0, ()))
        out["prior.bias"] = np.concatenate([bones.reshape(p), still.reshape(1)])
    if "prior.log_sharp" not in named:  # exp(log_sharp) * cat(bones, still)
        out["prior.log_sharp"] = np.log(positive(find(_Folded("Mul", "/prior/", 0, ())), "prior's sharpness"))
    if dec.shape.atlas:
        faces = dec.get_buffer("atlas_faces")
        if "atlas_log_temp" not in named:  # -d2 * exp(-atlas_log_temp)
            temp = find(_Folded("Mul", "/", 1, (), other_from="Neg"))
            out["atlas_log_temp"] = -np.log(positive(temp, "atlas mix's temperature"))
        if "atlas_faces" not in named:  # face[:, None] - faces[None]
            out["atlas_faces"] = find(_Folded("Sub", "/", 1, (1, *faces.shape)))[0]
    return {
        k: np.asarray(v, np.float32).reshape(dec.get_parameter(k).shape if k != "atlas_faces" else v.shape)
        for k, v in out.items()
    }


def _fit(key: str, arr: np.ndarray, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """A graph's weight for a parameter of `shape`: as it is, or a convolution's input channels padded with zero
    channels (tools/onnx_rewrites.pad_conv_inputs) cut back."""
    if tuple(arr.shape) == shape:
        return arr
    padded = (
        arr.ndim == 4
        and len(shape) == 4
        and arr.shape[0] == shape[0]
        and arr.shape[2:] == shape[2:]
        and arr.shape[1] > shape[1]
    )
    if padded and not arr[:, shape[1] :].any():
        return arr[:, : shape[1]]
    raise GraphWeightsError(f"{path}: {key} is {tuple(arr.shape)} in the graph, the network's is {shape}")


_STORED = ("_DequantizeLinear_Output",)  # what the int8 quantizer calls a dequantized weight


def _weight_names(consts: GraphConstants, prefix: str) -> set[str]:
    """The graph's float constants that are a layer's weight or bias (by the name torch's export gave them)."""
    names = set()
    for n, v in consts.values.items():
        base = n.removesuffix(_STORED[0])
        if v.dtype == np.float32 and base.startswith(prefix) and base.endswith((".weight", ".bias")) and "__" not in n:
            names.add(n)
    return names


def fill(
    module: nn.Module,
    graphs: list[tuple[GraphConstants, tuple[str, ...]]],
    prefix: str = "",
    folded: dict[str, np.ndarray] | None = None,
    skip: tuple[str, ...] = (),
) -> None:
    """Every state-dict entry of `module` from the graph that holds its module (graphs: (constants, the state-dict
    prefixes it holds; () for all the others)), by the name torch's export gave it (`prefix` + its key) or from
    `folded`; the keys starting with one of `skip` are left as they are.

    Raises:
        GraphWeightsError: an entry no graph holds, one of another shape, or a graph weight nothing reads.
    """
    folded = folded or {}
    state = module.state_dict()
    filled: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    used: dict[Path, set[str]] = {c.path: set() for c, _ in graphs}
    for key, t in state.items():
        if key.startswith(skip):
            continue
        if key in folded:
            filled[key] = torch.from_numpy(_fit(key, folded[key], tuple(t.shape), graphs[-1][0].path).copy())
            continue
        consts = next((c for c, holds in graphs if not holds or key.startswith(holds)), None)
        name = None
        if consts is not None:
            name = next((n for n in (prefix + key, prefix + key + _STORED[0]) if n in consts.values), None)
        if consts is None or name is None:
            missing.append(key)
            continue
        used[consts.path].add(name)
        arr = consts.values[name].astype(np.float32)
        filled[key] = torch.from_numpy(_fit(key, arr, tuple(t.shape), consts.path).copy())
    if missing:
        where = ", ".join(str(c.path) for c, _ in graphs)
        raise GraphWeightsError(f"no weight in {where} for {len(missing)} of the network's: {missing[:6]}")
    for consts, holds in graphs:
        unread = {
            n
            for n in _weight_names(consts, prefix)
            if n not in used[consts.path] and not n.removeprefix(prefix).startswith(skip)
        }
        unread = {n for n in unread if not holds or n.removeprefix(prefix).startswith(holds)}
        if unread:
            raise GraphWeightsError(f"{consts.path}: weights the torch network has no place for: {sorted(unread)[:6]}")
    result = module.load_state_dict(filled, strict=False)
    left = [k for k in result.missing_keys if not k.startswith(skip)]
    if left or result.unexpected_keys:
        raise GraphWeightsError(f"not filled: {left}, unexpected: {result.unexpected_keys}")


# --- the part-mask network's static int8 (QDQ) --------------------------------------------------------------------


@dataclass(frozen=True)
class Quantization:
    """One activation's quantize-dequantize pair: scale, zero point and the integer range."""

    scale: float
    zero: int
    low: int
    high: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # ONNX QuantizeLinear then DequantizeLinear (round half to even, saturate, scale back) in one fused kernel: the
        # five elementwise passes written out were a fifth of a CPU draw. It multiplies by 1 / scale where ONNX
        # divides, which can move a value on a rounding edge by one step (the tests' tolerance covers such steps).
        if x.dtype != torch.float32:  # under bfloat16 autocast (the torch backend's amp): the fused kernel in float32
            return torch.fake_quantize_per_tensor_affine(x.float(), self.scale, self.zero, self.low, self.high).to(
                x.dtype
            )
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero, self.low, self.high)


class QDQConv2d(nn.Conv2d):
    """A convolution of the static int8 graph: its input and output pass through their quantize-dequantize pairs, as
    onnxruntime's integer convolution reads and writes them (the weights are the dequantized int8 ones)."""

    def __init__(self, conv: nn.Conv2d, quant_in: Quantization, quant_out: Quantization):
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            conv.stride,  # type: ignore[arg-type]
            conv.padding,  # type: ignore[arg-type]
            conv.dilation,  # type: ignore[arg-type]
            conv.groups,
            conv.bias is not None,
        )
        self.load_state_dict(conv.state_dict())
        self.quant_in, self.quant_out = quant_in, quant_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_out(super().forward(self.quant_in(x)))


def _quantization(consts: GraphConstants, node, path: Path) -> Quantization:
    scale = consts.values.get(node.input[1])
    zero = consts.values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
    if scale is None or zero is None or scale.size != 1 or zero.size != 1:
        raise GraphWeightsError(f"{path}: {node.name} is not a per-tensor activation quantization")
    info = np.iinfo(zero.dtype)
    return Quantization(float(scale.reshape(())), int(zero.reshape(())), int(info.min), int(info.max))


def quantized_convs(consts: GraphConstants, prefix: str) -> dict[str, tuple[Quantization, Quantization]]:
    """Each statically quantized Conv's module path ('masks.inp') -> its input's and its output's quantization.

    Raises:
        GraphWeightsError: a quantize-dequantize pair other than a quantized convolution's input or output, or one
            whose dequantized tensor something else reads too.
    """
    made_by = _made_by(consts)
    path = consts.path
    out: dict[str, tuple[Quantization, Quantization]] = {}
    seen: set[str] = set()  # the QuantizeLinear nodes accounted for

    def pair(dq) -> Quantization:
        q = made_by.get(dq.input[0])
        if q is None or getattr(q, "op_type", None) != "QuantizeLinear":
            raise GraphWeightsError(f"{path}: {dq.name} dequantizes no activation's QuantizeLinear")
        a, b = _quantization(consts, q, path), _quantization(consts, dq, path)
        if a != b:
            raise GraphWeightsError(f"{path}: {q.name} and {dq.name} quantize differently")
        seen.add(q.name)
        return a

    for n in consts.nodes:
        if n.op_type != "Conv" or not n.input[1].endswith(_STORED[0]):
            continue
        module = n.input[1].removesuffix(_STORED[0]).removeprefix(prefix).removesuffix(".weight")
        dq_in = made_by.get(n.input[0])
        if dq_in is None or getattr(dq_in, "op_type", None) != "DequantizeLinear" or consts.readers(n.input[0]) != [n]:
            raise GraphWeightsError(f"{path}: {n.name}'s input is not its own dequantized activation")
        readers = consts.readers(n.output[0])
        if len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
            raise GraphWeightsError(f"{path}: {n.name}'s output is read before it is quantized")
        dq_out = consts.readers(readers[0].output[0])
        if len(dq_out) != 1 or dq_out[0].op_type != "DequantizeLinear":
            raise GraphWeightsError(f"{path}: {n.name}'s quantized output is not dequantized once")
        out[module] = (pair(dq_in), pair(dq_out[0]))
    stray = [n.name for n in consts.nodes if n.op_type == "QuantizeLinear" and n.name not in seen]
    if stray:
        raise GraphWeightsError(f"{path}: quantized activations outside the int8 convolutions: {stray[:4]}")
    return out


def _swap_qdq(dec: nn.Module, convs: dict[str, tuple[Quantization, Quantization]], path: Path) -> None:
    for name, (qin, qout) in convs.items():
        parent_name, _, leaf = name.rpartition(".")
        try:
            parent = dec.get_submodule(parent_name)
            conv = getattr(parent, leaf)
        except AttributeError as e:
            raise GraphWeightsError(f"{path}: the int8 convolution {name} is no module of the decoder") from e
        if not isinstance(conv, nn.Conv2d):
            raise GraphWeightsError(f"{path}: the int8 convolution {name} is a {type(conv).__name__}")
        setattr(parent, leaf, QDQConv2d(conv, qin, qout))


# --- the folder's networks --------------------------------------------------------------------------------------


def decoder_from_folder(manifest: MotionManifest, verify: bool = True) -> tuple[MotionDecoder, bool]:
    """The folder's decoder as a float32 torch network, eval mode, and whether its graph is copy-only (no generator:
    draw it with copy_only=True; its generator's weights are left as built and never run).

    Raises:
        GraphWeightsError: a weight that cannot be matched (WeightsError: a graph missing or not its sha256).
    """
    dec = MotionDecoder(shape_from_dict(manifest.decoder_shape)).eval()
    ref = read_graph(manifest.graph("reference", verify=verify))
    graph = read_graph(manifest.graph("decoder", verify=verify))
    copy_only = not {"f4", "f8"} <= graph.inputs  # a quarter_tail generator reads no f2
    skip = GENERATOR if copy_only else ()
    fill(
        dec,
        [(ref, ("ref_encoder.",)), (graph, ())],
        DECODER_PREFIX,
        folded=_folded_decoder(dec, graph),
        skip=skip,
    )
    _swap_qdq(dec, quantized_convs(graph, DECODER_PREFIX), graph.path)
    return dec.eval(), copy_only


def denoiser_from_folder(manifest: MotionManifest, verify: bool = True) -> MotionDenoiser:
    """The folder's denoiser (its own graph, or the one `graphs_from` names) as a float32 torch network, eval mode.

    Raises:
        GraphWeightsError: a weight that cannot be matched.
    """
    den = build_denoiser(manifest.denoiser_arch).eval()
    fill(den, [(read_graph(manifest.graph("denoiser", verify=verify)), ())])
    return den


__all__ = [
    "GraphConstants",
    "GraphWeightsError",
    "QDQConv2d",
    "Quantization",
    "decoder_from_folder",
    "denoiser_from_folder",
    "fill",
    "quantized_convs",
    "read_graph",
]
