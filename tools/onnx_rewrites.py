"""Rewrites of an exported graph that keep its numbers and cost onnxruntime less (the motion decoder's profile).

Convolutions' inputs padded to a multiple of 8 channels with zero channels:

onnxruntime runs a convolution in its blocked layout (NCHWc) only when the input's channels are a multiple of its
block, or fewer than one block; otherwise it falls back to im2col and a plain matrix product. The motion decoder
has two such inputs, each a concatenation: the part-mask U-Net's 4 x 13 moved references and 21 heat maps (73
channels, `/masks/inp`) and the 1/8 features beside the heat maps (85, `/g8_in`). One convolution alone, 4 frames,
1 thread, the 2-core Intel Xeon: 85 -> 64 channels 7.7 ms, 88 5.6 ms; 73 -> 32 at 1/4 18.0 ms, 80 10.8 ms.

Padding the concatenation with zeros and the weights with zero input columns leaves every product unchanged;
only the float sums' order may move (1e-6). The checkpoints and the torch model keep their channel counts.

Softmax over the channel axis written out (ReduceMax, Sub, Clip, Exp, ReduceSum, Div): onnxruntime's Softmax on a
non-last axis of (4, 13, 96, 86) took 3.6 ms, the written-out one 0.5 ms (same numbers to 4e-7). The part masks'
softmax (`/Softmax_1`, 7 ms, read by mix_grid and the underlay: torch's export already computes it once) and the
canonical prior's (2.4 ms) are such. The Clip keeps exp's output out of the subnormal range (motion._flush says why):
at e^-80 a share is 1e-35, under the flush's 1e-9, so what is drawn does not change.
"""

from __future__ import annotations

import numpy as np

MULTIPLE = 8
# Under two blocks the input is read as it is (the first-convolution path) and padding only adds work: the
# decoder's output convolution (12 channels) measured 22.5 ms, padded to 16 25.6 ms.
LEAST = 16


def odd_convs(model) -> list[tuple[str, int]]:
    """(name, input channels) of each Conv whose weight is an initializer with input channels that are neither a
    multiple of MULTIPLE nor under LEAST."""
    inits = {i.name: i for i in model.graph.initializer}
    # a stored graph's weights may come through a Cast (fp16 files) or a DequantizeLinear (int8)
    made_by = {o: n for n in model.graph.node for o in n.output if n.op_type in ("Cast", "DequantizeLinear")}
    out = []
    for n in model.graph.node:
        w = n.input[1] if n.op_type == "Conv" else ""
        while w in made_by:
            w = made_by[w].input[0]
        if w in inits:
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            cin = inits[w].dims[1] * group
            if group == 1 and cin >= LEAST and cin % MULTIPLE:
                out.append((n.name, int(cin)))
    return out


