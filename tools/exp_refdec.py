"""Experiment (issue 16): the architecture-2 decoder with and without the avatar's reference frame.

Both decoders decode the same frozen encoder's latents (an architecture-2 `ae.pt`), start from its
decoder (the reference branch is zero-initialized, so both start at the same pictures), and train
the same steps on the same batches (each step's batch is a function of --seed and the step).

    python -m tools.exp_refdec prep  --ae /work/ckpt_v2 --work /tmp/refdec          # render + encode once
    python -m tools.exp_refdec train --ae /work/ckpt_v2 --work /tmp/refdec --arch plain --steps 1200
    python -m tools.exp_refdec train --ae /work/ckpt_v2 --work /tmp/refdec --arch ref --steps 1200
    python -m tools.exp_refdec eval  --ae /work/ckpt_v2 --work /tmp/refdec --runs init,plain,ref --out DIR
    python -m tools.exp_refdec bench --ae /work/ckpt_v2                              # CPU cost per frame

`train` resumes from --work/RUN/state.pt and stops at --steps; --device cuda and a bigger --batch for
the GPU (bf16 autocast there). Held-out frames are tools/eval/holdout.py's (built-in avatars at held-out
motion seeds, random_avatar(900_000 + k)); training avatars are tools.train_tiny's (built-ins and
random_avatar(10_000 + i)) at motion seeds < 2**31. Scores: tools/eval/fidelity.py's frame_scores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from avatarcast.engines.avatar_world import EMOTIONS, pose_at, reference_frame, render_frame, sample_variation
from avatarcast.engines.avatar_world.render import landmarks
from avatarcast.engines.tiny.crop import CellBox
from avatarcast.engines.tiny.model import Decoder, Encoder, TinyConfig, frames_to_tensor, tensor_to_frames
from avatarcast.engines.tiny.refdec import RefDecConfig, RefDecoder, RefEncoder, RefFeatures, encode_box
from tools.eval import holdout
from tools.eval.fidelity import frame_scores, group_of
from tools.train_tiny import avatar_by_id, avatar_weight, float_state, grad_l1, to_window_tensor, weighted_l1

CROPS = ((16, 16), (16, 24), (24, 24), (24, 32))  # latent cells (rows, cols) of a batch's crops
SCORES = ("avatar_psnr_db", "head_psnr_db", "alpha_iou", "avatar_ssim")


def load_cfg(ae_dir: Path) -> TinyConfig:
    return TinyConfig.from_dict(json.loads((ae_dir / "config.json").read_text()))


def load_ae(ae_dir: Path, cfg: TinyConfig) -> tuple[Encoder, Decoder]:
    s = torch.load(ae_dir / "ae.pt", map_location="cpu")
    enc, dec = Encoder(cfg), Decoder(cfg)
    enc.load_state_dict(float_state(s["encoder"]))
    dec.load_state_dict(float_state(s["decoder"]))
    return enc.eval().requires_grad_(False), dec


def ref_window(avatar, cfg: TinyConfig) -> torch.Tensor:
    """The avatar's reference frame as the decoder's window tensor (1, 4, pad_H, window_W)."""
    return frames_to_tensor(torch.from_numpy(reference_frame(avatar))[None], cfg)


# --- data -----------------------------------------------------------------------------------


@torch.no_grad()
def encode_frames(
    enc: Encoder, frames: np.ndarray, cfg: TinyConfig, device: torch.device, batch: int = 8
) -> torch.Tensor:
    out = []
    for i in range(0, len(frames), batch):
        out.append(enc(frames_to_tensor(torch.from_numpy(frames[i : i + batch]).to(device), cfg)).float().cpu())
    return torch.cat(out)


def _render_job(job: tuple[int, str, float, int, float]) -> np.ndarray:
    a, emotion, t, seed, intensity = job
    return render_frame(avatar_by_id(a), pose_at(emotion, t, sample_variation(seed), intensity))


def prep(args) -> None:
    """Training frames (training avatars, seeds < 2**31) and the held-out frames, encoded once."""
    work, ae = Path(args.work), Path(args.ae)
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_cfg(ae)
    device = torch.device(args.device)
    enc = load_ae(ae, cfg)[0]  # moved to the device after the rendering processes have forked
    cols = slice(cfg.window_x0, cfg.window_x0 + cfg.window_width)
    if not (work / "train.pt").exists():
        rng = np.random.default_rng(args.seed)
        jobs = [
            (
                a,
                EMOTIONS[int(rng.integers(len(EMOTIONS)))],
                float(rng.uniform(0, 20)),
                int(rng.integers(1 << 31)),
                float(rng.uniform(0.5, 1.0)),
            )
            for a in range(args.avatars)
            for _ in range(args.frames_per_avatar)
        ]
        avatar = [j[0] for j in jobs]
        t0 = time.time()
        with Pool(args.workers) as pool:
            frames = np.stack(pool.map(_render_job, jobs, chunksize=16))
        refs = np.stack([reference_frame(avatar_by_id(a)) for a in range(args.avatars)])
        enc.to(device)
        print(f"[prep] rendered {len(frames)} frames of {args.avatars} avatars in {time.time() - t0:.0f}s", flush=True)
        t0 = time.time()
        z = encode_frames(enc, frames, cfg, device)
        print(f"[prep] encoded in {time.time() - t0:.0f}s", flush=True)
        torch.save(
            {
                "frames": torch.from_numpy(frames[:, :, cols].copy()),
                "z": z,
                "avatar": torch.tensor(avatar),
                "refs": torch.from_numpy(refs[:, :, cols].copy()),
            },
            work / "train.pt",
        )
    if not (work / "heldout.pt").exists():
        enc.to(device)
        avatars = holdout.eval_avatars(n_holdout=args.holdout_avatars)
        specs = holdout.reconstruction_frames(avatars, args.heldout_per_avatar)
        poses = [pose_at(s.emotion, s.time, sample_variation(s.seed), s.intensity) for s in specs]
        frames = np.stack([render_frame(s.avatar, p) for s, p in zip(specs, poses)])
        names = list(dict.fromkeys(s.avatar.name for s in specs))
        torch.save(
            {
                "frames": torch.from_numpy(frames),
                "z": encode_frames(enc, frames, cfg, device),
                "avatar": torch.tensor([names.index(s.avatar.name) for s in specs]),
                "names": names,
                "refs": torch.from_numpy(np.stack([reference_frame(a) for a in avatars])),
                "head": [tuple(landmarks(s.avatar, p).head) for s, p in zip(specs, poses)],
                "emotion": [s.emotion for s in specs],
            },
            work / "heldout.pt",
        )
        print(f"[prep] held-out: {len(frames)} frames of {len(names)} avatars", flush=True)


# --- models ---------------------------------------------------------------------------------


class Arm(nn.Module):
    """One decoder under test: plain (arch 2) or reference-conditioned, with its reference encoder."""

    def __init__(self, arch: str, cfg: TinyConfig, rcfg: RefDecConfig):
        super().__init__()
        self.arch, self.rcfg = arch, rcfg
        self.full_ref_encode = False  # training: encode whole reference windows (GPU) or only each box's part (CPU)
        if arch == "plain":
            self.dec = Decoder(cfg)
        elif arch == "ref":
            self.dec, self.ref_enc = RefDecoder(cfg, rcfg), RefEncoder(rcfg)
        else:
            raise ValueError(f"unknown arch {arch!r}: plain or ref")

    @property
    def base(self) -> Decoder:
        return self.dec if self.arch == "plain" else self.dec.base

    def new_parameters(self) -> list[nn.Parameter]:
        """What the base decoder does not have (gets its own learning rate)."""
        base = {id(p) for p in self.base.parameters()}
        return [p for p in self.parameters() if id(p) not in base]

    def decode_crops(self, z: torch.Tensor, ref_x: torch.Tensor, boxes: list[CellBox]) -> torch.Tensor:
        """Training: z are the boxes' latents (B, C, h, w); ref_x each sample's reference window."""
        if self.arch == "plain":
            return self.dec(z)
        if self.full_ref_encode:
            # the whole reference windows in one batched call, then each sample's window of them: the
            # serving path exactly (RefFeatures), and one launch instead of a loop over the batch
            feats = RefFeatures.encode(self.ref_enc, ref_x, self.rcfg.radius)
            per = [tuple(m[b : b + 1] for m in feats.window(box)) for b, box in enumerate(boxes)]
        else:
            per = [
                encode_box(self.ref_enc, ref_x[b : b + 1], box, self.rcfg.radius, self.rcfg.encode_margin)
                for b, box in enumerate(boxes)
            ]
        return self.dec(z, tuple(torch.cat(lv) for lv in zip(*per)))

    def decode_full(self, z: torch.Tensor, feats: RefFeatures | None) -> torch.Tensor:
        """Serving: the whole grid, with the avatar's cached reference features."""
        if self.arch == "plain":
            return self.dec(z)
        H, W = z.shape[-2:]
        return self.dec(z, feats.window(CellBox(0, H, 0, W)))


