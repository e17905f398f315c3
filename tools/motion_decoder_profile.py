"""Where a motion decoder graph's time goes on onnxruntime, and what a cheaper graph costs in time and in pixels.

    python -m tools.motion_decoder_profile FOLDER [FOLDER ...] --profile        # per op type and per node, each folder
    python -m tools.motion_decoder_profile FOLDER --graphs A.onnx,B.onnx        # ms a call and agreement with FOLDER's
    python -m tools.motion_decoder_profile FOLDER --frames OTHER_FOLDER          # the engine's frames, PSNR against
    python -m tools.motion_decoder_profile FOLDER --build OUT --float-decoder F.onnx  # the candidate graphs and folders

Every figure is on the decoder feeds the folder's own engine makes for tools.motion_int8's held-out avatars
(`HELD_OUT`, 16 frames each: 4 calls of 4 frames an avatar, the box around the avatar as served), on the
server's session settings (`load_session`, `--threads`, default 2). `--profile`: onnxruntime's profiler
(`enable_profiling`), kernel time per op type and the `--top` costliest nodes with their output shapes, per call.
`--graphs`: each graph's ms a call (median of `--rounds`, the graphs alternated), and against the folder's decoder:
PSNR over the avatar's pixels and the haze over the pixels it leaves empty (tools.motion_int8's two checks), the
largest difference in [-1, 1] units and in uint8 levels. `--frames`: the engine of each folder draws the same clips
(same avatars, emotions and seeds: the same motions, the denoiser being shared), PSNR of the RGBA uint8 frames.
`--build`: the candidates of docs/bench/residual_speed_2026-12-06 as graphs and as serving folders beside FOLDER's
(the same reference graph, denoiser and cheaper draw): `merged` (FOLDER's decoder with tools/onnx_rewrites.
merge_sibling_convs: the same numbers), `int8_g84_merged` and `int8_gen_merged` (F.onnx, the float decoder of the
same checkpoint, `tools.export_motion` without --int8-decoder, with the part-mask network and the generator's
convolutions at 1/8 and 1/4, or all of them but `/out` and `/res`, in static int8 as tools.motion_int8 calibrates).
Run timings under the bench lock (`flock /work/locks/bench.lock ...`) on the shared machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from avatarcast.engines.backends.onnxruntime_backend import load_session
from avatarcast.engines.tiny.motion_weights import GRAPHS
from tools.eval.fidelity_metrics import psnr_from_mse
from tools.motion_int8 import EMOTIONS, HELD_OUT, avatar_psnr, empty_haze, served_feeds


def _inputs(session, feeds: list[dict]) -> list[dict]:
    names = {i.name for i in session.get_inputs()}  # a copy-only graph reads no reference features
    return [{k: v for k, v in f.items() if k in names} for f in feeds]


def profile_graph(path: Path, feeds: list[dict], threads: int = 2, top: int = 30) -> dict:
    """onnxruntime's profile of `path` over `feeds` (after one untimed call): ms a call per op type, the `top`
    costliest nodes (ms a call, op, output shapes)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = str(Path(tmp) / "p")
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        fs = _inputs(s, feeds)
        s.run(None, fs[0])
        t0 = time.perf_counter()
        for f in fs:
            s.run(None, f)
        wall = (time.perf_counter() - t0) / len(fs)
        events = json.loads(Path(s.end_profiling()).read_text())
    by_op: collections.Counter = collections.Counter()
    by_node: collections.Counter = collections.Counter()
    info: dict[str, tuple] = {}
    runs = sum(1 for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        a, name = e["args"], e["name"].removesuffix("_kernel_time")
        by_op[a["op_name"]] += e["dur"]
        by_node[name] += e["dur"]
        info[name] = (a["op_name"], [next(iter(t.values())) for t in a.get("output_type_shape", [])])
    total = sum(by_op.values())
    return {
        "graph": str(path),
        "threads": threads,
        "wall_ms_per_call": round(wall * 1000, 2),
        "kernel_ms_per_call": round(total / runs / 1000, 2),
        "by_op_ms": {k: round(v / runs / 1000, 2) for k, v in by_op.most_common()},
        "top_nodes": [
            {"node": k, "op": info[k][0], "out": info[k][1], "ms": round(v / runs / 1000, 2)}
            for k, v in by_node.most_common(top)
        ],
    }


def _levels(x: np.ndarray) -> np.ndarray:
    return np.round((np.clip(x, -1, 1) + 1) * 127.5)


def compare_graphs(paths: list[Path], feeds: list[dict], threads: int = 2, rounds: int = 3) -> list[dict]:
    """Each graph's ms a call (median of `rounds`, alternated) and its outputs against the first graph's."""
    sessions = [load_session(p, threads, ["CPUExecutionProvider"]) for p in paths]
    fs = [_inputs(s, feeds) for s in sessions]
    outs = [[s.run(None, f)[0] for f in ff] for s, ff in zip(sessions, fs)]
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for s, ff, t in zip(sessions, fs, times):
            t0 = time.perf_counter()
            for f in ff:
                s.run(None, f)
            t.append((time.perf_counter() - t0) / len(ff) * 1000)
    base = outs[0]
    return [
        {
            "graph": str(p),
            "ms_per_call": round(float(np.median(t)), 1),
            "ms_rounds": [round(x, 1) for x in t],
            "psnr_db": round(avatar_psnr(base, o), 2),
            "empty_alpha_p99": round(empty_haze(base, o), 5),
            "max_abs": float(max(np.abs(a - b).max() for a, b in zip(base, o))),
            "max_levels": int(max(np.abs(_levels(a) - _levels(b)).max() for a, b in zip(base, o))),
        }
        for p, t, o in zip(paths, times, outs)
    ]


def frames_psnr(folder: Path, other: Path, frames: int = 16, threads: int = 2) -> dict:
    """The engines of both folders draw the same clips (HELD_OUT avatars and seeds): PSNR of other's RGBA uint8
    frames against folder's, over all pixels and over the pixels either draws (alpha > 0)."""
    from avatarcast.engines.tiny.motion_engine import MotionEngine

    engines = [MotionEngine.from_folder(f, threads=threads) for f in (folder, other)]
    se = se_av = n = n_av = 0.0
    worst = 0
    for i, (avatar, seed) in enumerate(HELD_OUT):
        a, b = (e.generate_clip(avatar, EMOTIONS[i % len(EMOTIONS)], frames, seed=seed) for e in engines)
        d = a.astype(np.float64) - b.astype(np.float64)
        drawn = np.broadcast_to((np.maximum(a[..., 3], b[..., 3]) > 0)[..., None], d.shape)
        se, n = se + float((d * d).sum()), n + d.size
        se_av, n_av = se_av + float((d[drawn] ** 2).sum()), n_av + int(drawn.sum())
        worst = max(worst, int(np.abs(d).max()))
    return {
        "frames": frames * len(HELD_OUT),
        "psnr_db": round(psnr_from_mse(se / n / 255.0**2), 2),
        "psnr_drawn_db": round(psnr_from_mse(se_av / max(n_av, 1) / 255.0**2), 2),
        "max_levels": worst,
    }


# The generator's convolutions quantized beside the part-mask network's, by candidate (node-name patterns).
INT8_CANDIDATES = {
    "int8_g84_merged": r"^/(g8|up4|g4)",
    "int8_gen_merged": r"^/(g8|up4|g4|up2|g2|up1)",
}


def _candidate_folder(folder: Path, decoder: Path, out: Path, name: str) -> str:
    """A serving folder of `decoder` beside `folder`'s other graphs (read where they are): its weights hash."""
    import os
    import shutil

    from avatarcast.engines.tiny.motion_weights import load_motion_manifest, write_motion_manifest

    man = load_motion_manifest(folder)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / GRAPHS["reference"], out / GRAPHS["reference"])
    shutil.copyfile(decoder, out / GRAPHS["decoder"])

    def rel(p: str) -> str:
        return os.path.relpath((folder / p).resolve(), out.resolve())

    graphs_from = {k: rel(v) for k, v in man.graphs_from.items()}
    if "denoiser" not in graphs_from:  # a folder with its own denoiser: read it there
        graphs_from["denoiser"] = os.path.relpath(folder.resolve(), out.resolve())
    cheaper = rel(man.cheaper_draw) if man.cheaper_draw else None
    source = {**man.source, "candidate": name}
    new = write_motion_manifest(
        out, man.decoder_shape, man.denoiser_arch, man.mean, man.std, source, graphs_from, cheaper
    )
    return new.weights_hash


