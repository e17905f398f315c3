"""Export architecture 3 (the motion decoder and denoiser) to a serving folder of ONNX graphs.

    python -m tools.export_motion DECODER.pt DENOISER.pt OUT_DIR [--fp32] [--int8-denoiser] [--int8-decoder]
    python -m tools.export_motion DECODER.pt OUT_DIR --denoiser-from FOLDER [--int8-decoder] [--copy-only]
    python -m tools.export_motion --random OUT_DIR [--shape small] [--atlas 0] [--seed 0]

DECODER.pt is tools.train_motion's `motion_ema.pt`, DENOISER.pt tools.train_motion_den's `motion_den.pt` or
`motion_den_best.pt`. The folder (engines/tiny/motion_weights.py) is what `avatarcast serve --engine motion
--weights OUT_DIR` serves on onnxruntime, with no torch. Every weight is rounded to fp16 first (half the files;
the graphs store fp16 initializers and a Cast, which onnxruntime folds at load, so they run in float32) unless
--fp32. Each graph is checked with onnxruntime against torch before the manifest is written; the decoder at a box
and a batch other than the traced ones (its batch, box size and place are dynamic).

--denoiser-from takes an exported folder's denoiser graph as it is (its file, architecture, motion normalization
and provenance): the denoiser works in motion space, so a new decoder can ship beside a denoiser whose training
checkpoint was not kept (the shipped one's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from avatarcast.engines.avatar_world.skeleton import MOTION_DIM
from avatarcast.engines.errors import EngineError
from avatarcast.engines.tiny.motion import SHAPES, MotionDecoder, pixel_centres, shape_to_dict
from avatarcast.engines.tiny.motion_backends import OnnxMotionBackend
from avatarcast.engines.tiny.motion_denoiser import MotionDenoiser, build_denoiser
from avatarcast.engines.tiny.motion_torch import load_checkpoints, load_decoder
from avatarcast.engines.tiny.motion_weights import GRAPHS, MotionManifest, load_motion_manifest, write_motion_manifest
from tools.export_tiny import DENOISER_INPUTS, fp16_initializers, round_module_to_fp16

DECODER_INPUTS = (
    "motion",
    "ref_motion",
    "ref",
    "f2",
    "f4",
    "f8",
    "centres",
    "atlas",
)  # atlas: where the decoder mixes one


class ReferenceGraph(torch.nn.Module):
    def __init__(self, dec: MotionDecoder):
        super().__init__()
        self.dec = dec

    def forward(self, ref):
        return self.dec.encode_reference(ref)


class DecoderGraph(torch.nn.Module):
    """One avatar's reference (batch 1, as the engine keeps it), n motions, any box (its pixel centres)."""

    def __init__(self, dec: MotionDecoder, copy_only: bool = False):
        super().__init__()
        self.dec = dec
        self.copy_only = copy_only

    def forward(self, motion, ref_motion, ref, f2, f4, f8, centres, atlas=None):
        n = motion.shape[0]

        def ex(t):
            return t.expand(n, *t.shape[1:])

        # the reference and the atlas go in as one avatar's (batch 1): the decoder mixes them per motion
        return self.dec.draw(
            motion,
            ex(ref_motion),
            ref if atlas is not None else ex(ref),
            (ex(f2), ex(f4), ex(f8)),
            centres,
            atlas,
            one_avatar=True,
            copy_only=self.copy_only,
        )


def decoder_feeds(dec: MotionDecoder, n: int, box: tuple[int, int, int, int], seed: int) -> dict[str, np.ndarray]:
    """Plausible inputs: a random reference, motions near it (keypoints in the window)."""
    g = torch.Generator().manual_seed(seed)
    H, W = dec.shape.pad_height, dec.shape.window_width
    ref = torch.rand(1, 4, H, W, generator=g) * 2 - 1
    with torch.no_grad():
        f2, f4, f8 = dec.encode_reference(ref)
    rm = (torch.rand(1, MOTION_DIM, generator=g) * 1.2 - 0.6).clamp(-1, 1)
    m = (rm + torch.randn(n, MOTION_DIM, generator=g) * 0.05).clamp(-1, 1)
    c = pixel_centres(box[2], box[3], m, (H, W), box[:2])
    vals = [m, rm, ref, f2, f4, f8, c]
    if dec.shape.atlas:
        vals.append(torch.rand(1, dec.shape.atlas, 4, H, W, generator=g) * 2 - 1)
    return {k: v.numpy() for k, v in zip(DECODER_INPUTS, vals)}


