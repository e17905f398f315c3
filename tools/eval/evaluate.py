"""Evaluate a video engine against the renderer with the clip classifier of tools.eval.

    python -m tools.eval.evaluate --engine tiny --backend onnxruntime --steps 2 --seeds 3 --out docs/eval
    python -m tools.eval.evaluate --engine renderer --seeds 3 --out /tmp/eval_renderer   # reference bound
    python -m tools.eval.evaluate --engine motion --weights DIR --seeds 3 --out DIR   # architecture 3, exported
    python -m tools.eval.evaluate --fidelity --weights DIR --out DIR   # picture fidelity: tools/eval/fidelity.py

For every built-in avatar x emotion x seed the engine generates a 2 s clip (16 frames at
8 fps, intensity 1.0) and the renderer draws a reference clip of the same avatar and emotion
(its own motion seeds, different for every (avatar, emotion), so that the renderer used as an
"engine" never copies its reference and per-seed tempo/amplitude variations average out);
``ref_seeds`` (>= seeds) reference clips per (avatar, emotion) back the smoothness ratio.
The classifier (trained on rendered clips only) then scores:

* top-1 emotion accuracy overall / per emotion / per avatar (target: >= 90 % for every emotion);
* identity consistency: cosine of identity embeddings, generated vs rendered clip of the same
  avatar, and vs the other avatars as a baseline;
* temporal smoothness: mean frame-to-frame change relative to the renderer's, and the p95;
* silhouette IoU vs the reference (extra info).

Writes ``report.json``, ``report.md`` and ``side_by_side.gif`` (renderer left, model right) to
``--out`` and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from avatarcast.realtime import progress
from avatarcast.vocabulary import FPS
from tools.eval import metrics
from tools.eval.classifier import EMOTIONS, classify, downsample_premultiplied, load_classifier, load_meta, to_tensor

REF_SEED_OFFSET = 7919
CLIP_FRAMES = 16
GIF_EMOTIONS = ("happy", "sad", "angry", "surprised", "love", "sleepy")


def _stable_seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


def reference_seed(avatar_name: str, emotion: str, k: int) -> int:
    """Motion seed of the k-th reference clip of (avatar, emotion)."""
    return _stable_seed("eval-reference", REF_SEED_OFFSET, avatar_name, emotion, int(k))


class RendererEngine:
    """The renderer behind the engine interface: a reference upper bound for the metrics.

    The motion seed is derived from (avatar, emotion, seed), as a model would pick its own motion.
    """

    name = "renderer"
    steps = 0

    def generate_clip(
        self, avatar, emotion, n_frames: int = CLIP_FRAMES, seed: int = 0, intensity: float = 1.0
    ) -> np.ndarray:
        from avatarcast.engines.avatar_world import get_avatar, render_clip

        av = get_avatar(avatar)
        e = emotion if isinstance(emotion, str) else EMOTIONS[int(emotion)]
        return render_clip(
            av, e, n_frames, seed=_stable_seed("renderer-engine", av.name, e, int(seed)), intensity=intensity
        )


class HalfResolution:
    """A TinyEngine whose clips are decoded at half resolution: how the ladder's lowest rungs look."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.steps = engine.steps
        self.weights_hash = engine.weights_hash

    def generate_clip(
        self, avatar, emotion, n_frames: int = CLIP_FRAMES, seed: int = 0, intensity: float = 1.0
    ) -> np.ndarray:
        return self.engine.generate_clip(avatar, emotion, n_frames, seed=seed, intensity=intensity, lowres=True)


def load_engine(
    name: str,
    backend: str = "onnxruntime",
    steps: int = 2,
    threads: int | None = None,
    weights: str | None = None,
    draw: str = "cutout",
):
    if name == "renderer":
        return RendererEngine()
    if name == "tiny":
        from avatarcast.engines.tiny.engine import TinyEngine

        kw = {"threads": threads} if threads else {}
        return TinyEngine.load(weights, backend=backend, steps=steps, **kw)
    if name == "motion":  # architecture 3 from an exported folder (tools.export_motion), as the server runs it
        from avatarcast.engines.tiny.motion_engine import MotionEngine

        return MotionEngine.from_folder(weights or None, steps=steps, threads=threads, draw=draw)
    raise ValueError(f"unknown engine {name!r}: tiny, motion or renderer")