def build_candidates(folder: Path, float_decoder: Path, out: Path) -> dict[str, str]:
    """The candidate decoder graphs (out/NAME.onnx) and their folders (out/NAME/): name -> weights hash."""
    import re

    import onnx

    from tools.motion_int8 import CALIBRATION, default_int8, quantize_convs
    from tools.onnx_rewrites import merge_sibling_convs

    out.mkdir(parents=True, exist_ok=True)
    graphs = {}
    m = onnx.load(str(folder / GRAPHS["decoder"]))
    merge_sibling_convs(m)
    onnx.save(m, str(out / "merged.onnx"))
    graphs["merged"] = out / "merged.onnx"
    calibration = served_feeds(folder, CALIBRATION, 16)
    for name, pattern in INT8_CANDIDATES.items():
        rx = re.compile(pattern)
        p = out / f"{name}.onnx"
        quantize_convs(float_decoder, p, calibration, lambda n, rx=rx: default_int8(n) or bool(rx.search(n)))
        m = onnx.load(str(p))
        merge_sibling_convs(m)
        onnx.save(m, str(p))
        graphs[name] = p
    return {name: _candidate_folder(folder, p, out / name, name) for name, p in graphs.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="exported motion folders (the first one's engine feeds all)")
    ap.add_argument("--profile", action="store_true", help="onnxruntime's profile of each folder's decoder")
    ap.add_argument("--graphs", default="", help="comma-separated decoder graphs to time against the first folder's")
    ap.add_argument("--frames", type=Path, help="a folder whose engine's frames are compared with the first's")
    ap.add_argument("--build", type=Path, metavar="OUT", help="write the candidate graphs and folders here")
    ap.add_argument("--float-decoder", type=Path, help="with --build: the float decoder graph of the same checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args(argv)
    out: dict = {}
    if args.build:
        if not args.float_decoder:
            ap.error("--build needs --float-decoder")
        out["built"] = build_candidates(args.folders[0], args.float_decoder, args.build)
    if args.profile or args.graphs:
        feeds = served_feeds(args.folders[0], HELD_OUT, 16, args.threads)
        if args.profile:
            out["profile"] = [profile_graph(f / GRAPHS["decoder"], feeds, args.threads, args.top) for f in args.folders]
        if args.graphs:
            paths = [args.folders[0] / GRAPHS["decoder"], *(Path(p) for p in args.graphs.split(","))]
            out["graphs"] = compare_graphs(paths, feeds, args.threads, args.rounds)
    if args.frames:
        out["frames"] = frames_psnr(args.folders[0], args.frames, threads=args.threads)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