def decoder_cfg(cfg: TinyConfig, channels: str | None, blocks: str | None) -> TinyConfig:
    """The autoencoder's config with another decoder size (a smaller decoder trained from scratch)."""
    d = cfg.to_dict()
    if channels:
        d["dec_channels"] = [int(c) for c in channels.split(",")]
    if blocks:
        d["dec_blocks"] = [int(b) for b in blocks.split(",")]
    return TinyConfig.from_dict(d)


def build_arm(arch: str, cfg: TinyConfig, ae_dir: Path, init: str, radius: int = 3) -> Arm:
    arm = Arm(arch, cfg, RefDecConfig(radius=radius))
    if init == "ae":
        arm.base.load_state_dict(load_ae(ae_dir, cfg)[1].state_dict())
    return arm


# --- training --------------------------------------------------------------------------------


def batch_plan(seed: int, step: int, occ: torch.Tensor, batch: int, H: int, W: int):
    """Indices, one crop shape, a box per sample (biased onto the avatar), latent noise: a function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    idx = rng.integers(0, len(occ), batch)
    ch, cw = CROPS[int(rng.integers(len(CROPS)))]
    boxes = []
    for i in idx:
        cells = np.argwhere(occ[i].numpy())
        cy, cx = cells[int(rng.integers(len(cells)))] if len(cells) else (H // 2, W // 2)
        top = int(np.clip(cy - ch // 2 + rng.integers(-4, 5), 0, H - ch))
        left = int(np.clip(cx - cw // 2 + rng.integers(-4, 5), 0, W - cw))
        boxes.append(CellBox(top, top + ch, left, left + cw))
    # half the batch gets latent noise of up to 0.15 latent std, as tools/train_tiny's ae stage
    sig = rng.uniform(0, 0.15, batch) * (rng.random(batch) < 0.5)
    noise_seed = int(rng.integers(1 << 31))
    return idx, boxes, sig, noise_seed


def train(args) -> None:
    work, ae = Path(args.work), Path(args.ae)
    out = work / (args.name or args.arch)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    amp = device.type == "cuda"
    cfg = load_cfg(ae)
    data = torch.load(work / "train.pt")
    s = cfg.downsample
    H, W = cfg.latent_hw
    x_all = data["frames"]
    occ = torch.cat(
        [
            torch.nn.functional.max_pool2d((to_window_tensor(x_all[i : i + 64], cfg)[:, 3:4] > -0.999).float(), s)[:, 0]
            > 0
            for i in range(0, len(x_all), 64)
        ]
    )
    z_all = data["z"].float().to(device)
    x_all = x_all.to(device)
    refs = to_window_tensor(data["refs"], cfg).to(device)
    dcfg = decoder_cfg(cfg, args.dec_channels, args.dec_blocks)
    if dcfg != cfg and args.init == "ae":
        raise SystemExit("--dec-channels/--dec-blocks give a new decoder: use --init scratch")
    arm = build_arm(args.arch, dcfg, ae, args.init, args.radius).to(device)
    arm.full_ref_encode = args.ref_encode == "full" or (args.ref_encode == "auto" and amp)
    new = arm.new_parameters()
    new_ids = {id(p) for p in new}
    base = [p for p in arm.parameters() if id(p) not in new_ids]
    groups = [{"params": base, "lr": args.lr, "name": "base"}]
    if new:
        groups.append({"params": new, "lr": args.ref_lr, "name": "new"})
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.99), weight_decay=0.0)
    step, log = 0, []
    state = out / "state.pt"
    if state.exists():
        st = torch.load(state, map_location=device)
        arm.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, log = st["step"], st["log"]
        print(f"[{out.name}] resumed at step {step}", flush=True)

    def save() -> None:
        tmp = out / "state.tmp"
        torch.save(
            {
                "model": arm.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "log": log,
                "args": vars(args),
                "config": dcfg.to_dict(),
            },
            tmp,
        )
        os.replace(tmp, state)
        (out / "loss.json").write_text(json.dumps(log))

    t0, first, next_save = time.time(), step, time.time() + args.save_every
    # --minutes: a wall-clock budget for this process (a device call's chunk); the schedule follows
    # whichever of steps and time runs out first, so a budget-cut run still ends its cosine decay
    budget = args.minutes * 60 if args.minutes else math.inf
    while step < args.steps:
        prog = max(step / max(1, args.steps), (time.time() - t0) / budget)
        if prog >= 1:
            break
        for g in opt.param_groups:
            peak = args.lr if g["name"] == "base" else args.ref_lr
            warm = min(1.0, (step + 1) / 50) if g["name"] == "new" else 1.0
            g["lr"] = peak * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))
        idx, boxes, sig, nseed = batch_plan(args.seed, step, occ, args.batch, H, W)
        ti = torch.from_numpy(idx).to(device)
        x = to_window_tensor(x_all[ti], cfg)
        zc = torch.stack([z_all[int(i), :, b.top : b.bottom, b.left : b.right] for i, b in zip(idx, boxes)])
        xc = torch.stack([x[j, :, b.top * s : b.bottom * s, b.left * s : b.right * s] for j, b in enumerate(boxes)])
        gen = torch.Generator(device=device).manual_seed(nseed)
        noise = torch.randn(zc.shape, generator=gen, device=device)
        zc = zc + torch.as_tensor(sig, dtype=torch.float32, device=device)[:, None, None, None] * zc.std() * noise
        ref_x = refs[data["avatar"][ti.cpu()].to(device)]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            y = arm.decode_crops(zc, ref_x, boxes).float()
        w = avatar_weight(xc, args.avatar_boost)
        rec = weighted_l1(y, xc, w)
        edge = grad_l1(y, xc, w)
        loss = rec + args.edge_weight * edge
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(arm.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 10 == 0:
            log.append(
                {"step": step, "rec": float(rec.detach()), "edge": float(edge.detach()), "time": time.time() - t0}
            )
        if step % args.print_every == 0:
            print(
                f"[{out.name}] step {step} rec {float(rec.detach()):.4f} edge {float(edge.detach()):.4f} "
                f"{(time.time() - t0) / (step - first) * 1000:.0f} ms/step",
                flush=True,
            )
        if time.time() > next_save:
            save()
            next_save = time.time() + args.save_every
    save()
    print(f"[{out.name}] done at step {step}, {time.time() - t0:.0f}s this run", flush=True)


# --- evaluation ------------------------------------------------------------------------------


def load_run(name: str, cfg: TinyConfig, work: Path, ae: Path) -> Arm:
    """'init': the ae.pt decoder as it is; else the run folder --work/NAME's last state."""
    if name == "init":
        return build_arm("plain", cfg, ae, "ae").eval()
    st = torch.load(work / name / "state.pt", map_location="cpu")
    cfg = TinyConfig.from_dict(st["config"])  # the run's decoder size
    arm = Arm(st["args"]["arch"], cfg, RefDecConfig(radius=st["args"].get("radius", 3)))
    arm.load_state_dict(st["model"])
    return arm.eval()