def pad_conv_inputs(model) -> list[str]:
    """Pad, in place, every odd convolution (odd_convs) whose input is a channel concatenation read by it alone;
    the names padded."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    made_by = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    convs = {n.name: n for n in g.node if n.op_type == "Conv"}
    padded = []
    for name, cin in odd_convs(model):
        conv = convs[name]
        cat = made_by.get(conv.input[0])
        axis = next((a.i for a in cat.attribute if a.name == "axis"), None) if cat is not None else None
        if cat is None or cat.op_type != "Concat" or axis != 1 or readers[conv.input[0]] != 1:
            continue
        k = -cin % MULTIPLE
        w = inits[conv.input[1]]
        if readers[w.name] != 1 or w.data_type != TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(w)
        w.CopyFrom(numpy_helper.from_array(np.pad(arr, ((0, 0), (0, k), (0, 0), (0, 0))), w.name))
        # zeros (n, k, h, w), n, h, w read from the concatenation's first input at run time (all are dynamic)
        p = f"{name}__pad"
        g.initializer.extend(
            [
                numpy_helper.from_array(np.array([1, 0, 1, 1], np.int64), p + "_keep"),
                numpy_helper.from_array(np.array([0, k, 0, 0], np.int64), p + "_add"),
            ]
        )
        zero = helper.make_tensor(p + "_zero", TensorProto.FLOAT, [1], [0.0])
        nodes = [
            helper.make_node("Shape", [cat.input[0]], [p + "_shape"], name=p + "_Shape"),
            helper.make_node("Mul", [p + "_shape", p + "_keep"], [p + "_kept"], name=p + "_Mul"),
            helper.make_node("Add", [p + "_kept", p + "_add"], [p + "_size"], name=p + "_Add"),
            helper.make_node("ConstantOfShape", [p + "_size"], [p], name=p + "_Zeros", value=zero),
        ]
        at = list(g.node).index(cat)
        for i, n in enumerate(nodes):
            g.node.insert(at + i, n)
        cat.input.append(p)
        padded.append(name)
    return padded


EXP_FLOOR = -80.0  # exp(-80) = 1.8e-35: normal in float32, and divided by 13 parts still normal


def _channel_softmax_nodes(model) -> list:
    return [
        n
        for n in model.graph.node
        if n.op_type == "Softmax" and next((a.i for a in n.attribute if a.name == "axis"), -1) == 1
    ]


def channel_softmaxes(model) -> list[str]:
    """Names of the Softmax nodes over axis 1 (onnxruntime transposes those to the last axis and back)."""
    return [n.name for n in _channel_softmax_nodes(model)]


def write_out_softmax(model) -> list[str]:
    """Replace, in place, each channel_softmaxes node by its written-out form; the names replaced."""
    from onnx import helper, numpy_helper

    g = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    found = _channel_softmax_nodes(model)
    for k, sm in enumerate(found):
        x, y, name = sm.input[0], sm.output[0], sm.name
        p = f"{name or 'softmax'}__w{k}"
        g.initializer.extend(
            [
                numpy_helper.from_array(np.array([1], np.int64), p + "_axes"),
                numpy_helper.from_array(np.array(EXP_FLOOR, np.float32), p + "_floor"),
            ]
        )
        if opset >= 18:
            rmax = helper.make_node("ReduceMax", [x, p + "_axes"], [p + "_max"], name=p + "_Max", keepdims=1)
        else:
            rmax = helper.make_node("ReduceMax", [x], [p + "_max"], name=p + "_Max", axes=[1], keepdims=1)
        nodes = [
            rmax,
            helper.make_node("Sub", [x, p + "_max"], [p + "_d"], name=p + "_Sub"),
            helper.make_node("Clip", [p + "_d", p + "_floor"], [p + "_c"], name=p + "_Clip"),
            helper.make_node("Exp", [p + "_c"], [p + "_e"], name=p + "_Exp"),
            helper.make_node("ReduceSum", [p + "_e", p + "_axes"], [p + "_s"], name=p + "_Sum", keepdims=1),
            helper.make_node("Div", [p + "_e", p + "_s"], [y], name=name),
        ]
        at = list(g.node).index(sm)
        g.node.remove(sm)
        for i, n in enumerate(nodes):
            g.node.insert(at + i, n)
    return [n.name for n in found]


def _conv_key(node) -> str:
    return node.input[0] + "|" + "|".join(sorted(a.SerializeToString().hex() for a in node.attribute))


def merge_sibling_convs(model) -> list[list[str]]:
    """Merge, in place, convolutions that read the same input with the same attributes (group 1, a bias) into one
    whose weights are theirs concatenated (a Concat of the stored weights, which onnxruntime folds at load: the
    initializers keep their names, so engines/tiny/motion_graph_weights.py reads them as before), its output split
    back into theirs. The residual decoder's `/out` (12 -> 5) and `/res` (12 -> 4) read the same full-size
    concatenation: one convolution of 9 outputs costs onnxruntime less than two of 5 and 4 (each padded to a block
    of 16 outputs in its blocked layout). Same products, same sums. The groups merged, by node name."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    made_by = {o: n for n in g.node for o in n.output}

    def stored(name: str):  # the initializer a weight or bias is (through a Cast), else None
        while name in made_by and made_by[name].op_type == "Cast":
            name = made_by[name].input[0]
        return inits.get(name)

    groups: dict[str, list] = {}
    for n in g.node:
        if n.op_type != "Conv" or len(n.input) < 3 or next((a.i for a in n.attribute if a.name == "group"), 1) != 1:
            continue
        if stored(n.input[1]) is None or stored(n.input[2]) is None:
            continue
        groups.setdefault(_conv_key(n), []).append(n)
    merged = []
    for convs in groups.values():
        if len(convs) < 2:
            continue
        p = convs[0].name + "__merged"
        outs = [int(stored(c.input[1]).dims[0]) for c in convs]
        g.initializer.append(numpy_helper.from_array(np.array(outs, np.int64), p + "_split"))
        conv = helper.make_node("Conv", [convs[0].input[0], p + "_w", p + "_b"], [p + "_y"], name=p)
        conv.attribute.extend(convs[0].attribute)
        nodes = [
            helper.make_node("Concat", [c.input[1] for c in convs], [p + "_w"], name=p + "_W", axis=0),
            helper.make_node("Concat", [c.input[2] for c in convs], [p + "_b"], name=p + "_B", axis=0),
            conv,
            helper.make_node(
                "Split", [p + "_y", p + "_split"], [c.output[0] for c in convs], name=p + "_Split", axis=1
            ),
        ]
        last = max(list(g.node).index(c) for c in convs)
        for c in convs:
            g.node.remove(c)
        at = last - len(convs) + 1  # after every weight's Cast (each stood before its convolution)
        for i, n in enumerate(nodes):
            g.node.insert(at + i, n)
        merged.append([c.name for c in convs])
    return merged


__all__ = [
    "LEAST",
    "MULTIPLE",
    "channel_softmaxes",
    "merge_sibling_convs",
    "odd_convs",
    "pad_conv_inputs",
    "write_out_softmax",
]
