"""Fidelity of the `tiny` engine's pictures against the renderer, for any weights folder.

    python -m tools.eval.fidelity --weights engines/tiny/weights --out docs/eval/fidelity_baseline
    python -m tools.eval.fidelity --weights DIR --out /tmp/fid --quick       # CI size, < 1 min
    avatarcast eval --fidelity --weights DIR --out DIR                       # the same

Everything is scored on held-out data (tools/eval/holdout.py): the built-in avatars at motion
seeds no training uses, and parametric avatars random_avatar(900_000 + k) no training uses.

* Reconstruction: renderer frames -> the weights' encoder -> decoder (the engine's backend,
  onnxruntime by default). PSNR and SSIM over the avatar's pixels (renderer alpha > 0, the ground
  shadow included, dilated 3 px), PSNR over the head (the renderer's head box, headwear included,
  within that mask), alpha IoU (alpha > 0.5). Pixels compared: premultiplied RGB + alpha in [0, 1]
  (tools/eval/fidelity_metrics.py says why). Beside them, the same PSNRs against the character's
  shapes (the renderer at SHAPES_SS supersampling, not the shipped render.SS), and the shipped renderer's own
  PSNR against those shapes: the floor its raster puts under any picture scored against it.
* Generation, at the serving steps: clips of every (avatar, emotion) against renderer clips of the
  same avatar and emotion (held-out motion seeds):
  - sharpness ratio: mean gradient magnitude inside each frame's own alpha > 0.5, model / renderer,
    per (avatar, emotion); the mean over them;
  - Frechet distance of the eval classifier's clip features (tools/eval/classifier.py
    ``ClipClassifier.features``, 384-d), model vs renderer, next to its floor (renderer clips at other
    seeds vs the same renderer clips);
  - a two-sample detector (tools/eval/detector.py) trained here: model frames vs renderer frames,
    with two sanity checks on the same data: renderer vs renderer (~50%) and a Gaussian blur
    (sigma 1.5) of the renderer vs renderer (~100%).
  A blurred renderer (sigma 1.5) is scored on every generation metric as a reference point.

Writes report.json and report.md to --out and prints the targets' table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatarcast.engines.avatar_world import (
    BUILTIN_AVATARS,
    EMOTIONS,
    pose_at,
    render_clip,
    render_frame,
    sample_variation,
)
from avatarcast.engines.avatar_world.render import SS, landmarks
from tools.eval import fidelity_metrics as fm
from tools.eval import holdout
from tools.eval.classifier import ClipBatcher, load_classifier
from tools.eval.detector import CropSet, DetectorConfig, sample_crops, two_sample_test

BLUR_SIGMA = 1.5
PARTS = ("reconstruction", "generation", "detector")
BUILTIN_NAMES = frozenset(a.name for a in BUILTIN_AVATARS)


@dataclass(frozen=True)
class EvalSize:
    """How much the eval scores: avatars, frames, clips, detector crops."""

    name: str
    n_builtin: int
    n_holdout: int
    recon_per_avatar: int  # reconstruction frames per avatar (cycling through the emotions)
    emotions: tuple[str, ...]
    seeds: int  # generated clips per (avatar, emotion)
    frames: int  # frames per generated clip
    crops_per_frame: int
    detector_epochs: int


SIZES = {
    "full": EvalSize("full", len(BUILTIN_AVATARS), 4, len(EMOTIONS), EMOTIONS, 2, 16, 2, 2),
    "quick": EvalSize("quick", 2, 1, 2, ("happy", "sad"), 1, 16, 8, 6),
}

# The renderer's supersampling for "the character's shapes": PIL rounds coordinates down to the canvas grid and
# samples each canvas pixel at one point, so a frame drawn at k x puts every edge up to 1/(2k) of a pixel off, a noise
# no other picture of the same shapes can share. Measured on 66 dev poses (docs/training/motion.md): 2x frames (the
# shipped ones until 2026-12-07) are 27.8 dB from 16x ones, 4x (shipped since) 34.8 dB, 8x 42.2 dB: 8 is the shapes
# to within what a viewer could see.
SHAPES_SS = 8

TARGETS = {  # issue 16
    "avatar_psnr_db": (">=", 30.0),
    "head_psnr_db": (">=", 28.0),
    "avatar_psnr_shapes_db": (">=", 30.0),
    "head_psnr_shapes_db": (">=", 28.0),
    "alpha_iou": (">=", 0.98),
    "sharpness_ratio": ("in", (0.9, 1.1)),
    "detector_accuracy": ("<=", 0.75),
    "fd_over_floor": ("<=", 2.0),
}


def group_of(name: str) -> str:
    return "builtin" if name in BUILTIN_NAMES else "heldout"


def _summary(values: list[float]) -> dict:
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        return {"mean": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


# --------------------------------------------------------------------------------------
# reconstruction
# --------------------------------------------------------------------------------------
def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    ys, xs = np.nonzero(mask.any(1)), np.nonzero(mask.any(0))
    H, W = mask.shape
    return (
        slice(max(0, ys[0][0] - pad), min(H, ys[0][-1] + pad + 1)),
        slice(max(0, xs[0][0] - pad), min(W, xs[0][-1] + pad + 1)),
    )


def frame_scores(ref: np.ndarray, rec: np.ndarray, head_box) -> dict:
    """Reconstruction scores of one frame: avatar PSNR / SSIM, head PSNR, alpha IoU."""
    mask = fm.avatar_mask(ref)
    head = mask & fm.box_mask(mask.shape, head_box)
    ys, xs = _bbox(mask, 6)  # the SSIM window (radius 5) stays inside the crop
    a, b, m, h = fm.premultiplied(ref[ys, xs]), fm.premultiplied(rec[ys, xs]), mask[ys, xs], head[ys, xs]
    return {
        "avatar_psnr_db": fm.psnr(a, b, m),
        "avatar_ssim": fm.ssim(a, b, m),
        "head_psnr_db": fm.psnr(a, b, h),
        "alpha_iou": fm.alpha_iou(ref, rec),
        # not a target: the same pixels as a viewer sees them over white (RGB only; stricter)
        "avatar_psnr_over_white_db": fm.psnr(fm.over_white(a), fm.over_white(b), m),
    }


def shapes_scores(shapes: np.ndarray, ref: np.ndarray, rec: np.ndarray, head_box) -> dict:
    """PSNRs against the character's shapes (`shapes`, render_frame at SHAPES_SS) over their own mask: the
    reconstruction `rec`'s (avatar, head) and the shipped renderer frame `ref`'s (avatar: the floor)."""
    mask = fm.avatar_mask(shapes)
    head = mask & fm.box_mask(mask.shape, head_box)
    a, b, r = fm.premultiplied(shapes), fm.premultiplied(rec), fm.premultiplied(ref)
    return {
        "avatar_psnr_shapes_db": fm.psnr(a, b, mask),
        "head_psnr_shapes_db": fm.psnr(a, b, head),
        "renderer_psnr_shapes_db": fm.psnr(a, r, mask),
    }


def encode_decode(engine) -> Callable[[list, list, np.ndarray], np.ndarray]:
    """How an engine reconstructs renderer frames `ref` = render_frame(avatars[i], poses[i]): architecture 2
    through its encoder and decoder; architecture 3 (MotionEngine) draws the frames' true motion, which is
    what its latent frame stands for."""
    from avatarcast.engines.tiny.motion_engine import MotionEngine

    if isinstance(engine, MotionEngine):
        return lambda avatars, poses, ref: np.concatenate(
            [engine.draw(a, engine.motion(a, q)[None]) for a, q in zip(avatars, poses)]
        )
    return lambda avatars, poses, ref: engine.decode(engine.backend.encode(ref))


def reconstruction(engine, specs: list[holdout.FrameSpec], batch: int = 4) -> dict:
    """Every held-out frame through the engine's encoder and decoder; per-frame scores and summaries."""
    rows = []
    through = encode_decode(engine)
    for i in range(0, len(specs), batch):
        part = specs[i : i + batch]
        poses = [pose_at(s.emotion, s.time, sample_variation(s.seed), s.intensity) for s in part]
        ref = np.stack([render_frame(s.avatar, q) for s, q in zip(part, poses)])
        rec = through([s.avatar for s in part], poses, ref)
        for s, q, r, g in zip(part, poses, ref, rec):
            head = landmarks(s.avatar, q).head
            shapes = render_frame(s.avatar, q, supersample=SHAPES_SS)
            rows.append(
                {
                    "avatar": s.avatar.name,
                    "group": group_of(s.avatar.name),
                    "emotion": s.emotion,
                    "seed": s.seed,
                    "time": round(s.time, 4),
                    "intensity": round(s.intensity, 4),
                    **frame_scores(r, g, head),
                    **shapes_scores(shapes, r, g, head),
                }
            )
    keys = (
        "avatar_psnr_db",
        "avatar_ssim",
        "head_psnr_db",
        "alpha_iou",
        "avatar_psnr_over_white_db",
        "avatar_psnr_shapes_db",
        "head_psnr_shapes_db",
        "renderer_psnr_shapes_db",
    )

    def summarize(sel: list[dict]) -> dict:
        return {k: _summary([r[k] for r in sel]) for k in keys}

    return {
        "n_frames": len(rows),
        "overall": summarize(rows),
        "by_group": {
            g: summarize([r for r in rows if r["group"] == g])
            for g in ("builtin", "heldout")
            if any(r["group"] == g for r in rows)
        },
        "per_avatar": {
            a: summarize([r for r in rows if r["avatar"] == a]) for a in dict.fromkeys(r["avatar"] for r in rows)
        },
        "frames": rows,
    }