def denoiser_feeds(den: MotionDenoiser, n: int, seed: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    D, T, K = den.D, den.T, den.K
    f = np.float32
    return {
        "x": r.standard_normal((n, T * D, 1, 1)).astype(f),
        "t": r.random(n).astype(f),
        "d": np.full(n, 0.5, f),
        "ctx": r.standard_normal((n, K * D, 1, 1)).astype(f),
        "ref": r.standard_normal((n, D, 1, 1)).astype(f),
        "emotion": r.integers(0, den.emotion_emb.num_embeddings, n).astype(np.int64),
        "intensity": r.random(n).astype(f),
    }


def _export(module, feeds: dict, path: Path, outputs, dynamic: dict, fp16: bool, rewrite: bool = False) -> None:
    """`rewrite`: the same numbers at less cost (tools/onnx_rewrites.py: odd input channel counts padded with zero
    channels, softmax over channels written out)."""
    import onnx

    from tools.onnx_rewrites import pad_conv_inputs, write_out_softmax

    args = tuple(torch.from_numpy(v) for v in feeds.values())
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(feeds),
            output_names=list(outputs),
            dynamic_axes=dynamic,
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    if fp16 or rewrite:
        model = onnx.load(str(path))
        if rewrite:
            pad_conv_inputs(model)
            write_out_softmax(model)
        if fp16:
            fp16_initializers(model)
        onnx.save(model, str(path))


def check(path: Path, module, feeds: dict, tolerance: float = 2e-2, relative: bool = False) -> float:
    """Largest difference between onnxruntime and torch on these inputs (raises over `tolerance`); `relative`: the
    root-mean-square difference over the spread of torch's output instead (for int8 weights, which move every
    output a little)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in s.get_inputs()}  # a copy-only decoder has no use for the reference's features
    got = s.run(None, {k: v for k, v in feeds.items() if k in names})
    with torch.no_grad():
        want = module(*[torch.from_numpy(v) for v in feeds.values()])
    want = want if isinstance(want, (tuple, list)) else (want,)
    if relative:
        err = max(float(np.sqrt(((a - b.numpy()) ** 2).mean()) / b.numpy().std()) for a, b in zip(got, want))
    else:
        err = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(got, want))
    # grid sampling and resizing round differently in onnxruntime: a few pixels at part edges move by 1e-3
    if not err < tolerance:
        raise RuntimeError(f"{path.name}: onnxruntime and torch differ by {err}")
    return err


def quantize_int8(path: Path, min_elements: int = 4096) -> None:
    """The graph's weight matrices stored as int8 in place, one scale per row (weight-only: each becomes a
    DequantizeLinear of a constant, the arithmetic stays float32): a quarter of the float32 file. For the denoiser,
    whose layers are all matrix products: its 8.5 M weights are most of a folder's bytes, and the repository keeps
    its weights under a budget. onnxruntime's dynamic quantization, which also quantizes the activations, moved
    the denoiser's velocity by up to 6 (its spread is about 2); weights alone move it by 0.6% of that spread."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    kept, nodes = [], []
    for init in g.initializer:
        arr = numpy_helper.to_array(init) if init.data_type == TensorProto.FLOAT else None
        if arr is None or arr.ndim != 2 or arr.size < min_elements:
            kept.append(init)
            continue
        scale = (np.maximum(np.abs(arr).max(1), 1e-12) / 127.0).astype(np.float32)
        q = np.clip(np.round(arr / scale[:, None]), -127, 127).astype(np.int8)
        names = [init.name + "__q", init.name + "__s", init.name + "__z"]
        kept += [numpy_helper.from_array(q, names[0]), numpy_helper.from_array(scale, names[1])]
        kept.append(numpy_helper.from_array(np.zeros(len(scale), np.int8), names[2]))
        nodes.append(helper.make_node("DequantizeLinear", names, [init.name], axis=0, name=init.name + "__dq"))
    del g.initializer[:]
    g.initializer.extend(kept)
    for n in reversed(nodes):
        g.node.insert(0, n)
    onnx.save(model, str(path))


