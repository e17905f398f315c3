"""Where the Wan2.2 VAE decode's time goes at 360P on one GPU, and what cuts it.

Random weights of the real Wan2.2 VAE (bf16, channels-last), B streams with steady caches:
  1. steady chunk decode (3 latent frames = 12 video frames) with 1 or 3 latent frames per decoder
     call, eager and (--compile) compiled;
  2. every causal convolution of one steady call as cuDNN runs it (conv3d) against two conv2d
     forms (time taps stacked as channels; three conv2d summed), with achieved TFLOP/s;
  3. the top CUDA kernels of one steady chunk (torch.profiler).
Run on the device: python3 tools/gpu/wan_vae_bench.py [--batch 5] [--compile] -o $OUT/vae.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import torch.nn.functional as F


def _time(fn, reps: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2] * 1000


def _primed(dec, vae, B: int, grid=(22, 40)):
    from avatarcast.engines.wan.vae_stream import VaeStreamCache

    caches = [VaeStreamCache() for _ in range(B)]
    z = torch.randn(B, vae.config.z_dim, 4, *grid, device="cuda", dtype=torch.bfloat16)
    dec.decode(z[:, :, :1], caches)
    dec.decode(z[:, :, 1:4], caches)  # now every cache entry is steady
    return caches


def chunk_ms(vae, B: int, k: int, compile: bool, T: int = 3) -> dict:
    from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder

    dec = StreamingVaeDecoder(vae, max_batch=B, compile=compile, channels_last=True, frames_per_call=k)
    caches = _primed(dec, vae, B)
    z = torch.randn(B, vae.config.z_dim, T, 22, 40, device="cuda", dtype=torch.bfloat16)
    snap = [list(c.feats) for c in caches]

    def run():
        for c, f in zip(caches, snap):
            c.feats = list(f)
        dec.decode(z, caches)

    t0 = time.perf_counter()
    run()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    ms = _time(run)
    return {
        "B": B,
        "frames_per_call": k,
        "compile": compile,
        "chunk_ms": round(ms, 2),
        "ms_per_frame": round(ms / (B * 4 * T), 3),
        "first_call_s": round(first, 1),
    }


def conv_table(vae, B: int) -> list[dict]:
    """Every Conv3d input of one steady decoder call (1 latent frame), timed three ways."""
    from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder

    dec = StreamingVaeDecoder(vae, max_batch=B, channels_last=True)
    caches = _primed(dec, vae, B)
    seen: dict[tuple, dict] = {}

    def hook(m, args):
        x = args[0]
        key = (tuple(x.shape), tuple(m.weight.shape))
        seen.setdefault(key, {"n": 0, "mod": m})["n"] += 1

    hooks = [m.register_forward_pre_hook(hook) for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv3d)]
    z = torch.randn(B, vae.config.z_dim, 1, 22, 40, device="cuda", dtype=torch.bfloat16)
    dec.decode(z, caches)
    for h in hooks:
        h.remove()
    rows = []
    for (xs, ws), v in seen.items():
        m = v["mod"]
        kt = ws[2]
        # the layer pads time (cache) and space itself, then runs conv3d with padding 0
        pw, _, ph, _, pt, _ = getattr(m, "_padding", (0,) * 6)
        x = torch.randn(xs, device="cuda", dtype=torch.bfloat16)
        xp = F.pad(x, (pw, pw, ph, ph, pt, 0)).contiguous(memory_format=torch.channels_last_3d)
        w = m.weight.detach().contiguous(memory_format=torch.channels_last_3d)
        Bx, C, Tp, Hp, Wp = xp.shape
        To, Ho, Wo = Tp - kt + 1, Hp - ws[3] + 1, Wp - ws[4] + 1
        flops = 2 * Bx * To * Ho * Wo * ws[0] * ws[1] * kt * ws[3] * ws[4]
        r = {"x": list(xs), "w": list(ws), "count": v["n"], "gflop": round(flops / 1e9, 1)}
        r["conv3d_ms"] = _time(lambda xp=xp, w=w: F.conv3d(xp, w))
        if kt == 3:
            # conv2d over (B*To) frames with the 3 time taps stacked as channels
            w2 = (
                w.permute(0, 2, 1, 3, 4)
                .reshape(ws[0], kt * ws[1], ws[3], ws[4])
                .contiguous(memory_format=torch.channels_last)
            )

            def stacked(xp=xp, kt=kt, Bx=Bx, To=To, C=C, Hp=Hp, Wp=Wp, w2=w2):
                u = xp.unfold(2, kt, 1)  # B, C, To, H, W, kt
                u = (
                    u.permute(0, 2, 5, 1, 3, 4)
                    .reshape(Bx * To, kt * C, Hp, Wp)
                    .contiguous(memory_format=torch.channels_last)
                )
                return F.conv2d(u, w2)

            w3 = [w[:, :, i].contiguous(memory_format=torch.channels_last) for i in range(kt)]

            def summed(xp=xp, kt=kt, Bx=Bx, To=To, C=C, Hp=Hp, Wp=Wp, w3=w3):
                fr = xp.permute(0, 2, 1, 3, 4)  # B, T, C, H, W
                out = None
                for i in range(kt):
                    xi = fr[:, i : i + To].reshape(Bx * To, C, Hp, Wp).contiguous(memory_format=torch.channels_last)
                    o = F.conv2d(xi, w3[i])
                    out = o if out is None else out + o
                return out

            ref = F.conv3d(xp, w).permute(0, 2, 1, 3, 4).reshape(Bx * To, ws[0], Ho, Wo).float()
            r["stacked_err"] = float((stacked().float() - ref).abs().max() / ref.abs().max())
            r["stacked_ms"] = _time(stacked)
            r["summed_ms"] = _time(summed)
        for k in [k for k in list(r) if k.endswith("_ms")]:
            r[k.replace("_ms", "_tflops")] = round(flops / (r[k] / 1000) / 1e12, 1)
            r[k] = round(r[k], 3)
        rows.append(r)
        print(json.dumps(r), flush=True)
    return rows


def profile(vae, B: int, top: int = 25, compile: bool = False, k: int = 1) -> list[dict]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder

    dec = StreamingVaeDecoder(vae, max_batch=B, channels_last=True, compile=compile, frames_per_call=k)
    caches = _primed(dec, vae, B)
    z = torch.randn(B, vae.config.z_dim, 3, 22, 40, device="cuda", dtype=torch.bfloat16)
    dec.decode(z, caches)
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        dec.decode(z, caches)
        torch.cuda.synchronize()
    evs = [e for e in p.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in evs)
    evs.sort(key=lambda e: -e.self_device_time_total)
    kinds: dict[str, float] = {}
    for e in evs:
        name = e.key
        kind = (
            "conv"
            if "fprop" in name or "conv" in name.lower() and "triton" not in name
            else "triton_" + name.split("_")[1]
            if name.startswith("triton_")
            else "copy"
            if "copy" in name.lower() or "Memcpy" in name
            else "other"
        )
        kinds[kind] = kinds.get(kind, 0.0) + e.self_device_time_total / 1000
    print(
        json.dumps(
            {
                "compile": compile,
                "frames_per_call": k,
                "total_ms": round(total / 1000, 2),
                "by_kind_ms": {a: round(b, 2) for a, b in kinds.items()},
            }
        ),
        flush=True,
    )
    rows = [
        {
            "kernel": e.key[:110],
            "ms": round(e.self_device_time_total / 1000, 2),
            "share": round(e.self_device_time_total / total, 3),
            "calls": e.count,
        }
        for e in evs[:top]
    ]
    for r in rows:
        print(json.dumps(r), flush=True)
    return [
        {
            "compile": compile,
            "frames_per_call": k,
            "total_ms": round(total / 1000, 2),
            "by_kind_ms": {a: round(b, 2) for a, b in kinds.items()},
        }
    ] + rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--skip-convs", action="store_true")
    ap.add_argument("-o", "--out", default="vae.json")
    a = ap.parse_args()
    from diffusers import AutoencoderKLWan

    from avatarcast.engines.wan.shapes import VAE_22

    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    with torch.device("cuda"):
        vae = AutoencoderKLWan(**VAE_22).to(torch.bfloat16).eval()
    for m in vae.decoder.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
    rep: dict = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "batch": a.batch,
    }
    with torch.no_grad():
        rep["chunks"], rep["profiles"] = [], []
        for compile in (False, True) if a.compile else (False,):
            for k in (1, 3):
                rep["chunks"].append(chunk_ms(vae, a.batch, k, compile))
                print(json.dumps(rep["chunks"][-1]), flush=True)
                Path(a.out).write_text(json.dumps(rep, indent=1))
        for compile in (True,) if a.compile else (False,):
            for k in (1, 3):
                rep["profiles"].append(profile(vae, a.batch, compile=compile, k=k))
                Path(a.out).write_text(json.dumps(rep, indent=1))
        if not a.skip_convs:
            rep["convs"] = conv_table(vae, a.batch)
            for key in ("conv3d", "stacked", "summed"):
                rep[f"convs_total_{key}_ms"] = round(
                    sum(r.get(f"{key}_ms", r["conv3d_ms"]) * r["count"] for r in rep["convs"]), 2
                )
            print({k: v for k, v in rep.items() if k.startswith("convs_total")}, flush=True)
        Path(a.out).write_text(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