# --------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------
@dataclass
class _Side:
    """What one set of clips (model, renderer, ...) contributes to the generation metrics."""

    clips: ClipBatcher  # the classifier's features of its clips
    grad: dict = field(default_factory=dict)  # (avatar, emotion) -> [gradient sum, pixel count]
    crops: CropSet = field(default_factory=CropSet.empty)

    @property
    def feats(self) -> list:
        return self.clips.feats

    def add(self, clip: np.ndarray, key: tuple, rng: np.random.Generator, crops_per_frame: int, crop: int) -> None:
        g = self.grad.setdefault(key[:2], [0.0, 0])
        for f in clip:
            s, n = fm.gradient_sum(f)
            g[0] += s
            g[1] += n
            self.crops.add(sample_crops(f, crops_per_frame, rng, crop), key)
        self.clips.add(clip)

    def sharpness(self, group: tuple) -> float:
        s, n = self.grad[group]
        return s / n if n else float("nan")


def _sharpness_ratios(side: _Side, ref: _Side) -> dict:
    per = {f"{a}/{e}": side.sharpness((a, e)) / ref.sharpness((a, e)) for a, e in ref.grad}
    avatars = list(dict.fromkeys(a for a, _ in ref.grad))
    emotions = list(dict.fromkeys(e for _, e in ref.grad))
    return {
        "mean": float(np.mean(list(per.values()))),
        "min": float(min(per.values())),
        "max": float(max(per.values())),
        "by_group": {
            g: float(np.mean([v for k, v in per.items() if group_of(k.split("/")[0]) == g]))
            for g in ("builtin", "heldout")
            if any(group_of(a) == g for a in avatars)
        },
        "per_avatar": {a: float(np.mean([per[f"{a}/{e}"] for e in emotions])) for a in avatars},
        "per_emotion": {e: float(np.mean([per[f"{a}/{e}"] for a in avatars])) for e in emotions},
        "per_avatar_emotion": per,
    }