@torch.no_grad()
def decode_heldout(arm: Arm, held: dict, cfg: TinyConfig) -> np.ndarray:
    """Every held-out frame's latents decoded on the whole grid: uint8 frames (N, 360, 640, 4)."""
    feats = {}
    if arm.arch == "ref":  # once per avatar, as a server caches it
        for a in range(len(held["names"])):
            feats[a] = RefFeatures.encode(arm.ref_enc, frames_to_tensor(held["refs"][a : a + 1], cfg), arm.rcfg.radius)
    out = []
    for i in range(len(held["z"])):
        y = arm.decode_full(held["z"][i : i + 1].float(), feats.get(int(held["avatar"][i])))
        out.append(tensor_to_frames(y, cfg).numpy())
    return np.concatenate(out)


def summarize(rows: list[dict]) -> dict:
    out = {}
    for g in ("builtin", "heldout", "all"):
        sel = [r for r in rows if g == "all" or r["group"] == g]
        out[g] = {k: round(float(np.mean([r[k] for r in sel])), 3) for k in SCORES} | {"n": len(sel)}
    return out


def evaluate(args) -> None:
    work, ae = Path(args.work), Path(args.ae)
    cfg = load_cfg(ae)
    held = torch.load(work / "heldout.pt")
    ref = held["frames"].numpy()
    res, decoded = {}, {}
    for name in args.runs.split(","):
        t0 = time.time()
        arm = load_run(name, cfg, work, ae)
        rec = decode_heldout(arm, held, cfg)
        decoded[name] = rec
        rows = [
            {"avatar": held["names"][int(a)], "group": group_of(held["names"][int(a)]), **frame_scores(r, g, h)}
            for r, g, h, a in zip(ref, rec, held["head"], held["avatar"])
        ]
        step = 0 if name == "init" else torch.load(work / name / "state.pt", map_location="cpu")["step"]
        res[name] = {
            "step": step,
            **summarize(rows),
            "per_avatar": {
                n: {k: round(float(np.mean([r[k] for r in rows if r["avatar"] == n])), 2) for k in SCORES[:3]}
                for n in held["names"]
            },
        }
        print(
            f"[eval] {name} (step {step}): {res[name]['builtin']} | {res[name]['heldout']} ({time.time() - t0:.0f}s)",
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    save_crops(out, ref, decoded, held)


def save_crops(out: Path, ref: np.ndarray, decoded: dict, held: dict, picks: int = 3) -> None:
    """1:1 head crops (and a body crop), renderer first then each run, for built-in and held-out avatars."""
    from PIL import Image

    bg = np.array([245, 240, 230], np.float32)

    def comp(f):
        a = f[..., 3:4].astype(np.float32) / 255
        return (f[..., :3] * a + bg * (1 - a)).astype(np.uint8)

    names = held["names"]
    for group in ("builtin", "heldout"):
        frames = [i for i in range(len(ref)) if group_of(names[int(held["avatar"][i])]) == group]
        chosen = frames[:: max(1, len(frames) // picks)][:picks]
        rows = []
        for i in chosen:
            hx0, hy0, hx1, hy1 = held["head"][i]
            cx, cy = int((hx0 + hx1) / 2), int((hy0 + hy1) / 2)
            h = 72  # 144 x 144 px around the head's centre
            y0, x0 = min(max(0, cy - h), ref.shape[1] - 2 * h), min(max(0, cx - h), ref.shape[2] - 2 * h)
            ys, xs = slice(y0, y0 + 2 * h), slice(x0, x0 + 2 * h)
            tiles = [comp(ref[i][ys, xs])] + [comp(d[i][ys, xs]) for d in decoded.values()]
            rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1))
        Image.fromarray(np.concatenate(rows, 0)).save(out / f"crops_{group}.png", optimize=True)


# --- CPU cost --------------------------------------------------------------------------------


@torch.no_grad()
def bench(args) -> None:
    """Per-frame decode time on this CPU (torch, --threads): plain vs reference decoder, crop and whole grid."""
    torch.set_num_threads(args.threads)
    cfg = load_cfg(Path(args.ae))
    H, W = cfg.latent_hw
    res = {"loadavg_start": open("/proc/loadavg").read().split()[:3], "threads": args.threads}
    arms = {a: Arm(a, cfg, RefDecConfig(radius=args.radius)).eval() for a in ("plain", "ref")}
    ref_x = torch.rand(1, 4, cfg.pad_height, cfg.window_width) * 2 - 1
    t0 = time.perf_counter()
    feats = RefFeatures.encode(arms["ref"].ref_enc, ref_x, arms["ref"].rcfg.radius)
    res["ref_encode_once_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    for label, box in (("crop_24x28", CellBox(12, 36, 14, 42)), ("full_48x56", CellBox(0, H, 0, W))):
        z = torch.randn(1, cfg.latent_channels, box.bottom - box.top, box.right - box.left)
        for a, arm in arms.items():
            run = (
                (lambda arm=arm, z=z: arm.dec(z))
                if a == "plain"
                else (lambda arm=arm, z=z, box=box: arm.dec(z, feats.window(box)))
            )
            for _ in range(2):
                run()
            ts = []
            for _ in range(args.reps):
                t = time.perf_counter()
                run()
                ts.append(time.perf_counter() - t)
            res[f"torch_{a}_{label}_ms"] = round(1000 * float(np.median(ts)), 1)
            res[f"ort_{a}_{label}_ms"] = ort_ms(
                arm.dec, (z,) if a == "plain" else (z, feats.window(box)), args.threads, args.reps
            )
    res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    print(json.dumps(res, indent=1))


class _Flat(nn.Module):
    """The reference decoder with its three maps as separate graph inputs (for the ONNX export)."""

    def __init__(self, dec: RefDecoder):
        super().__init__()
        self.dec = dec

    def forward(self, z, r8, r4, r2):
        return self.dec(z, (r8, r4, r2))


def ort_ms(dec: nn.Module, inputs: tuple, threads: int, reps: int) -> float:
    """Median ms of one decode with onnxruntime (the CPU serving backend), fixed shapes, fp32."""
    import tempfile

    import onnxruntime as ort

    flat = list(inputs[:1]) + list(inputs[1]) if len(inputs) > 1 else list(inputs)
    module = dec if len(inputs) == 1 else _Flat(dec)
    names = [f"in{i}" for i in range(len(flat))]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "dec.onnx")
        torch.onnx.export(
            module,
            tuple(flat),
            path,
            dynamo=False,
            input_names=names,
            output_names=["y"],
            opset_version=17,
            do_constant_folding=True,
        )
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {n: t.contiguous().numpy() for n, t in zip(names, flat)}
    for _ in range(2):
        sess.run(None, feeds)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        sess.run(None, feeds)
        ts.append(time.perf_counter() - t)
    return round(1000 * float(np.median(ts)), 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=("prep", "train", "eval", "bench"))
    ap.add_argument("--ae", default="/work/ckpt_v2", help="folder with an architecture-2 ae.pt and config.json")
    ap.add_argument("--work", default="/tmp/refdec")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--avatars", type=int, default=126, help="prep: training avatars (6 built-in + parametric)")
    ap.add_argument("--frames-per-avatar", type=int, default=8)
    ap.add_argument("--holdout-avatars", type=int, default=holdout.MAX_HOLDOUT)
    ap.add_argument("--heldout-per-avatar", type=int, default=8)
    ap.add_argument("--arch", default="ref", choices=("plain", "ref"))
    ap.add_argument("--name", default=None, help="run folder under --work (default: the arch)")
    ap.add_argument("--init", default="ae", choices=("ae", "scratch"), help="base decoder: ae.pt's or fresh")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--minutes", type=float, default=0.0, help="train: stop after this wall time (0: no limit)")
    ap.add_argument("--dec-channels", default=None, help="train: decoder channels, e.g. 96,48,24 (with --init scratch)")
    ap.add_argument("--dec-blocks", default=None, help="train: decoder blocks per level, e.g. 1,1,0")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4, help="base decoder")
    ap.add_argument("--ref-lr", type=float, default=5e-4, help="reference encoder, attention, fusion")
    ap.add_argument("--radius", type=int, default=3, help="reference cells searched each way (ref arch)")
    ap.add_argument(
        "--ref-encode",
        default="auto",
        choices=("auto", "full", "box"),
        help="train: reference encoding per step; auto: whole windows batched on the GPU, boxes on the CPU",
    )
    ap.add_argument("--edge-weight", type=float, default=0.5)
    ap.add_argument("--avatar-boost", type=float, default=4.0)
    ap.add_argument("--print-every", type=int, default=100)
    ap.add_argument("--save-every", type=float, default=120.0, help="seconds between checkpoints")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="prep: rendering processes")
    ap.add_argument("--runs", default="init,plain,ref")
    ap.add_argument("--out", default="docs/training/refdec")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"prep": prep, "train": train, "eval": evaluate, "bench": bench}[args.cmd](args)


if __name__ == "__main__":
    main()
