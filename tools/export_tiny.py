"""Export the `tiny` engine's weights folder from a training checkpoint (or from random modules).

    python -m tools.export_tiny --ckpt CKPT_DIR --out engines/tiny/weights [--use-ema]
        [--data-version V] [--docs docs/training]
    python -m tools.export_tiny --random-init [--small] --out /tmp/tiny_random [--seed 0]

A checkpoint folder (tools/train_tiny.py) holds config.json (TinyConfig.to_dict), ae.pt
{"encoder", "decoder", "step"}, den.pt and den_ema.pt {"model": fp16 state_dict, "step"}, and
optionally ae_loss.json, den_loss.json and PNG plots. The weights folder gets:

  tiny.safetensors   fp16 weights, keys prefixed encoder. / decoder. / denoiser.
  encoder.onnx       frames uint8 (B, 360, 640, 4) -> latents (B, C, H, W)
  decoder.onnx       latents (B, C, H, W) -> frames uint8 (B, 360, 640, 4)
  denoiser.onnx      x, t, d, ctx, ref, emotion, intensity -> velocity
  manifest.json      config, sha256 of each file, data version, training steps
  (with a lowres.pt in the checkpoint: lowres.safetensors and decoder_lowres.onnx, the same way)

Every weight is rounded to fp16 first (the shipped precision), so the ONNX graphs and the torch
modules built from tiny.safetensors compute the same function. The ONNX graphs store each weight
that is exactly representable in fp16 (all of them, after that rounding) as an fp16 initializer
followed by a Cast to float32, and onnxruntime folds the Cast when it loads the session, so the
speed is that of an fp32 graph. Each weight is stored once: an fp16 initializer whose bytes equal a
tensor of tiny.safetensors is ONNX external data pointing into that file (engines/tiny/external_data.py),
so a graph file holds only its structure and the few float32 constants. Each export is checked with
onnxruntime against torch, on the linked graphs as shipped, at a batch size other than the traced one.

    python -m tools.export_tiny --link DIR
rewrites the graphs of a folder written by an older exporter (weights inline) in that layout, in
place; each linked graph reads back to the old file byte for byte (checked before it is replaced).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from avatarcast.engines.tiny.examples import example_inputs
from avatarcast.engines.tiny.external_data import external_locations, inline_graph, link_initializers
from avatarcast.engines.tiny.model import (
    Denoiser,
    Encoder,
    FrameDecoder,
    FrameEncoder,
    HalfResDecoder,
    TinyConfig,
    make_decoder,
)
from avatarcast.engines.tiny.weights import (
    DEFAULT_DIR,
    GRAPH_DATA,
    LOWRES_FILE,
    LOWRES_ONNX,
    ONNX_FILES,
    TORCH_FILE,
    Manifest,
    load_manifest,
    write_manifest,
)

SMALL_CONFIG = dict(
    enc_channels=(8, 16, 16),
    enc_blocks=(1, 1, 1),
    dec_channels=(16, 16, 8),
    dec_blocks=(1, 1, 0),
    den_channels=(32, 32, 32),
    cond_dim=64,
)

DENOISER_INPUTS = ("x", "t", "d", "ctx", "ref", "emotion", "intensity")
GRAPH_IO = {
    "encoder": (("frames",), ("latents",)),
    "decoder": (("latents",), ("frames",)),
    "denoiser": (DENOISER_INPUTS, ("velocity",)),
    "decoder_lowres": (("latents",), ("frames",)),
}


# --- modules -------------------------------------------------------------------------------


def small_config(**overrides) -> TinyConfig:
    """A TinyConfig with narrow layers (same I/O shapes) for fast tests."""
    return TinyConfig(**{**SMALL_CONFIG, **overrides})


def _as_dict(modules) -> dict[str, torch.nn.Module]:
    if isinstance(modules, dict):
        return {k: modules[k] for k in ("encoder", "decoder", "denoiser")}
    enc, dec, den = modules
    return {"encoder": enc, "decoder": dec, "denoiser": den}


@torch.no_grad()
def round_to_fp16(modules) -> dict[str, torch.nn.Module]:
    """Round every floating parameter/buffer to the nearest fp16 value (kept as float32)."""
    mods = _as_dict(modules)
    for m in mods.values():
        round_module_to_fp16(m)
    return mods


@torch.no_grad()
def round_module_to_fp16(m: torch.nn.Module) -> torch.nn.Module:
    m.float().eval()
    for t in list(m.parameters()) + list(m.buffers()):
        if t.is_floating_point():
            t.copy_(t.half().float())
    return m


@torch.no_grad()
def random_modules(cfg: TinyConfig, seed: int = 0) -> dict[str, torch.nn.Module]:
    """Freshly initialised modules whose outputs are not trivially zero.

    The training init zeroes the last layer of every residual branch and the denoiser's output
    layer (so a fresh denoiser predicts 0); here those layers get a small random init instead, so
    parity tests and benchmarks see real numbers. Latent statistics are randomised too, so the
    normalization baked into the graphs is exercised.
    """
    torch.manual_seed(seed)
    mods = {"encoder": Encoder(cfg), "decoder": make_decoder(cfg), "denoiser": Denoiser(cfg)}
    g = torch.Generator().manual_seed(seed + 1)
    for m in mods.values():
        for sub in m.modules():
            w = getattr(sub, "weight", None)
            if isinstance(sub, (torch.nn.Conv2d, torch.nn.Linear)) and w is not None and not w.any():
                fan_in = w[0].numel()
                w.copy_(torch.randn(w.shape, generator=g) * (0.5 / fan_in**0.5))
                if sub.bias is not None:
                    sub.bias.copy_(torch.randn(sub.bias.shape, generator=g) * 0.01)
    return round_to_fp16(mods)


def random_config(cfg: TinyConfig, seed: int = 0) -> TinyConfig:
    rng = np.random.default_rng(seed)
    C = cfg.latent_channels
    cfg.latent_mean = [round(float(v), 4) for v in rng.normal(0, 0.2, C)]
    cfg.latent_std = [round(float(v), 4) for v in rng.uniform(0.6, 1.6, C)]
    return cfg


def load_checkpoint(ckpt: str | Path, use_ema: bool = True) -> tuple[TinyConfig, dict, dict]:
    """(config, modules, training info) from a tools/train_tiny.py checkpoint folder."""
    ck = Path(ckpt)
    cfg_path = ck / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} is missing: not a tiny training checkpoint")
    cfg = TinyConfig.from_dict(json.loads(cfg_path.read_text()))
    ae_path = ck / "ae.pt"
    if not ae_path.exists():
        raise FileNotFoundError(f"{ae_path} is missing: the autoencoder was not trained")
    den_name = "den_ema.pt" if use_ema else "den.pt"
    den_path = ck / den_name
    if not den_path.exists():
        other = ck / ("den.pt" if use_ema else "den_ema.pt")
        hint = f" ({other.name} exists: use {'no ' if use_ema else ''}--use-ema)" if other.exists() else ""
        raise FileNotFoundError(f"{den_path} is missing{hint}")
    ae = torch.load(ae_path, map_location="cpu", weights_only=True)
    den = torch.load(den_path, map_location="cpu", weights_only=True)
    mods = {"encoder": Encoder(cfg), "decoder": make_decoder(cfg), "denoiser": Denoiser(cfg)}
    mods["encoder"].load_state_dict({k: v.float() for k, v in ae["encoder"].items()})
    mods["decoder"].load_state_dict({k: v.float() for k, v in ae["decoder"].items()})
    mods["denoiser"].load_state_dict({k: v.float() for k, v in den["model"].items()})
    training = {
        "ae_steps": int(ae.get("enc_step", ae.get("step", 0))),
        "decoder_steps": int(ae.get("step", 0)),
        "denoiser_steps": int(den.get("step", 0)),
        "denoiser_weights": "ema" if use_ema else "raw",
        "checkpoint": ck.name,
    }
    report = ck / "report.json"
    if report.exists():
        training["heldout"] = json.loads(report.read_text())
    for name in ("ae_loss.json", "den_loss.json", "decft_loss.json"):
        p = ck / name
        if p.exists():
            try:
                rows = json.loads(p.read_text())
                if rows:
                    last = rows[-max(1, min(len(rows), 20)) :]
                    keys = [k for k in rows[-1] if k not in ("step", "time")]
                    training[name[:-5] + "_final"] = {
                        k: round(float(np.mean([r[k] for r in last if k in r])), 6) for k in keys
                    }
                    training[name[:-5] + "_train_seconds"] = round(float(rows[-1].get("time", 0.0)), 1)
            except (ValueError, KeyError, TypeError):
                pass
    return cfg, round_to_fp16(mods), training


def load_lowres_checkpoint(ckpt: str | Path, cfg: TinyConfig) -> tuple[HalfResDecoder, dict] | None:
    """The half-resolution decoder trained by tools/train_tiny.py's lowres stage, if it ran."""
    p = Path(ckpt) / "lowres.pt"
    if not p.exists():
        return None
    s = torch.load(p, map_location="cpu", weights_only=True)
    m = HalfResDecoder(cfg)
    m.load_state_dict({k: v.float() for k, v in s["decoder_lowres"].items()})
    return m, {"steps": int(s.get("step", 0)), "trained_with": "tools/train_tiny.py --stages lowres"}