def _fd(x: list, y: list) -> dict:
    return {"fd": fm.frechet_distance(np.stack(x), np.stack(y)), "n": [len(x), len(y)]}


def generation(engine, avatars, size: EvalSize, classifier, rerun: int = 0, detector: bool = True, log=print) -> dict:
    """Model clips vs renderer clips of the same avatars and emotions: sharpness, FD, detector."""
    t0 = time.time()
    det_cfg = DetectorConfig(epochs=size.detector_epochs, seed=rerun)
    rng = np.random.default_rng(holdout.heldout_seed("gen-crops", rerun))
    sides = {k: _Side(ClipBatcher(classifier)) for k in ("model", "renderer", "renderer_other", "blurred")}
    t_gen = 0.0
    for av in avatars:
        for e in size.emotions:
            for s in range(size.seeds):
                key = (av.name, e, s)
                ta = time.time()
                g = engine.generate_clip(av, e, size.frames, seed=holdout.heldout_seed("gen-noise", *key, rerun))
                t_gen += time.time() - ta
                ref = render_clip(av, e, size.frames, seed=holdout.heldout_seed("gen-ref", *key, rerun))
                other = render_clip(av, e, size.frames, seed=holdout.heldout_seed("gen-floor", *key, rerun))
                if g.shape != ref.shape or g.dtype != np.uint8:
                    raise ValueError(f"engine clip {g.shape} {g.dtype} != renderer clip {ref.shape} uint8")
                for name, clip in (
                    ("model", g),
                    ("renderer", ref),
                    ("renderer_other", other),
                    ("blurred", fm.gaussian_blur_rgba(other, BLUR_SIGMA)),
                ):
                    sides[name].add(clip, key, rng, size.crops_per_frame, crop=det_cfg.crop)
        log(f"  generation: {av.name} done, {time.time() - t0:.0f} s")
    for side in sides.values():
        side.clips.flush()
    ref = sides["renderer"]
    t1 = time.time()
    sharp = {k: _sharpness_ratios(sides[k], ref) for k in ("model", "renderer_other", "blurred")}
    fd = {k: _fd(sides[k].feats, ref.feats) for k in ("model", "renderer_other", "blurred")}
    floor = fd["renderer_other"]["fd"]
    t2 = time.time()
    det = {}
    for k in ("model", "renderer_other", "blurred") if detector else ():
        det[k] = two_sample_test(sides[k].crops, ref.crops, det_cfg, group_of=lambda key: group_of(key[0]))
        log(f"  detector {k} vs renderer: {100 * det[k]['accuracy']:.1f}% held-out ({det[k]['seconds']:.0f} s)")
    n_clips = len(ref.feats)
    return {
        "n_clips": n_clips,
        "frames_per_clip": size.frames,
        "n_frames": n_clips * size.frames,
        "sharpness_ratio": sharp,
        "frechet": {
            "model": fd["model"],
            "floor": fd["renderer_other"],
            "blurred": fd["blurred"],
            "model_over_floor": fd["model"]["fd"] / floor if floor > 0 else float("inf"),
            "blurred_over_floor": fd["blurred"]["fd"] / floor if floor > 0 else float("inf"),
            "features": "ClipClassifier.features (384-d) of each 16-frame clip at 90x160",
        },
        "detector": {
            "model_vs_renderer": det["model"],
            "renderer_vs_renderer": det["renderer_other"],
            f"blur{BLUR_SIGMA}_vs_renderer": det["blurred"],
        }
        if detector
        else None,
        "timing": {
            "clips_s": round(t1 - t0, 1),
            "generate_s": round(t_gen, 1),
            "frechet_s": round(t2 - t1, 1),
            "detector_s": round(time.time() - t2, 1),
        },
    }


