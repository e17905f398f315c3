"""Where a motion chunk's time goes on torch: the networks, or the host-side work around them.

    python -m tools.motion_torch_profile [--device cpu|cuda] [--sessions 2] [--chunks 6] [--draw copy|residual|cutout]
        [--batch-streams auto|on|off] [--compose auto|device|host] [--threads N]
        [--variants fp32,bf16,cl,bf16+cl] [--trace PREFIX] [--compare]

It runs the server's chunk loop (engines/tiny/motion_engine.MotionEngine: sample_chunks, then decode_chunks) on the
shipped folder read into torch (`MotionEngine.from_folder(..., backend="torch")`) and splits each chunk's wall time:
  denoise_s    the denoiser calls (numpy in, numpy out)
  decode_net_s the decoder calls (draw / draw_streams, with the copy of the drawn boxes back to the host; on the
               device compose path draw_t / draw_streams_t, which leave them on the device)
  compose_s    the device compose (engines/tiny/motion_compose.py: window, effects, RGBA, cut; with the effects'
               placements worked out on the host); 0 on the host compose path
  to_host_s    on the device compose path, the one uint8 copy of the frames to the host (MotionEngine._to_host)
  host_s       everything else in decode_chunks: the boxes, and on the host compose path the window, the effects'
               sprites, RGBA out (numpy, per stream)
--draw cutout: the cut-out draw on torch (engines/tiny/cutout_torch.py; variant fp32 only, decoder_calls and
new_shapes empty: it has no decoder network).
--compose auto: the backend's default (the device on CUDA, numpy on the CPU). On CUDA each timed call is closed by
torch.cuda.synchronize, so the shares are the GPU's work and not its queueing (and the host cannot queue one call
while the device runs the last: the fps here is below the bench's). --variants: the engine and its streams built once,
then each variant measured in turn (bf16: the decoder's networks under bfloat16 autocast; cl: its weights
channels_last). --trace: one chunk a variant under torch.profiler, its op tables to PREFIX_<variant>.txt, and the
kernel launches, synchronizations and box buckets of that chunk in the result. --compare (bf16 variants): one chunk's
frames against float32's (uint8 levels apart, PSNR). Prints one JSON object a variant; the shares are of the summed
chunk time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from avatarcast.engines.tiny.motion_engine import MotionEngine


def _timed(fn: Callable, into: dict[str, float], key: str, sync: Callable[[], None] = lambda: None) -> Callable:
    inside = [0]  # draw_streams_t calls itself for more than max_rows rows: only the outer call is counted

    def wrapped(*a: Any, **k: Any) -> Any:
        if inside[0]:
            return fn(*a, **k)
        inside[0] += 1
        sync()
        t0 = time.perf_counter()
        try:
            out = fn(*a, **k)
            sync()
            return out
        finally:
            inside[0] -= 1
            into[key] += time.perf_counter() - t0

    return wrapped


def build(device: str, sessions: int, draw: str, batch_streams: str, threads: int | None, compose: str = "auto"):
    """The engine on the shipped folder, and `sessions` streams over 8 avatars."""
    import torch

    from avatarcast.engines.tiny.cutout_torch import TorchCutoutBackend
    from avatarcast.engines.tiny.motion_torch import TorchMotionBackend
    from avatarcast.engines.tiny.motion_weights import CUTOUT_DRAW, frames_hash, load_motion_manifest, motion_folder

    if threads:
        torch.set_num_threads(threads)
    man = load_motion_manifest(motion_folder(None, draw))
    kinds = {"batch_streams": None if batch_streams == "auto" else batch_streams == "on"}
    kinds["compose"] = None if compose == "auto" else compose == "device"
    be: TorchMotionBackend | TorchCutoutBackend
    if draw == CUTOUT_DRAW:
        be = TorchCutoutBackend.from_folder(man, device, **kinds)
    else:
        be = TorchMotionBackend.from_folder(man, device, **kinds)
    weights_hash = frames_hash(man.weights_hash, draw)
    engine = MotionEngine(be, man.mean, man.std, 2, weights_hash)
    avatars = ("pip", "bun", "kiko", "luna", "random-11", "random-12", "random-13", "random-14")
    emotions = ("happy", "sad", "surprised", "angry", "love", "laughing")
    states = [
        engine.start_stream(avatars[i % len(avatars)], emotions[i % len(emotions)], 1.0, i) for i in range(sessions)
    ]
    return engine, states


def set_variant(engine: MotionEngine, variant: str) -> tuple[str | None, bool]:
    """'fp32', 'bf16', 'cl' (channels_last), 'padN' (the decoder's calls padded to a multiple of N rows), joined by
    '+' ('bf16+cl', 'pad32+bf16'): the backend's amp, its decoders' memory format and its row padding."""
    import torch

    from avatarcast.engines.tiny.motion_torch import TorchMotionBackend

    if not isinstance(engine.backend, TorchMotionBackend):  # the cut-out draw: no decoder network to vary
        if variant != "fp32":
            raise ValueError(f"variant {variant!r}: the cut-out draw has fp32 only")
        return None, False
    parts = set(variant.split("+"))
    pads = {p for p in parts if p.startswith("pad") and p[3:].isdigit()}
    if not parts - pads <= {"fp32", "bf16", "cl"} or len(pads) > 1:
        raise ValueError(f"variant {variant!r}: fp32, bf16, cl, padN, joined by +")
    be = engine.backend
    be.pad_rows = int(next(iter(pads))[3:]) if pads else 0  # type: ignore[attr-defined]
    amp, cl = ("bf16" if "bf16" in parts else None), "cl" in parts
    be.amp = amp  # type: ignore[attr-defined]
    fmt = torch.channels_last if cl else torch.contiguous_format
    for dec in (be.decoder, be.cheaper):  # type: ignore[attr-defined]
        if dec is not None:
            dec.to(memory_format=fmt)
    be.channels_last = cl  # type: ignore[attr-defined]
    return amp, cl


def profile(
    device: str,
    sessions: int,
    chunks: int,
    draw: str,
    batch_streams: str,
    threads: int | None,
    warmup: int = 1,
    compose: str = "auto",
    variants: tuple[str, ...] = ("fp32",),
    trace: str | None = None,
    compare: bool = False,
    kernels: tuple[str | None, str | None] = (None, None),
) -> list[dict]:
    """One result a variant (set_variant), the streams and the engine built once. kernels: the cut-out draw's
    (cutout_torch.KERNELS) and the device compose's (motion_compose.KERNELS), None for the default."""
    import torch

    from avatarcast.engines.tiny.cutout_torch import TorchCutoutBackend
    from avatarcast.engines.tiny.motion_torch import TorchMotionBackend

    engine, states = build(device, sessions, draw, batch_streams, threads, compose)
    be = engine.backend
    if kernels[0]:
        be.use_kernel(kernels[0])  # type: ignore[union-attr]  # the cut-out draw's backend (else AttributeError)
    if kernels[1] and engine.device_compose is not None:
        engine.device_compose.use_kernel(kernels[1])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    spent: dict[str, float] = dict.fromkeys(("denoise_s", "decode_net_s", "compose_s", "to_host_s"), 0.0)
    be.denoise = _timed(be.denoise, spent, "denoise_s")  # type: ignore[method-assign]
    for name in ("draw", "draw_streams", "draw_t", "draw_streams_t"):  # the numpy ones call the _t ones: one of each
        if name.endswith("_t") == (be.compose_device is not None):
            setattr(be, name, _timed(getattr(be, name), spent, "decode_net_s", sync))
    shapes = _shape_log(be)
    if engine._device_compose is not None:
        dc = engine._device_compose
        dc.frames = _timed(dc.frames, spent, "compose_s", sync)
        engine._to_host = _timed(engine._to_host, spent, "to_host_s", sync)  # type: ignore[method-assign]
    out = []
    for variant in variants:
        amp, cl = set_variant(engine, variant)
        for _ in range(warmup):
            engine.decode_chunks(states, engine.sample_chunks(states))
        extra: dict[str, Any] = {}
        if compare and amp:
            extra["amp_vs_fp32"] = _compare_amp(engine, states)
        if trace:
            extra["trace"] = _trace(engine, states, f"{trace}_{variant}.txt", sync)
            extra["host_functions"] = _cprofile(engine, states, f"{trace}_{variant}_host.txt", sync)
        spent.update({"denoise_s": 0.0, "decode_net_s": 0.0, "compose_s": 0.0, "to_host_s": 0.0})
        total = decode = 0.0
        calls, new_shapes = [], []
        for _ in range(chunks):
            seen, shapes["calls"] = set(shapes["seen"]), []
            t0 = time.perf_counter()
            lat = engine.sample_chunks(states)
            t1 = time.perf_counter()
            engine.decode_chunks(states, lat)
            t2 = time.perf_counter()
            total, decode = total + t2 - t0, decode + t2 - t1
            calls.append(len(shapes["calls"]))
            new_shapes.append(len(set(shapes["calls"]) - seen))
        host = decode - spent["decode_net_s"] - spent["compose_s"] - spent["to_host_s"]
        frames = chunks * sessions * engine.cfg.chunk_frames
        out.append(
            {
                "device": device,
                "device_name": getattr(be, "device_name", None),
                "sessions": sessions,
                "chunks": chunks,
                "draw": draw,
                "kernels": [
                    be.kernel if isinstance(be, TorchCutoutBackend) else None,
                    None if engine.device_compose is None else engine.device_compose.kernel,
                ],
                "variant": variant,
                "amp": amp,
                "channels_last": cl,
                "pad_rows": be.pad_rows if isinstance(be, TorchMotionBackend) else None,  # none for the cut-out draw
                "batch_streams": be.batch_streams,
                "compose_device": be.compose_device,
                "fps": round(frames / total, 2),
                "chunk_ms": round(1000 * total / chunks, 1),
                **{k: round(spent[k], 3) for k in ("denoise_s", "decode_net_s", "compose_s", "to_host_s")},
                "host_s": round(host, 3),
                "share": {
                    "denoise": round(spent["denoise_s"] / total, 3),
                    "decode_net": round(spent["decode_net_s"] / total, 3),
                    "compose": round(spent["compose_s"] / total, 3),
                    "to_host": round(spent["to_host_s"] / total, 3),
                    "host": round(host / total, 3),
                },
                # the decoder's calls a chunk, and how many had a shape (rows, h, w) no earlier call of this process
                # had: what cuDNN must plan anew (and what a CUDA graph per shape would capture anew)
                "decoder_calls": calls,
                "new_shapes": new_shapes,
                **extra,
            }
        )
    return out


def _shape_log(be: Any) -> dict:
    """Records each decoder call's (rows, h, w) in the returned dict's "calls" (and all of them in "seen")."""
    from avatarcast.engines.tiny.motion_torch import TorchMotionBackend

    log: dict[str, Any] = {"calls": [], "seen": set()}
    if not isinstance(be, TorchMotionBackend):  # the cut-out draw has no decoder network
        return log
    for dec in (be.decoder, be.cheaper):
        if dec is None:
            continue

        def draw(motion: Any, *a: Any, _draw: Callable = dec.draw, **k: Any) -> Any:
            centres = a[3]
            key = (int(motion.shape[0]), int(centres.shape[-3]), int(centres.shape[-2]))
            log["calls"].append(key)
            log["seen"].add(key)
            return _draw(motion, *a, **k)

        dec.draw = draw
    return log


def _compare_amp(engine: MotionEngine, states: list) -> dict:
    """One chunk's frames (uint8 RGBA) under the backend's amp against float32, from the same motions: how far
    apart, in uint8 levels, and the PSNR between them."""
    import numpy as np

    be = engine.backend
    lat = engine.sample_chunks([s.copy() for s in states])  # the streams' own contexts unmoved
    got = engine.decode_chunks(states, lat).astype(np.int16)
    amp, be.amp = be.amp, None  # type: ignore[attr-defined]
    try:
        want = engine.decode_chunks(states, lat).astype(np.int16)
    finally:
        be.amp = amp  # type: ignore[attr-defined]
    d = np.abs(got - want)
    mse = float((d.astype(np.float64) ** 2).mean())
    return {
        "max_levels": int(d.max()),
        "mean_levels": round(float(d.mean()), 5),
        "share_apart": round(float((d > 0).mean()), 6),
        "share_over_2": round(float((d > 2).mean()), 6),
        "psnr_db": round(10 * float(np.log10(255.0**2 / mse)), 2) if mse else None,
        "frames": int(d.shape[0] * d.shape[1]),
    }


def _cprofile(engine: MotionEngine, states: list, path: str, sync: Callable[[], None]) -> str:
    """One chunk's decode under cProfile (the host's Python, with the waits for the device where a function waits):
    the functions by cumulative time, written to `path`."""
    import cProfile
    import io
    import pstats

    lat = engine.sample_chunks(states)
    sync()
    prof = cProfile.Profile()
    prof.enable()
    engine.decode_chunks(states, lat)
    sync()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(45)
    with open(path, "w") as f:
        f.write(buf.getvalue())
    return path


def _trace(engine: MotionEngine, states: list, path: str, sync: Callable[[], None]) -> dict:
    """One chunk under torch.profiler: the ops by GPU time and by host time, written to `path`; the kernel count."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if engine.backend.device.startswith("cuda") else [])
    lat = engine.sample_chunks(states)
    sync()
    with tprofile(activities=acts) as prof:
        engine.decode_chunks(states, lat)
        sync()
    ka = prof.key_averages()
    with open(path, "w") as f:
        f.write(ka.table(sort_by="self_cuda_time_total" if len(acts) > 1 else "self_cpu_time_total", row_limit=40))
        f.write("\n\n")
        f.write(ka.table(sort_by="self_cpu_time_total", row_limit=30))
    raw = lat.reshape(len(states), engine.cfg.chunk_frames, -1) * engine.std + engine.mean
    buckets = len({engine.bucket_box(engine.draw_box(r))[2:] for r in raw})
    launches = sum(e.count for e in ka if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    syncs = sum(e.count for e in ka if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize"))
    return {"launches": int(launches), "syncs": int(syncs), "buckets": buckets, "table": path}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--draw", default="copy", choices=("copy", "residual", "cutout"))
    ap.add_argument("--batch-streams", default="auto", choices=("auto", "on", "off"))
    ap.add_argument("--compose", default="auto", choices=("auto", "device", "host"))
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument(
        "--variants", default="fp32", help="comma-separated: fp32, bf16 (autocast), cl (channels_last), padN, bf16+cl"
    )
    ap.add_argument("--trace", default=None, help="one chunk under torch.profiler: op tables to <trace>_<variant>.txt")
    ap.add_argument("--compare", action="store_true", help="bf16 variants: one chunk's frames against float32's")
    ap.add_argument("--kernel", default=None, help="the cut-out draw's kernel: eager, compiled or triton")
    ap.add_argument("--compose-kernel", default=None, help="the device compose's kernel: torch or triton")
    args = ap.parse_args(argv)
    for r in profile(
        args.device,
        args.sessions,
        args.chunks,
        args.draw,
        args.batch_streams,
        args.threads,
        compose=args.compose,
        variants=tuple(args.variants.split(",")),
        trace=args.trace,
        compare=args.compare,
        kernels=(args.kernel, args.compose_kernel),
    ):
        print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