def export_decoder_graphs(dec: MotionDecoder, out: Path, fp16: bool, copy_only: bool = False) -> dict[str, float]:
    """reference.onnx and decoder.onnx, each checked against torch: their largest differences. `copy_only`: the
    decoder graph without the generator (tools/motion_copy.py says when that draws the same pixels)."""
    out.mkdir(parents=True, exist_ok=True)
    dec = dec.float().eval()
    if fp16:
        round_module_to_fp16(dec)
    H, W = dec.shape.pad_height, dec.shape.window_width
    errs = {}
    ref_feeds = {"ref": decoder_feeds(dec, 1, (0, 0, 8, 8), 0)["ref"]}
    p = out / GRAPHS["reference"]
    _export(ReferenceGraph(dec), ref_feeds, p, ("f2", "f4", "f8"), {}, fp16)
    errs["reference"] = check(p, ReferenceGraph(dec), ref_feeds)
    p = out / GRAPHS["decoder"]
    dyn = {"motion": {0: "n"}, "centres": {0: "h", 1: "w"}, "frames": {0: "n", 2: "h", 3: "w"}}
    graph = DecoderGraph(dec, copy_only)
    _export(graph, decoder_feeds(dec, 2, (32, 96, 96, 64), 1), p, ("frames",), dyn, fp16, rewrite=True)
    errs["decoder"] = max(
        check(p, graph, decoder_feeds(dec, n, box, 2 + n)) for n, box in ((3, (16, 136, 160, 120)), (1, (0, 0, H, W)))
    )
    return errs


def export(
    dec: MotionDecoder,
    den: MotionDenoiser,
    mean,
    std,
    out: Path,
    source: dict,
    fp16: bool = True,
    int8_denoiser: bool = False,
    copy_only: bool = False,
) -> MotionManifest:
    errs = export_decoder_graphs(dec, out, fp16, copy_only)
    den = den.float().eval()
    if fp16 and not int8_denoiser:
        round_module_to_fp16(den)
    p = out / GRAPHS["denoiser"]
    dyn = {k: {0: "batch"} for k in (*DENOISER_INPUTS, "velocity")}
    _export(den, denoiser_feeds(den, 2, 3), p, ("velocity",), dyn, fp16 and not int8_denoiser)
    if int8_denoiser:  # every output moves a little: its root-mean-square change, relative to the spread
        quantize_int8(p)
        errs["denoiser_int8_relative_rms"] = check(p, den, denoiser_feeds(den, 5, 4), 0.02, relative=True)
    else:
        errs["denoiser"] = check(p, den, denoiser_feeds(den, 5, 4))
    arch = {"width": den.inp.out_features, "blocks": len(den.blocks), "cond_dim": den.emotion_emb.embedding_dim}
    source = {**source, "fp16": fp16, "int8_denoiser": int8_denoiser, "onnx_vs_torch_max_abs": errs}
    return write_motion_manifest(out, shape_to_dict(dec.shape), arch, mean, std, source)