# --------------------------------------------------------------------------------------
# targets and report
# --------------------------------------------------------------------------------------
def _met(name: str, value: float) -> bool:
    op, t = TARGETS[name]
    if not math.isfinite(value):
        return value == math.inf and op == ">="
    return value >= t if op == ">=" else value <= t if op == "<=" else t[0] <= value <= t[1]


def targets(rec: dict | None, gen: dict | None) -> list[dict]:
    """Each issue-16 target, per avatar group where it has one: value, target, met."""
    out = []

    def add(name, scope, value):
        op, t = TARGETS[name]
        out.append(
            {
                "metric": name,
                "scope": scope,
                "value": value,
                "target": f"{op} {t[0]}-{t[1]}" if op == "in" else f"{op} {t}",
                "met": _met(name, value),
            }
        )

    if rec:
        for g, s in rec["by_group"].items():
            for k in ("avatar_psnr_db", "head_psnr_db", "alpha_iou", "avatar_psnr_shapes_db", "head_psnr_shapes_db"):
                add(k, g, s[k]["mean"])
    if gen:
        for g, v in gen["sharpness_ratio"]["model"]["by_group"].items():
            add("sharpness_ratio", g, v)
        if gen["detector"]:
            add("detector_accuracy", "all", gen["detector"]["model_vs_renderer"]["accuracy"])
        add("fd_over_floor", "all", gen["frechet"]["model_over_floor"])
    return out