# --- safetensors -----------------------------------------------------------------------------


def save_safetensors(modules, path: Path, cfg: TinyConfig | None = None) -> None:
    from safetensors.torch import save_file

    sd = {}
    for prefix, m in _as_dict(modules).items():
        for k, v in m.state_dict().items():
            sd[f"{prefix}.{k}"] = (v.half() if v.is_floating_point() else v).contiguous().cpu()
    meta = {"format": "pt", "engine": "tiny"}
    if cfg is not None:
        meta["config"] = json.dumps(cfg.to_dict(), sort_keys=True)
    save_file(sd, str(path), metadata=meta)


# --- ONNX --------------------------------------------------------------------------------------


def serving_modules(modules, cfg: TinyConfig) -> dict[str, torch.nn.Module]:
    """The three graphs the backends serve, as torch modules (float32, eval)."""
    mods = _as_dict(modules)
    return {
        "encoder": FrameEncoder(cfg, mods["encoder"]).eval(),
        "decoder": FrameDecoder(cfg, mods["decoder"]).eval(),
        "denoiser": mods["denoiser"].float().eval(),
    }


def fp16_initializers(model, min_elements: int = 16) -> dict:
    """Store float32 initializers that are exactly representable in fp16 as fp16 + Cast.

    Lossless by construction: an initializer is converted only if every value survives the
    round trip. Returns a small report (counts and bytes).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    casts, kept = [], []
    conv_bytes = fp32_left = 0
    used = {n.name for n in g.node} | {o for n in g.node for o in n.output}
    for init in g.initializer:
        if init.data_type != TensorProto.FLOAT:
            kept.append(init)
            continue
        arr = numpy_helper.to_array(init)
        h = arr.astype(np.float16)
        if arr.size < min_elements or not np.array_equal(h.astype(np.float32), arr, equal_nan=True):
            kept.append(init)
            fp32_left += arr.nbytes
            continue
        new_name = init.name + "__fp16"
        while new_name in used:
            new_name += "_"
        used.add(new_name)
        kept.append(numpy_helper.from_array(h, new_name))
        casts.append(helper.make_node("Cast", [new_name], [init.name], to=TensorProto.FLOAT, name=init.name + "__cast"))
        conv_bytes += arr.nbytes
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    # ORT's shape inference wants value_info to be consistent; drop stale entries for renamed ones
    onnx.checker.check_model(model)
    return {"fp16_initializers": len(casts), "fp16_source_bytes": conv_bytes, "fp32_bytes_left": fp32_left}


# the decoders take any crop of the latent grid (engines/tiny/crop.py): height and width are dynamic too
SPATIAL_AXES = {"latents": {2: "cells_h", 3: "cells_w"}, "frames": {1: "height", 2: "width"}}


def _export_one(module, args: tuple, path: Path, inputs, outputs, opset: int, spatial: bool = False) -> None:
    dyn = {n: {0: "batch", **(SPATIAL_AXES.get(n, {}) if spatial else {})} for n in list(inputs) + list(outputs)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        kw = dict(
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=dyn,
            opset_version=opset,
            do_constant_folding=True,
        )
        try:
            torch.onnx.export(module, args, str(path), dynamo=False, **kw)
        except TypeError:  # torch without the dynamo switch
            torch.onnx.export(module, args, str(path), **kw)


def verify_onnx(path: Path, module: torch.nn.Module, feeds: dict[str, np.ndarray], threads: int = 0) -> dict:
    """Run the graph with onnxruntime and the module with torch on the same inputs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)[0]
    with torch.no_grad():
        ref = module(*[torch.from_numpy(v) for v in feeds.values()]).numpy()
    if got.shape != ref.shape or got.dtype != ref.dtype:
        raise RuntimeError(f"{path.name}: onnxruntime gave {got.shape} {got.dtype}, torch {ref.shape} {ref.dtype}")
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    rep = {
        "batch": int(next(iter(feeds.values())).shape[0]),
        "max_abs_err": float(diff.max()),
        "mean_abs_err": float(diff.mean()),
    }
    if got.dtype == np.uint8:
        rep["mismatch_fraction"] = float((diff > 0).mean())
        ok = diff.max() <= 1
    else:
        scale = float(np.abs(ref).max()) or 1.0
        rep["max_rel_err"] = float(diff.max() / scale)
        ok = diff.max() <= 1e-3 * max(1.0, scale)
    rep["ok"] = bool(ok)
    return rep