def export_with_denoiser_from(
    dec: MotionDecoder,
    folder: Path,
    out: Path,
    source: dict,
    fp16: bool = True,
    copy_only: bool = False,
    share: bool = False,
    cheaper: bool = False,
) -> MotionManifest:
    """A new decoder beside another folder's denoiser graph, copied byte for byte with what belongs to it, or
    (`share`) read from that folder where it is (the manifest's graphs_from, a path relative to `out`); `cheaper`:
    that folder's (copy-only) decoder draws at the degradation ladder's cheaper rung (the manifest's cheaper_draw)."""
    old = load_motion_manifest(folder)
    if out.resolve() == folder.resolve():
        raise ValueError(f"--denoiser-from {folder}: write the new folder elsewhere (its graphs are read from there)")
    den_graph = old.graph("denoiser")  # checked against the old manifest's sha256
    errs = export_decoder_graphs(dec, out, fp16, copy_only)
    graphs_from: dict[str, str] = {}
    if share:
        (out / GRAPHS["denoiser"]).unlink(missing_ok=True)  # a stale copy would not be read
        graphs_from["denoiser"] = os.path.relpath(den_graph.parent.resolve(), out.resolve())
    else:
        (out / GRAPHS["denoiser"]).write_bytes(den_graph.read_bytes())
    old_errs = old.source.get("onnx_vs_torch_max_abs", {})
    errs.update({k: v for k, v in old_errs.items() if k.startswith("denoiser")})
    source = {
        **source,
        "denoiser": {**old.source.get("denoiser", {}), "graph_from": old.files[GRAPHS["denoiser"]]},
        "fp16": fp16,
        "int8_denoiser": bool(old.source.get("int8_denoiser", False)),
        "onnx_vs_torch_max_abs": errs,
    }
    shape = shape_to_dict(dec.shape)
    cheaper_draw = os.path.relpath(folder.resolve(), out.resolve()) if cheaper else None
    man = write_motion_manifest(out, shape, old.denoiser_arch, old.mean, old.std, source, graphs_from, cheaper_draw)
    if cheaper:
        OnnxMotionBackend(man, threads=1)  # checks that the cheaper folder draws the same motions, copy-only
    return man


