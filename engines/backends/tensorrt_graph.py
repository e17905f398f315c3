"""The ONNX graphs as TensorRT gets them: uint8 I/O moved next to its Casts, and fp16 convolutions.

precision "fp16" (the default build) rewrites the graph so that every convolution runs in fp16 (its
weights are fp16 in the file anyway; its input is cast to fp16 and its output back to fp32), which a
strongly typed network (TensorRT-RTX and TensorRT 11 require one; TensorRT 10 supports it) needs spelled
out. Normalizations, the timestep embeddings (sin/cos of t*1000, which fp16 cannot hold) and the uint8
conversion stay fp32. precision "fp32" keeps the graph as is (TF32 convolutions).
"""

from __future__ import annotations

import numpy as np

from avatarcast.engines.backends.base import BackendError

GRAPH_REWRITE_VERSION = 1  # bump when trt_graph() changes: part of the engine cache key


def uint8_io_outermost(model):
    """Move the uint8 Casts of the graph's I/O outside the layout Transposes next to them.

    The exported graphs read frames as uint8 -> Transpose -> Cast(float) and write them as
    Cast(uint8) -> Transpose; TensorRT takes uint8 only straight into or out of a Cast, so this
    makes it Cast -> Transpose and Transpose -> Cast (the same numbers: a transpose moves values).
    """
    from onnx import TensorProto  # onnx: ~1 s to import, only for TensorRT builds

    g = model.graph
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in g.node for o in n.output}
    for inp in g.input:
        if inp.type.tensor_type.elem_type != TensorProto.UINT8:
            continue
        users = consumers.get(inp.name, [])
        if len(users) == 1 and users[0].op_type == "Transpose":
            tr = users[0]
            nxt = consumers.get(tr.output[0], [])
            if len(nxt) == 1 and nxt[0].op_type == "Cast":
                cast = nxt[0]
                mid, out = tr.output[0], cast.output[0]
                cast.input[0], cast.output[0] = inp.name, mid  # frames -> Cast -> mid
                tr.input[0], tr.output[0] = mid, out  # mid -> Transpose -> out
    for o in g.output:
        if o.type.tensor_type.elem_type != TensorProto.UINT8:
            continue
        tr = producer.get(o.name)
        if tr is not None and tr.op_type == "Transpose":
            cast = producer.get(tr.input[0])
            if cast is not None and cast.op_type == "Cast" and len(consumers.get(cast.output[0], [])) == 1:
                src, mid = cast.input[0], cast.output[0]
                tr.input[0], tr.output[0] = src, mid  # src -> Transpose -> mid
                cast.input[0], cast.output[0] = mid, o.name  # mid -> Cast -> frames
    # keep the node list topologically sorted
    order, avail = [], {i.name for i in g.input} | {i.name for i in g.initializer}
    pending = list(g.node)
    while pending:
        rest = []
        for n in pending:
            if all((not i) or i in avail for i in n.input):
                order.append(n)
                avail.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError("graph is not a DAG")
        pending = rest
    del g.node[:]
    g.node.extend(order)
    return model


def trt_graph(onnx_bytes: bytes, precision: str) -> bytes:
    """The ONNX graph as TensorRT gets it: uint8 I/O next to Casts, and fp16 convolutions."""
    import onnx  # onnx, as above

    model = uint8_io_outermost(onnx.load_from_string(onnx_bytes))
    if precision == "fp16":
        model = fp16_conv_graph(model)
    elif precision != "fp32":
        raise BackendError(f"precision must be fp16 or fp32, not {precision!r}")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def fp16_conv_graph(model):
    """Rewrite an ONNX model so every Conv runs in fp16 (input cast in, output cast back to fp32).

    Weights stored as fp16 initializers + Cast (tools.export_tiny) are used directly; other
    float32 weights are converted. Everything else keeps its type, so the network stays correct
    under TensorRT's strong typing.
    """
    import onnx  # onnx, as above
    from onnx import TensorProto, helper, numpy_helper  # onnx, as above

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    taken = set(inits) | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    casts_to_h: dict[str, str] = {}
    new_inits = []

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    nodes = []
    for n in g.node:
        if n.op_type != "Conv":
            nodes.append(n)
            continue
        ins = []
        for j, name in enumerate(n.input):
            if not name:
                ins.append(name)
                continue
            src = producer.get(name)
            if (
                j > 0
                and src is not None
                and src.op_type == "Cast"
                and src.input[0] in inits
                and inits[src.input[0]].data_type == TensorProto.FLOAT16
            ):
                ins.append(src.input[0])
            elif j > 0 and name in inits and inits[name].data_type == TensorProto.FLOAT:
                h = fresh(name + "__h")
                new_inits.append(numpy_helper.from_array(numpy_helper.to_array(inits[name]).astype(np.float16), h))
                ins.append(h)
            else:
                if name not in casts_to_h:
                    h = fresh(name + "__h")
                    nodes.append(helper.make_node("Cast", [name], [h], to=TensorProto.FLOAT16, name=h + "_cast"))
                    casts_to_h[name] = h
                ins.append(casts_to_h[name])
        y = n.output[0]
        yh = fresh(y + "__h")
        conv = helper.make_node("Conv", ins, [yh], name=(n.name or y) + "_fp16")
        conv.attribute.extend(n.attribute)
        nodes.append(conv)
        nodes.append(helper.make_node("Cast", [yh], [y], to=TensorProto.FLOAT, name=yh + "_cast"))
    g.initializer.extend(new_inits)
    # drop nodes whose outputs nothing uses any more (the weights' fp16 -> fp32 Casts)
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in nodes for i in n.input} | outputs
        keep = [n for n in nodes if any(o in used for o in n.output)]
        if len(keep) == len(nodes):
            break
        nodes = keep
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    live = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
    onnx.checker.check_model(model)
    return model