def export_onnx(
    modules,
    cfg: TinyConfig,
    out_dir: str | Path,
    opset: int = 17,
    fp16_weights: bool = True,
    verify: bool = True,
    verify_batch: int = 3,
    trace_batch: int = 2,
    link: bool = True,
) -> dict:
    """Export encoder.onnx, decoder.onnx and denoiser.onnx into out_dir; returns a report.

    modules: (encoder, decoder, denoiser) or a dict of them (the raw Encoder/Decoder/Denoiser; the
    uint8 conversion and the latent normalization are wrapped around them here). Inputs and
    outputs have a dynamic batch axis. With link, the graphs read their fp16 weights from out_dir's
    tiny.safetensors (written first). With verify, each graph is run by onnxruntime at
    `verify_batch` (unlike the traced `trace_batch`) and compared with torch; a mismatch raises.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    serve = serving_modules(modules, cfg)
    trace = example_inputs(cfg, trace_batch, seed=1)
    check = example_inputs(cfg, verify_batch, seed=2) if verify else None
    reports = {}
    for name, module in serve.items():
        data = out / GRAPH_DATA[name] if link else None
        reports[name] = export_graph(name, module, out / ONNX_FILES[name], trace, check, opset, fp16_weights, data)
    return reports


def export_graph(
    name: str,
    module: torch.nn.Module,
    path: Path,
    trace: dict,
    check: dict | None,
    opset: int = 17,
    fp16_weights: bool = True,
    data: Path | None = None,
) -> dict:
    """One served graph to ONNX: traced on `trace[name]`, weights stored as fp16 + Cast (read from the
    safetensors file `data` beside it, if given), and (with `check`) run by onnxruntime on `check[name]`
    against torch; a mismatch raises. Returns a report."""
    import onnx

    inputs, outputs = GRAPH_IO[name]
    t0 = time.perf_counter()
    args = tuple(torch.from_numpy(trace[name][k]) for k in inputs)
    decoder = name.startswith("decoder")
    _export_one(module, args, path, inputs, outputs, opset, spatial=decoder)
    rep: dict = {"export_s": round(time.perf_counter() - t0, 2)}
    if fp16_weights:
        model = onnx.load(str(path))
        rep.update(fp16_initializers(model))
        if data is not None:
            rep.update(link_initializers(model, data))
        path.write_bytes(model.SerializeToString())  # not onnx.save: it writes any external tensor's raw data
    rep["bytes"] = path.stat().st_size
    if check is not None:
        rep["verify"] = verify_onnx(path, module, check[name])
        if decoder:  # and on a crop of the grid, as the server decodes it
            z = check[name]["latents"]
            rep["verify_crop"] = verify_onnx(path, module, {"latents": np.ascontiguousarray(z[:, :, 4:28, 8:32])})
        bad = [v for k, v in rep.items() if k.startswith("verify") and not v["ok"]]
        if bad:
            raise RuntimeError(f"{path.name} does not match torch: {bad}")
    return rep


# --- the weights folder ----------------------------------------------------------------------


def write_weights_folder(
    modules,
    cfg: TinyConfig,
    out: str | Path,
    data_version: str,
    training: dict,
    opset: int = 17,
    verify: bool = True,
    log=print,
) -> tuple[Manifest, dict]:
    """Write tiny.safetensors, the three ONNX graphs and manifest.json into `out`.

    Files are written to a temporary folder beside `out` and moved in at the end, so a failed
    export never leaves a half-written weights folder behind.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mods = round_to_fp16(modules)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    try:
        save_safetensors(mods, tmp / TORCH_FILE, cfg)
        report = export_onnx(mods, cfg, tmp, opset=opset, verify=verify)
        for name, rep in report.items():
            v = rep.get("verify", {})
            log(
                f"  {ONNX_FILES[name]:14s} {rep['bytes'] / 1e6:6.2f} MB  "
                f"{rep.get('fp16_initializers', 0)} fp16 initializers "
                f"({rep.get('external_initializers', 0)} read from {GRAPH_DATA[name]})  "
                + (
                    f"onnxruntime vs torch at batch {v['batch']}: max abs err {v['max_abs_err']:.2e}"
                    + (f" ({v['mismatch_fraction'] * 100:.3f}% of bytes off by 1)" if "mismatch_fraction" in v else "")
                    if v
                    else "not verified"
                )
            )
        for f in [TORCH_FILE, *ONNX_FILES.values()]:
            os.chmod(tmp / f, 0o644)
            os.replace(tmp / f, out / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    params = {k: int(sum(p.numel() for p in m.parameters())) for k, m in mods.items()}
    training = {
        **training,
        "params": params,
        "opset": opset,
        "exported_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "onnx_check": {k: v.get("verify", {}) for k, v in report.items()},
    }
    manifest = write_manifest(out, cfg, data_version, training)
    return manifest, report


def random_weights(
    out: str | Path,
    small: bool = True,
    seed: int = 0,
    verify: bool = True,
    cfg: TinyConfig | None = None,
    log=lambda *a: None,
    lowres: bool = False,
) -> Manifest:
    """A valid weights folder from random modules (tests, benchmarks); with lowres, a half-res
    decoder too (the full decoder's weights, as tools/train_lowres.py starts from)."""
    cfg = cfg or (small_config() if small else TinyConfig())
    cfg = random_config(cfg, seed)
    mods = random_modules(cfg, seed)
    manifest, _ = write_weights_folder(
        mods,
        cfg,
        out,
        data_version="random-init",
        training={"random_init": True, "seed": seed, "small": small, "ae_steps": 0, "denoiser_steps": 0},
        verify=verify,
        log=log,
    )
    if lowres:
        half = HalfResDecoder(cfg)
        half.decoder.load_state_dict(mods["decoder"].state_dict())
        manifest = write_lowres(half, manifest, {"random_init": True}, verify=verify)
    return manifest


def write_lowres(
    module: HalfResDecoder, manifest: Manifest, report: dict, opset: int = 17, verify: bool = True
) -> Manifest:
    """Add the half-resolution decoder to a weights folder: lowres.safetensors (fp16), its ONNX graph
    (checked against torch with onnxruntime), and the manifest's file hashes and `training.lowres`.

    tiny.safetensors is not touched, so the weights hash (the latents cache's key) stays the same.
    """
    from safetensors.torch import save_file

    out, cfg = Path(manifest.path), manifest.config
    module = round_module_to_fp16(module)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    try:
        sd = {f"decoder_lowres.{k}": v.half().contiguous() for k, v in module.state_dict().items()}
        save_file(sd, str(tmp / LOWRES_FILE), metadata={"format": "pt", "engine": "tiny", "part": "decoder_lowres"})
        rep = export_graph(
            "decoder_lowres",
            FrameDecoder(cfg, module).eval(),
            tmp / LOWRES_ONNX,
            example_inputs(cfg, 2, seed=1),
            example_inputs(cfg, 3, seed=2) if verify else None,
            opset,
            data=tmp / GRAPH_DATA["decoder_lowres"],
        )
        check = rep.get("verify", {})
        for f in (LOWRES_FILE, LOWRES_ONNX):
            os.chmod(tmp / f, 0o644)
            os.replace(tmp / f, out / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    training = {**manifest.training, "lowres": {**report, "onnx_check": check}}
    return write_manifest(out, manifest.config, manifest.data_version, training)


def reexport(weights_dir: str | Path, out: str | Path, opset: int = 17, verify: bool = True, log=print) -> Manifest:
    """Write a weights folder's graphs and manifest again from its torch weights (after an exporter change).

    The networks are unchanged; the manifest gets the current config fields, so a folder from an
    older exporter comes out with what the serving code expects today.
    """
    from avatarcast.engines.tiny.weights import load_lowres_module, load_manifest, load_torch_modules

    old = load_manifest(weights_dir)
    enc, dec, den = load_torch_modules(old)
    keep = {
        k: v for k, v in old.training.items() if k not in ("onnx_check", "exported_at", "opset", "params", "lowres")
    }
    lowres = load_lowres_module(old) if old.has_lowres else None
    manifest, _ = write_weights_folder(
        {"encoder": enc, "decoder": dec, "denoiser": den},
        old.config,
        out,
        old.data_version,
        {**keep, "reexported_from": str(weights_dir)},
        opset=opset,
        verify=verify,
        log=log,
    )
    if lowres is not None:
        rep = {k: v for k, v in old.training.get("lowres", {}).items() if k != "onnx_check"}
        manifest = write_lowres(lowres, manifest, rep, opset=opset, verify=verify)
    return manifest


def link_folder(weights_dir: str | Path, log=print) -> Manifest:
    """Rewrite a folder's graphs to read their fp16 weights from its safetensors files, in place.

    For a folder from an older exporter (weights inline). The weights files are not touched, so the
    weights hash stays the same; each linked graph must read back (external data inlined) to the old
    file byte for byte before it replaces it, so the graphs compute exactly what they did.
    """
    import onnx

    manifest = load_manifest(weights_dir)
    out = Path(manifest.path)
    staged: dict[str, tuple[Path, dict]] = {}
    try:
        for graph, name in manifest.onnx_files.items():
            path = manifest.graph_file(graph, verify=True)
            model = onnx.load(str(path), load_external_data=False)
            if external_locations(model):
                log(f"  {name}: already reads external data from {', '.join(sorted(external_locations(model)))}")
                continue
            rep = link_initializers(model, out / GRAPH_DATA[graph])
            tmp = out / f".link-{name}"  # beside the data it reads: external data resolves from the graph's folder
            staged[name] = (tmp, {**rep, "graph": graph, "old_bytes": path.stat().st_size})
            tmp.write_bytes(model.SerializeToString())
            if hashlib.sha256(inline_graph(tmp)).hexdigest() != manifest.files[name]:
                raise RuntimeError(f"{name}: the linked graph does not read back to the old file; nothing replaced")
        for name, (tmp, rep) in staged.items():
            os.chmod(tmp, 0o644)
            os.replace(tmp, out / name)
            log(
                f"  {name:20s} {rep['old_bytes'] / 1e6:6.2f} MB -> {(out / name).stat().st_size / 1e6:6.2f} MB: "
                f"{rep['external_initializers']} initializers read from {GRAPH_DATA[rep['graph']]}, "
                f"{rep['inline_bytes']} bytes inline"
            )
    finally:
        for tmp, _ in staged.values():
            tmp.unlink(missing_ok=True)
    if not staged:
        return manifest
    note = "weights moved into external data (the safetensors files); each graph reads back to its old bytes"
    training = {**manifest.training, "linked": {"graphs": sorted(staged), "note": note}}
    return write_manifest(out, manifest.config, manifest.data_version, training)


def copy_docs(ckpt: Path, docs: Path) -> list[Path]:
    """Copy the checkpoint's PNG plots (loss curves, autoencoder reconstructions) into docs."""
    docs.mkdir(parents=True, exist_ok=True)
    done = []
    for p in sorted(ckpt.glob("*.png")):
        shutil.copy2(p, docs / p.name)
        done.append(docs / p.name)
    return done


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tools.export_tiny", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ckpt", help="training checkpoint folder (tools/train_tiny.py --ckpt)")
    ap.add_argument("--out", default=None, help=f"weights folder to write (default {DEFAULT_DIR} for --ckpt)")
    ap.add_argument("--use-ema", action="store_true", help="export den_ema.pt (the EMA weights) instead of den.pt")
    ap.add_argument("--data-version", default="unknown", help="version of the training data, kept in the manifest")
    ap.add_argument(
        "--docs",
        nargs="?",
        const="docs/training",
        default=None,
        help="copy the checkpoint's PNG plots (loss curves, ae_recon) into this folder (default docs/training)",
    )
    ap.add_argument("--random-init", action="store_true", help="export fresh random modules (tests, benchmarks)")
    ap.add_argument(
        "--from-weights",
        metavar="DIR",
        help="export the graphs and manifest again from a weights folder's torch weights (in place without --out)",
    )
    ap.add_argument(
        "--link",
        metavar="DIR",
        help="rewrite an older folder's graphs to read their weights from its safetensors files (in place)",
    )
    ap.add_argument("--small", action="store_true", help="with --random-init: narrow layers, same I/O shapes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-torch check")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    if sum(map(bool, (args.random_init, args.ckpt, args.from_weights, args.link))) != 1:
        ap.error("give exactly one of --ckpt DIR, --from-weights DIR, --link DIR or --random-init")
    if args.link:
        before = folder_size(Path(args.link))
        manifest = link_folder(args.link)
        print(
            f"linked {args.link}: {before / 1e6:.1f} MB -> {folder_size(Path(args.link)) / 1e6:.1f} MB, "
            f"weights hash {manifest.weights_hash}"
        )
        return 0
    if args.from_weights:
        manifest = reexport(
            args.from_weights, args.out or args.from_weights, opset=args.opset, verify=not args.no_verify
        )
        print(f"wrote {args.out or args.from_weights}: weights hash {manifest.weights_hash}")
        return 0
    if args.random_init and not args.out:
        ap.error("--random-init needs an explicit --out (it would overwrite the shipped weights)")
    out = Path(args.out or DEFAULT_DIR)
    t0 = time.perf_counter()
    print(f"exporting to {out}")
    if args.random_init:
        manifest = random_weights(out, small=args.small, seed=args.seed, verify=not args.no_verify, log=print)
    else:
        try:
            cfg, mods, training = load_checkpoint(args.ckpt, use_ema=args.use_ema)
        except FileNotFoundError as e:
            print(f"export_tiny: error: {e}", file=sys.stderr)
            return 2
        manifest, _ = write_weights_folder(
            mods, cfg, out, args.data_version, training, opset=args.opset, verify=not args.no_verify
        )
        lowres = load_lowres_checkpoint(args.ckpt, cfg)
        if lowres is not None:
            module, rep = lowres
            manifest = write_lowres(module, manifest, rep, opset=args.opset, verify=not args.no_verify)
            print(f"  {LOWRES_ONNX} from the checkpoint's lowres.pt ({rep['steps']} steps)")
        if args.docs:
            for p in copy_docs(Path(args.ckpt), Path(args.docs)):
                print(f"  copied {p}")
    size = folder_size(out)
    print(
        f"wrote {out}: {size / 1e6:.1f} MB, weights hash {manifest.weights_hash}, "
        f"training {json.dumps({k: v for k, v in manifest.training.items() if k.endswith('steps')})}, "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