# --------------------------------------------------------------------------------------
# side-by-side GIF
# --------------------------------------------------------------------------------------
_CROP = (60, 360, 170, 470)  # y0, y1, x0, x1 of the 640x360 frame: the avatar and its effects


def _composite(frames: np.ndarray, scale: float = 0.5) -> np.ndarray:
    """RGBA uint8 (T, 360, 640, 4) -> RGB on white, cropped around the avatar and downscaled."""
    from PIL import Image

    y0, y1, x0, x1 = _CROP
    f = frames[:, y0:y1, x0:x1].astype(np.float32)
    a = f[..., 3:4] / 255.0
    rgb = (f[..., :3] * a + 255.0 * (1.0 - a)).clip(0, 255).astype(np.uint8)
    w, h = int(round((x1 - x0) * scale)), int(round((y1 - y0) * scale))
    return np.stack([np.asarray(Image.fromarray(x).resize((w, h), Image.BILINEAR)) for x in rgb])


def make_side_by_side(
    pairs: list[tuple[str, np.ndarray, np.ndarray]],
    path: str | Path,
    fps: int = FPS,
    model_label: str = "model",
    pairs_per_row: int = 2,
) -> Path:
    """pairs of (label, renderer clip, model clip) -> an animated GIF; each pair = renderer | model."""
    from PIL import Image, ImageDraw

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = [(lab, _composite(r), _composite(g)) for lab, r, g in pairs]
    T = min(min(len(r), len(g)) for _, r, g in cells)
    ch, cw = cells[0][1].shape[1:3]
    label_h, gap = 14, 6
    n_rows = -(-len(cells) // pairs_per_row)
    W = pairs_per_row * 2 * cw + (pairs_per_row - 1) * gap
    H = label_h + n_rows * (ch + label_h)
    frames = []
    for t in range(T):
        canvas = Image.new("RGB", (W, H), (255, 255, 255))
        d = ImageDraw.Draw(canvas)
        for k in range(pairs_per_row):
            x = k * (2 * cw + gap)
            d.text((x + 4, 1), "renderer", fill=(90, 90, 90))
            d.text((x + cw + 4, 1), model_label, fill=(90, 90, 90))
        for i, (lab, r, g) in enumerate(cells):
            row, col = divmod(i, pairs_per_row)
            x = col * (2 * cw + gap)
            y = label_h + row * (ch + label_h)
            d.text((x + 4, y + 1), lab, fill=(0, 0, 0))
            canvas.paste(Image.fromarray(r[t]), (x, y + label_h))
            canvas.paste(Image.fromarray(g[t]), (x + cw, y + label_h))
            d.line([(x + cw, y + label_h), (x + cw, y + label_h + ch)], fill=(200, 200, 200))
        frames.append(canvas.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    frames[0].save(
        path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0, optimize=True, disposal=1
    )
    return path


# --------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------
def evaluate(
    engine_like,
    avatars: Sequence | None = None,
    emotions: Sequence[str] = EMOTIONS,
    seeds: int | Sequence[int] = 3,
    n_frames: int = CLIP_FRAMES,
    intensity: float = 1.0,
    classifier=None,
    gif_path: str | Path | None = None,
    gif_emotions: Sequence[str] = GIF_EMOTIONS,
    engine_label: str = "model",
    ref_seeds: int = 4,
    verbose: bool = False,
) -> dict:
    """Generate clips with ``engine_like.generate_clip`` and score them against the renderer.

    Returns a dict: accuracy (overall, per_emotion, per_avatar, min_per_emotion, confusion),
    reference_accuracy (the classifier on the renderer's own clips), identity, smoothness,
    silhouette, target (>= 90 % per emotion met?), timing, config.
    """
    from avatarcast.engines.avatar_world import BUILTIN_AVATARS, get_avatar, render_clip

    t0 = time.time()
    clf = classifier if classifier is not None else load_classifier()
    avatars = list(avatars) if avatars is not None else list(BUILTIN_AVATARS)
    avs = [get_avatar(a) for a in avatars]
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    emotions = [e if isinstance(e, str) else EMOTIONS[int(e)] for e in emotions]
    gif_want = {(i % len(avs), e) for i, e in enumerate(gif_emotions) if e in emotions}
    gif_pairs: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}

    gen_small, ref_small, labels, names, keys = [], [], [], [], []
    extra_ref, extra_groups = [], []  # additional reference clips for the smoothness ratio
    t_gen = t_ref = 0.0
    bar = progress.bar(total=len(avs) * len(emotions) * len(seed_list), desc="eval", unit="clip", quiet=not verbose)
    for ai, av in enumerate(avs):
        for e in emotions:
            for s in seed_list:
                bar.update()
                ta = time.time()
                g = np.asarray(engine_like.generate_clip(av, e, n_frames=n_frames, seed=s, intensity=intensity))
                tb = time.time()
                r = render_clip(av, e, n_frames, seed=reference_seed(av.name, e, s), intensity=intensity)
                t_gen += tb - ta
                t_ref += time.time() - tb
                if g.shape != r.shape or g.dtype != np.uint8:
                    raise ValueError(f"engine clip {g.shape} {g.dtype} != renderer clip {r.shape} uint8")
                if s == seed_list[0] and (ai, e) in gif_want:
                    gif_pairs[(ai, e)] = (r, g)
                gen_small.append(downsample_premultiplied(g))
                ref_small.append(downsample_premultiplied(r))
                labels.append(EMOTIONS.index(e))
                names.append(av.name)
                keys.append((e, s))
            ta = time.time()
            for k in range(max(0, ref_seeds - len(seed_list))):
                extra_ref.append(
                    downsample_premultiplied(
                        render_clip(av, e, n_frames, seed=reference_seed(av.name, e, 10_000 + k), intensity=intensity)
                    )
                )
                extra_groups.append((av.name, e))
            t_ref += time.time() - ta
            if verbose and bar.disable:  # a log, not a terminal: a line per (avatar, emotion)
                print(f"  {av.name} {e}: {len(gen_small)} clips, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    bar.close()

    ta = time.time()
    gen_out = classify(clf, to_tensor(np.stack(gen_small)))
    ref_out = classify(clf, to_tensor(np.stack(ref_small)))
    t_clf = time.time() - ta

    acc = metrics.emotion_accuracy(gen_out["pred"], labels, names)
    ref_acc = metrics.emotion_accuracy(ref_out["pred"], labels, names)
    ident = metrics.identity_consistency(
        gen_out["embedding"], names, ref_out["embedding"], names, ref_keys=keys, gen_keys=keys
    )
    groups = [(a, k[0]) for a, k in zip(names, keys)]
    smooth = metrics.smoothness(gen_small, ref_small + extra_ref, gen_groups=groups, ref_groups=groups + extra_groups)
    per_group = smooth.pop("per_group_ratio")
    smooth["per_emotion_ratio"] = {
        e: float(np.mean([v for (a, ee), v in per_group.items() if ee == e])) for e in emotions
    }
    smooth["per_avatar_ratio"] = {
        a.name: float(np.mean([v for (aa, e), v in per_group.items() if aa == a.name])) for a in avs
    }
    smooth["reference_clips_per_group"] = max(ref_seeds, len(seed_list))
    sil = metrics.silhouette_summary(gen_small, ref_small)
    conf_true = np.asarray(gen_out["probs"])[np.arange(len(labels)), labels]

    gif = None
    if gif_path is not None and gif_pairs:
        order = [(i % len(avs), e) for i, e in enumerate(gif_emotions) if (i % len(avs), e) in gif_pairs]
        gif = make_side_by_side(
            [(f"{avs[ai].name} / {e}", *gif_pairs[(ai, e)]) for ai, e in order], gif_path, model_label=engine_label
        )

    total = time.time() - t0
    n = len(labels)
    return {
        "accuracy": acc,
        "reference_accuracy": {k: ref_acc[k] for k in ("overall", "per_emotion", "min_per_emotion", "per_avatar")},
        "mean_true_class_prob": float(conf_true.mean()),
        "identity": ident,
        "smoothness": smooth,
        "silhouette": sil,
        "target": {"min_per_emotion_accuracy": 0.9, "met": bool(acc["min_per_emotion"] >= 0.9)},
        "timing": {
            "total_s": round(total, 2),
            "generate_s": round(t_gen, 2),
            "generate_per_clip_s": round(t_gen / max(n, 1), 3),
            "render_reference_s": round(t_ref, 2),
            "classify_s": round(t_clf, 2),
        },
        "config": {
            "avatars": [a.name for a in avs],
            "emotions": list(emotions),
            "seeds": seed_list,
            "n_frames": n_frames,
            "intensity": intensity,
            "n_clips": n,
            "reference_seeds": "reference_seed(avatar, emotion, k)",
        },
        "gif": str(gif) if gif else None,
    }


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def markdown_report(res: dict, title: str) -> str:
    acc, ref = res["accuracy"], res["reference_accuracy"]
    sm, idn, sil = res["smoothness"], res["identity"], res["silhouette"]
    cfg = res["config"]
    lines = [f"## {title}", ""]
    meta = res.get("meta", {})
    if meta:
        lines += [", ".join(f"{k}: `{v}`" for k, v in meta.items() if v is not None), ""]
    lines += [
        f"{cfg['n_clips']} clips of {cfg['n_frames']} frames (2 s at 8 fps): {len(cfg['avatars'])} built-in avatars"
        f" x {len(cfg['emotions'])} emotions x {len(cfg['seeds'])} seed(s), intensity {cfg['intensity']}."
        " Emotion judged by a classifier trained on renderer clips only.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| emotion accuracy (top-1, overall) | {_pct(acc['overall'])} |",
        f"| min per-emotion accuracy (target >= 90%) | {_pct(acc['min_per_emotion'])}"
        f"{' (' + acc['worst_emotion'] + ')' if acc['min_per_emotion'] < 1 else ''}"
        f" {'met' if res['target']['met'] else '**not met**'} |",
        f"| classifier on renderer clips (same config) | {_pct(ref['overall'])} |",
        f"| identity cosine, same avatar (vs other avatars) | {idn['same_avatar_cos']:.3f}"
        f" ({idn['other_avatar_cos']:.3f}); closest avatar right: {_pct(idn['match_rate'])} |",
        f"| smoothness: mean frame change / renderer's (1 = same) | {sm['ratio_mean']:.2f}"
        f" (median {sm['ratio_median']:.2f}, range {sm['ratio_min']:.2f}-{sm['ratio_max']:.2f}) |",
        f"| p95 frame change / renderer's p95 (flicker) | {sm['p95_ratio']:.2f} |",
        f"| silhouette IoU vs renderer (different motion sample) | {sil['iou_mean']:.3f} |",
        f"| time (generate per clip / total) | {res['timing']['generate_per_clip_s']:.2f} s /"
        f" {res['timing']['total_s']:.0f} s |",
        "",
        "| emotion | accuracy | renderer clips | smoothness ratio |",
        "|---|---|---|---|",
    ]
    for e, v in acc["per_emotion"].items():
        lines.append(
            f"| {e} | {_pct(v)} | {_pct(ref['per_emotion'].get(e, float('nan')))} |"
            f" {sm['per_emotion_ratio'].get(e, float('nan')):.2f} |"
        )
    lines += ["", "| avatar | accuracy | identity cosine | smoothness ratio |", "|---|---|---|---|"]
    for a, v in acc.get("per_avatar", {}).items():
        lines.append(
            f"| {a} | {_pct(v)} | {idn['per_avatar_same_cos'].get(a, float('nan')):.3f} |"
            f" {sm.get('per_avatar_ratio', {}).get(a, float('nan')):.2f} |"
        )
    lines += [
        "",
        "Confusion (rows: asked emotion, columns: classified):",
        "",
        "| | " + " | ".join(e[:5] for e in acc["emotions"]) + " |",
        "|---" * (len(acc["emotions"]) + 1) + "|",
    ]
    for e, row in zip(acc["emotions"], acc["confusion"]):
        if sum(row):
            lines.append(f"| {e} | " + " | ".join(str(v) if v else "." for v in row) + " |")
    if res.get("gif"):
        lines += ["", f"![renderer vs {res.get('meta', {}).get('engine', 'model')}]({Path(res['gif']).name})"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--fidelity" in argv:  # `avatarcast eval --fidelity ...`: picture fidelity (tools/eval/fidelity.py)
        from tools.eval import fidelity

        return fidelity.main([a for a in argv if a != "--fidelity"])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--fidelity",
        action="store_true",
        help="score picture fidelity instead (PSNR, sharpness, FD, detector): see --fidelity --help",
    )
    # tiny, not the server's default (motion on the CPU): the committed reports' commands and the training docs'
    # `--weights DIR` (architecture-2 folders) were written against it and must keep measuring what they measured
    ap.add_argument(
        "--engine",
        default="tiny",
        choices=("tiny", "motion", "renderer"),
        help="tiny (default) | motion (what `avatarcast serve` runs on the CPU) | renderer",
    )
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=CLIP_FRAMES)
    ap.add_argument("--ref-seeds", type=int, default=4, help="renderer clips per (avatar, emotion) for smoothness")
    ap.add_argument("--avatars", default="", help="comma-separated avatars (default: all built-ins)")
    ap.add_argument("--emotions", default="", help="comma-separated emotions (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", default=None, help="engine weights dir (default: shipped)")
    ap.add_argument(
        "--motion-draw",
        choices=("copy", "residual", "cutout"),
        default="cutout",
        help="--engine motion: which draw (as `avatarcast serve --motion-draw`; cutout, the CPU default)",
    )
    ap.add_argument("--classifier", default=None, help="classifier weights (default: shipped)")
    ap.add_argument("--out", default="docs/eval")
    ap.add_argument("--no-gif", action="store_true")
    progress.add_quiet_flag(ap)
    ap.add_argument(
        "--lowres",
        action="store_true",
        help="tiny: decode at half resolution (the degradation ladder's lower-resolution rung)",
    )
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    engine = load_engine(args.engine, args.backend, args.steps, args.threads, args.weights, args.motion_draw)
    if args.lowres:
        if not getattr(engine, "has_lowres", False):
            ap.error("--lowres needs the tiny engine with a half-resolution decoder (python -m tools.train_lowres)")
        engine = HalfResolution(engine)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    label = "renderer (ref)" if args.engine == "renderer" else f"{args.engine} {args.steps} steps"
    label += ", half-resolution decode" if args.lowres else ""
    res = evaluate(
        engine,
        avatars=[a.strip() for a in args.avatars.split(",") if a.strip()] or None,
        emotions=[e.strip() for e in args.emotions.split(",") if e.strip()] or EMOTIONS,
        seeds=args.seeds,
        n_frames=args.frames,
        ref_seeds=args.ref_seeds,
        classifier=load_classifier(args.classifier),
        gif_path=None if args.no_gif else out / "side_by_side.gif",
        engine_label=label,
        verbose=not args.quiet,
    )
    meta = {
        "engine": args.engine,
        "backend": args.backend if args.engine != "renderer" else None,
        "decoder": "half resolution" if args.lowres else "full",
        "steps": args.steps if args.engine != "renderer" else None,
        "weights_hash": getattr(engine, "weights_hash", None),
        "classifier_val_accuracy": round(load_meta().get("validation", {}).get("accuracy", float("nan")), 4),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", {args.threads} threads",
        "date": time.strftime("%Y-%m-%d"),
    }
    res["meta"] = meta
    (out / "report.json").write_text(json.dumps(res, indent=1))
    title = f"Evaluation: {args.engine}" + (
        f" ({args.backend}, {args.steps} steps)" if args.engine != "renderer" else ""
    )
    (out / "report.md").write_text(markdown_report(res, title))
    summary = {
        "engine": args.engine,
        "backend": meta["backend"],
        "steps": meta["steps"],
        "n_clips": res["config"]["n_clips"],
        "accuracy": res["accuracy"]["overall"],
        "min_per_emotion": res["accuracy"]["min_per_emotion"],
        "worst_emotion": res["accuracy"]["worst_emotion"],
        "per_emotion": res["accuracy"]["per_emotion"],
        "per_avatar": res["accuracy"]["per_avatar"],
        "target_met": res["target"]["met"],
        "identity": {k: res["identity"][k] for k in ("same_avatar_cos", "other_avatar_cos", "match_rate")},
        "smoothness": {k: res["smoothness"][k] for k in ("ratio_mean", "p95_ratio")},
        "silhouette_iou": res["silhouette"]["iou_mean"],
        "time_s": res["timing"]["total_s"],
        "generate_per_clip_s": res["timing"]["generate_per_clip_s"],
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