def merge_decoder_convs(folder: Path) -> list[list[str]]:
    """The last step of an export: the decoder graph's sibling convolutions merged (tools/onnx_rewrites.py
    merge_sibling_convs: the same numbers; the residual decoder's /out and /res, 17.0 -> 18.1 fps for two streams,
    docs/bench/residual_speed_2026-12-06), after any int8 step (whose calibration reads the graph as exported), and
    the manifest rewritten with the new hash. A graph with nothing to merge (the copy draw's) is left as it is."""
    import onnx

    from tools.onnx_rewrites import merge_sibling_convs

    man = load_motion_manifest(folder)
    path = folder / GRAPHS["decoder"]
    model = onnx.load(str(path))
    merged = merge_sibling_convs(model)
    if merged:
        onnx.save(model, str(path))
        source = {**man.source, "merged_convs": merged}
        write_motion_manifest(
            folder, man.decoder_shape, man.denoiser_arch, man.mean, man.std, source, man.graphs_from, man.cheaper_draw
        )
    return merged


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path, help="DECODER.pt DENOISER.pt OUT_DIR, or with --random: OUT_DIR")
    ap.add_argument("--fp32", action="store_true", help="keep float32 weights (twice the files)")
    ap.add_argument("--int8-denoiser", action="store_true", help="the denoiser's weights in int8 (the shipped folder)")
    ap.add_argument(
        "--int8-decoder",
        action="store_true",
        help="then the decoder's part-mask network in int8, calibrated on its own engine (tools/motion_int8.py)",
    )
    ap.add_argument(
        "--denoiser-from",
        type=Path,
        metavar="FOLDER",
        help="DECODER.pt OUT_DIR: keep this exported folder's denoiser graph (and its normalization) as it is",
    )
    ap.add_argument(
        "--share-denoiser",
        action="store_true",
        help="with --denoiser-from: read its denoiser graph where it is, not a copy (the manifest's graphs_from)",
    )
    ap.add_argument(
        "--cheaper-draw",
        action="store_true",
        help="with --denoiser-from: its copy-only decoder draws at the degradation ladder's cheaper rung (the "
        "manifest's cheaper_draw: how the shipped residual folder steps down to the copy draw)",
    )
    ap.add_argument(
        "--copy-only",
        action="store_true",
        help="no generator in the decoder graph, if its copy mask is 1 on held-out frames (tools/motion_copy.py)",
    )
    ap.add_argument("--random", action="store_true", help="fresh random networks (tests, benchmarks of the cost)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small", help="with --random")
    ap.add_argument("--atlas", type=int, default=0, help="with --random: atlas faces the decoder mixes")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if (args.share_denoiser or args.cheaper_draw) and not args.denoiser_from:
        ap.error("--share-denoiser and --cheaper-draw go with --denoiser-from")
    torch.manual_seed(args.seed)
    if args.random:
        if len(args.paths) != 1:
            ap.error("--random takes OUT_DIR only")
        (out,) = args.paths
        import dataclasses

        dec = MotionDecoder(dataclasses.replace(SHAPES[args.shape], atlas=args.atlas))
        den = build_denoiser({"width": 128, "blocks": 2})
        with torch.no_grad():
            last = dec.last_layer if dec.shape.half_tail or dec.shape.quarter_tail else dec.out
            for m in (last, den.out):  # zero-initialized last layers
                torch.nn.init.normal_(m.weight, std=0.02)  # would hide the graphs' work
        mean, std = np.zeros(MOTION_DIM, np.float32), np.ones(MOTION_DIM, np.float32)
        source = {"random": True, "shape": args.shape, "seed": args.seed}
    elif args.denoiser_from:
        if len(args.paths) != 2 or args.int8_denoiser:
            ap.error("--denoiser-from takes DECODER.pt OUT_DIR (the denoiser graph is kept as it was exported)")
        dec_p, out = args.paths
        dec, st = load_decoder(dec_p)
        source = {"decoder": {"file": dec_p.name, "sha256": _sha(dec_p), "step": int(st.get("step", 0))}}
    else:
        if len(args.paths) != 3:
            ap.error("give DECODER.pt DENOISER.pt OUT_DIR")
        dec_p, den_p, out = args.paths
        dec, den, st, sd = load_checkpoints(dec_p, den_p)
        mean, std = sd["mean"].float().numpy(), sd["std"].float().numpy()
        source = {
            "decoder": {"file": dec_p.name, "sha256": _sha(dec_p), "step": int(st.get("step", 0))},
            "denoiser": {"file": den_p.name, "sha256": _sha(den_p), "step": int(sd.get("step", 0))},
        }
    if args.copy_only:
        from tools.motion_copy import COPY_LOGIT_MIN, COPY_ONLY_MAX_ABS, copies_only, copy_margin

        margin = copy_margin(dec)
        if not copies_only(margin):
            need = f"a copy logit >= {COPY_LOGIT_MIN} and |full - copy only| <= {COPY_ONLY_MAX_ABS}"
            print(f"--copy-only: the generator draws ({margin}; needs {need})", file=sys.stderr)
            return 2
        source = {**source, "copy_only": margin}
    if args.denoiser_from:
        try:
            man = export_with_denoiser_from(
                dec,
                args.denoiser_from,
                out,
                source,
                fp16=not args.fp32,
                copy_only=args.copy_only,
                share=args.share_denoiser,
                cheaper=args.cheaper_draw,
            )
        except (ValueError, EngineError) as e:  # EngineError: a cheaper folder that draws other motions
            ap.error(str(e))
    else:
        fp16, int8, copy_only = not args.fp32, args.int8_denoiser, args.copy_only
        man = export(dec, den, mean, std, out, source, fp16=fp16, int8_denoiser=int8, copy_only=copy_only)
    if args.int8_decoder:
        from tools.motion_int8 import quantize_folder

        quantize_folder(out)
    merge_decoder_convs(out)
    man = load_motion_manifest(out)
    sizes = {f: man.graph(g, verify=False).stat().st_size for g, f in GRAPHS.items()}
    print(json.dumps({"folder": str(out), "bytes": sizes, "weights_hash": man.weights_hash, **man.source}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