def _f(v: float, nd: int = 2) -> str:
    return "inf" if v == math.inf else f"{v:.{nd}f}"


def markdown_report(res: dict) -> str:
    meta, rec, gen = res["meta"], res.get("reconstruction"), res.get("generation")
    L = [
        f"## Fidelity: `{meta['weights']}` ({meta['size']} size)",
        "",
        ", ".join(f"{k}: `{meta[k]}`" for k in ("weights_hash", "backend", "steps", "machine", "date", "command")),
        "",
        f"Held-out avatars: {', '.join(res['avatars'])} (built-ins at held-out motion seeds; random-9000xx: "
        "parametric avatars no training uses, tools/eval/holdout.py).",
        "",
        "| target (issue 16) | scope | value | target | met |",
        "|---|---|---|---|---|",
    ]
    for t in res["targets"]:
        L.append(
            f"| {t['metric']} | {t['scope']} | {_f(t['value'], 3)} | {t['target']} | "
            f"{'yes' if t['met'] else '**no**'} |"
        )
    if rec:
        L += [
            "",
            f"### Reconstruction (encoder -> decoder), {rec['n_frames']} held-out renderer frames",
            "",
            "| avatar | avatar PSNR dB (min) | avatar SSIM | head PSNR dB (min) | alpha IoU (min) "
            "| avatar PSNR over white dB | against the shapes: avatar PSNR dB (min) | head PSNR dB "
            "| the shipped renderer's avatar PSNR dB (its floor) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        rows = list(rec["per_avatar"].items()) + [(f"**{g}**", s) for g, s in rec["by_group"].items()]
        for a, s in rows:
            shapes = (
                f"{_f(s['avatar_psnr_shapes_db']['mean'])} ({_f(s['avatar_psnr_shapes_db']['min'])}) | "
                f"{_f(s['head_psnr_shapes_db']['mean'])} | {_f(s['renderer_psnr_shapes_db']['mean'])}"
            )
            L.append(
                f"| {a} | {_f(s['avatar_psnr_db']['mean'])} ({_f(s['avatar_psnr_db']['min'])}) | "
                f"{_f(s['avatar_ssim']['mean'], 3)} | {_f(s['head_psnr_db']['mean'])} "
                f"({_f(s['head_psnr_db']['min'])}) | {_f(s['alpha_iou']['mean'], 3)} "
                f"({_f(s['alpha_iou']['min'], 3)}) | {_f(s['avatar_psnr_over_white_db']['mean'])} | {shapes} |"
            )
        L += [
            "",
            f"Against the shapes: the same frames scored against the renderer at {SHAPES_SS}x supersampling (the "
            f"shipped frames use {SS}x, whose edges land up to 1/{2 * SS} of a pixel off: the last column is how far "
            "they are from the shapes themselves).",
        ]
    if gen:
        sh, fr, det = gen["sharpness_ratio"], gen["frechet"], gen["detector"]
        L += [
            "",
            f"### Generation at {meta['steps']} steps: {gen['n_clips']} clips of {gen['frames_per_clip']}"
            f" frames ({gen['n_frames']} frames) per side",
            "",
            f"| metric | model | renderer, other seeds (floor) | renderer blurred sigma {BLUR_SIGMA} |",
            "|---|---|---|---|",
            f"| sharpness ratio (mean over avatar x emotion; min-max) | {_f(sh['model']['mean'])} "
            f"({_f(sh['model']['min'])}-{_f(sh['model']['max'])}) | {_f(sh['renderer_other']['mean'])} | "
            f"{_f(sh['blurred']['mean'])} |",
            f"| Frechet distance to the renderer's clips ({fr['model']['n'][0]} vs {fr['model']['n'][1]} clips) | "
            f"{_f(fr['model']['fd'])} | {_f(fr['floor']['fd'])} | {_f(fr['blurred']['fd'])} |",
            f"| FD / floor | {_f(fr['model_over_floor'])} | 1 | {_f(fr['blurred_over_floor'])} |",
        ]
        if det:
            m = det["model_vs_renderer"]
            L += [
                f"| detector held-out accuracy (50% = indistinguishable) | {100 * m['accuracy']:.1f}% | "
                f"{100 * det['renderer_vs_renderer']['accuracy']:.1f}% | "
                f"{100 * det[f'blur{BLUR_SIGMA}_vs_renderer']['accuracy']:.1f}% |",
                "",
                f"Detector: {m['n_train_crops']} training crops ({m['config']['crop']} px, 1:1) per run, "
                f"{m['n_heldout_crops']} held-out crops from {m['n_heldout_clips']} held-out clip keys of "
                f"{m['n_clips']}. Model vs renderer by avatar group: "
                + ", ".join(f"{g} {100 * v:.1f}%" for g, v in m["by_group"].items())
                + ".",
            ]
        L += ["", "| emotion | sharpness ratio |", "|---|---|"]
        L += [f"| {e} | {_f(v)} |" for e, v in sh["model"]["per_emotion"].items()]
        L += ["", "| avatar | sharpness ratio |", "|---|---|"]
        L += [f"| {a} | {_f(v)} |" for a, v in sh["model"]["per_avatar"].items()]
    L += [
        "",
        "Timing (s): " + ", ".join(f"{k} {v}" for k, v in res["timing"].items()),
        "",
        "Definitions: tools/eval/fidelity.py (docstring) and tools/eval/fidelity_metrics.py.",
    ]
    return "\n".join(L) + "\n"


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run(
    weights: str | None,
    size: EvalSize,
    backend: str = "onnxruntime",
    steps: int | None = None,
    threads: int = 2,
    rerun: int = 0,
    parts: tuple[str, ...] = PARTS,
    torch_threads: int = 1,
    log=print,
    motion: tuple[str, str] | None = None,
    engine_name: str = "tiny",
    motion_draw: str = "cutout",
) -> dict:
    """The fidelity eval of one weights folder (`engine_name` tiny, or motion: architecture 3's exported folder as
    the server runs it, the shipped one that draws as `motion_draw` says by default), or of architecture 3's
    (decoder, denoiser) checkpoints given as `motion` (the parts asked for); the report as a dict."""
    from avatarcast.realtime.settings import Settings

    t0, c0 = time.time(), time.process_time()
    timing: dict = {"loadavg_start": _loadavg()}  # other processes' load makes wall times provisional
    torch.set_num_threads(torch_threads)
    steps = steps if steps is not None else Settings().steps  # the serving default
    engine, backend, weights_path = scored_engine(weights, engine_name, motion, backend, steps, threads, motion_draw)
    avatars = holdout.eval_avatars(size.n_builtin, size.n_holdout)
    res: dict = {"avatars": [a.name for a in avatars], "size": asdict(size), "rerun": rerun, "parts": list(parts)}
    rec = gen = None
    if "reconstruction" in parts:
        ta = time.time()
        rec = reconstruction(engine, holdout.reconstruction_frames(avatars, size.recon_per_avatar, rerun))
        timing["reconstruction_s"] = round(time.time() - ta, 1)
        s = rec["overall"]
        log(
            f"  reconstruction: {rec['n_frames']} frames, avatar PSNR {s['avatar_psnr_db']['mean']:.2f} dB, "
            f"head {s['head_psnr_db']['mean']:.2f} dB, IoU {s['alpha_iou']['mean']:.4f}"
        )
        res["reconstruction"] = rec
    if "generation" in parts:
        ta = time.time()
        gen = generation(engine, avatars, size, load_classifier(), rerun, "detector" in parts, log)
        timing["generation_s"] = round(time.time() - ta, 1)
        res["generation"] = gen
    timing["total_s"] = round(time.time() - t0, 1)
    timing["total_cpu_s"] = round(time.process_time() - c0, 1)  # all threads of this process
    timing["loadavg_end"] = _loadavg()
    res["timing"] = timing
    res["targets"] = targets(rec, gen)
    res["meta"] = {
        "weights": weights_path,
        "weights_hash": engine.weights_hash,
        "backend": backend,
        "steps": steps,
        "size": size.name,
        "rerun": rerun,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
        + f", {threads} onnxruntime threads, {torch_threads} torch",
        "date": time.strftime("%Y-%m-%d"),
    }
    return res


def scored_engine(
    weights: str | None,
    engine_name: str = "tiny",
    motion: tuple[str, str] | None = None,
    backend: str = "onnxruntime",
    steps: int = 2,
    threads: int = 2,
    motion_draw: str = "cutout",
) -> tuple[Any, str, str]:
    """The engine an eval scores, with how its reports name its backend and weights: architecture 3's checkpoints on
    torch (`motion`: decoder, denoiser), its exported folder as the server runs it (`engine_name` motion; `weights`
    None: the shipped one that draws as `motion_draw` says), or a tiny weights folder on `backend`."""
    from avatarcast.engines.tiny.engine import TinyEngine
    from avatarcast.engines.tiny.motion_engine import MotionEngine

    if motion is not None:
        return MotionEngine.load(*motion, steps=steps), "torch (architecture 3)", " + ".join(motion)
    if engine_name == "motion":
        from avatarcast.engines.tiny.motion_weights import motion_folder

        folder = motion_folder(weights, motion_draw)
        engine = MotionEngine.from_folder(folder, steps=steps, threads=threads, draw=motion_draw)
        return engine, f"onnxruntime (architecture 3 as served: the {motion_draw} draw)", str(folder)
    engine = TinyEngine.load(weights, backend=backend, steps=steps, threads=threads)
    return engine, backend, str(engine.manifest.path)


def add_motion_argument(ap: argparse.ArgumentParser, what: str) -> None:
    """--motion DECODER DENOISER: architecture 3's checkpoints (tools.train_motion's motion_ema.pt and
    tools.train_motion_den's motion_den.pt) instead of a weights folder."""
    ap.add_argument("--motion", nargs=2, metavar=("DECODER", "DENOISER"), default=None, help=what)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="avatarcast eval --fidelity", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--weights", default=None, help="tiny engine weights folder (default: the shipped one)")
    ap.add_argument("--out", required=True, help="folder for report.json and report.md")
    add_motion_argument(ap, "score architecture 3 instead, on torch")
    ap.add_argument(
        "--engine",
        choices=("tiny", "motion"),
        default="tiny",  # not the server's CPU default (motion): the reports' commands were run against tiny
        help="tiny (default) | motion: architecture 3's exported folder, as `avatarcast serve` runs it on the CPU",
    )
    ap.add_argument(
        "--motion-draw",
        choices=("copy", "residual", "cutout"),
        default="cutout",
        help="--engine motion: which shipped draw (as `avatarcast serve --motion-draw`)",
    )
    ap.add_argument("--quick", action="store_true", help="the CI size: 3 avatars, 6 clips (< 1 min)")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the server's default)")
    ap.add_argument("--threads", type=int, default=2, help="the engine's onnxruntime threads")
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch threads (classifier, detector: small convolutions, and OpenMP barriers stall "
        "when other processes share the cores; 1 was 4x faster than 2 at load 7)",
    )
    ap.add_argument("--rerun", type=int, default=0, help="another draw of held-out seeds (for the spread)")
    ap.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="comma-separated subset of reconstruction,generation,detector (detector needs generation)",
    )
    args = ap.parse_args(argv)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    if not parts or set(parts) - set(PARTS) or ("detector" in parts and "generation" not in parts):
        ap.error(f"--parts: a subset of {','.join(PARTS)}; detector needs generation")
    size = SIZES["quick" if args.quick else "full"]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    res = run(
        args.weights,
        size,
        args.backend,
        args.steps,
        args.threads,
        args.rerun,
        parts,
        args.torch_threads,
        log,
        tuple(args.motion) if args.motion else None,
        args.engine,
        args.motion_draw,
    )
    res["meta"]["command"] = "python -m tools.eval.fidelity " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(res, indent=1, allow_nan=True))
    (out / "report.md").write_text(markdown_report(res))
    for t in res["targets"]:
        print(
            f"{t['metric']:>18} {t['scope']:>8} {_f(t['value'], 3):>8}  target {t['target']:<10} "
            f"{'met' if t['met'] else 'NOT met'}"
        )
    print(f"report: {out / 'report.md'} ({res['timing']['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
