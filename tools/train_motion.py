"""Train architecture 3's decoder (engines/tiny/motion.py): frames from motion vectors and the reference.

    python -m tools.train_motion --work /tmp/avm --ckpt out/motion --minutes 15

The decoder learns to draw a frame of an avatar from the frame's motion vector
(engines/avatar_world/skeleton.py, read off the renderer's rig: the labels are exact) and the
avatar's reference frame. Losses: avatar-weighted L1 and edge losses on the frame (as the `ae`
stage of tools/train_tiny.py), plus the same L1 on the reference moved by the part masks alone at
a quarter of the size, which teaches the masks directly instead of only through the generator.
`--gan-weight W` adds a patch critic's term (tools/motion_critic.py): what an L1 loss leaves soft, a critic does not.
Resumable and time-boxed (`--minutes`); `motion.pt` holds the model, its EMA, the optimizer and
the step; `report.json` the held-out figures (tools/eval/holdout.py's frames: built-in avatars
at seeds no training uses and parametric avatars never trained on), scored as the fidelity eval
scores reconstructions (tools/eval/fidelity.py `frame_scores`); `samples.png` shows held-out
frames at 1:1, renderer above model.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avatarcast.engines.avatar_world import pose_at
from avatarcast.engines.avatar_world.reference import atlas_frames, canonical_pose, effect_sprites, expression_faces
from avatarcast.engines.avatar_world.render import render_frame, sequence_poses
from avatarcast.engines.avatar_world.skeleton import KEYPOINTS, MOTION_DIM, motion_vector
from avatarcast.engines.tiny.config import TinyConfig
from avatarcast.engines.tiny.effects import EffectLayer
from avatarcast.engines.tiny.model import tensor_to_rgba
from avatarcast.engines.tiny.motion import SHAPES, MotionDecoder, init_from, shape_from_dict, shape_to_dict
from tools.motion_critic import MotionCritic
from tools.train_tiny import (
    LossLog,
    avatar_by_id,
    avatar_weight,
    clip_specs,
    ema_update,
    grad_l1,
    n_avatars,
    save_small,
    save_strip,
    to_window_tensor,
    update_report,
    weighted_l1,
)

CFG = TinyConfig()  # the window and its padding: the same as architecture 2's


def _mv(avatar, pose) -> np.ndarray:
    return motion_vector(avatar, pose, CFG.window_x0, CFG.window_width, CFG.pad_top, CFG.pad_height)


def _window(frame: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(frame[:, CFG.window_x0 : CFG.window_x0 + CFG.window_width])


def _render_job(job) -> tuple[int, np.ndarray, np.ndarray]:
    """A worker: `per_clip` frames of one clip spec, at random frame indices; window frames and motions."""
    spec, per_clip, seed = job
    av = avatar_by_id(spec.avatar_id)
    poses, _ = sequence_poses(list(spec.segments), spec.seed, start_time=spec.start_time)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(poses), size=per_clip, replace=False)
    frames = np.stack([_window(render_frame(av, poses[i])) for i in pick])
    return spec.avatar_id, frames, np.stack([_mv(av, poses[i]) for i in pick])


def _ref_job(i: int) -> tuple[np.ndarray, np.ndarray]:
    av = avatar_by_id(i)
    q = canonical_pose()
    return _window(render_frame(av, q)), _mv(av, q)


def _atlas_job(i: int) -> np.ndarray:
    return np.stack([_window(f) for f in atlas_frames(avatar_by_id(i))])


def build_effects(args, device) -> list[EffectLayer]:
    """Every training avatar's effect sprites (engines/tiny/effects.py), laid over the decoder's output before
    the loss: the decoder is not asked to draw what the sprites draw. ~17 MB of uint8 an avatar, not on disk."""
    t0 = time.time()
    sprites = _drawn_sprites(n_avatars(args.random_avatars), args.workers)
    print(f"[motion] drew {len(sprites)} avatars' effect sprites in {time.time() - t0:.0f}s", flush=True)
    return [EffectLayer.in_window(s, CFG) for s in sprites]


_last_sprites: tuple[int, list] = (-1, [])


def _drawn_sprites(n: int, workers: int) -> list:
    """The first n avatars' sprites, drawn in a pool of `workers`. The last set is kept in memory: another run in the
    same process (the tests' short runs and resumes) draws the same avatars, and drawing them is most of a short run's
    time. Read only: EffectLayer lays them, never writes them."""
    global _last_sprites
    if _last_sprites[0] != n:
        _last_sprites = (-1, [])  # the old set goes before the new one is drawn
        with Pool(workers) as pool:
            _last_sprites = (n, pool.map(_sprites_job, range(n)))
    return _last_sprites[1]


def _sprites_job(i: int):
    return effect_sprites(avatar_by_id(i))


def build_atlas(args) -> np.ndarray:
    """Every training avatar's atlas faces as window frames, uint8 (avatars, K, H, window_W, 4), cached."""
    cache, kept = cached_npz(args.work, f"motion_atlas_faces_{args.random_avatars}.npz")  # no effects
    if kept is not None:
        return kept["atlas"]
    t0 = time.time()
    with Pool(args.workers) as pool:
        atlas = np.stack(pool.map(_atlas_job, range(n_avatars(args.random_avatars))))
    print(f"[motion] rendered {atlas.shape[0]} x {atlas.shape[1]} atlas faces in {time.time() - t0:.0f}s", flush=True)
    if not args.no_cache:
        np.savez(cache, atlas=atlas)
    return atlas


def atlas_tensor(atlas_win: torch.Tensor) -> torch.Tensor:
    """uint8 window frames (N, K, H, window_W, 4) -> the decoder's atlas input (N, K, 4, pad_H, window_W)."""
    N, K = atlas_win.shape[:2]
    x = to_window_tensor(atlas_win.reshape(N * K, *atlas_win.shape[2:]), CFG)
    return x.reshape(N, K, *x.shape[1:])


def cached_npz(work: str, name: str) -> tuple[Path, dict | None]:
    """The cache file under --work (created) and what it holds, or None if it is not there yet."""
    Path(work).mkdir(parents=True, exist_ok=True)
    cache = Path(work) / name
    if not cache.exists():
        return cache, None
    d = np.load(cache)
    return cache, {k: d[k] for k in d.files}


def build_pool(args) -> dict:
    """Rendered training frames (cached under --work): uint8 window frames, motions, avatar ids, references."""
    cache, kept = cached_npz(
        args.work, f"motion_pool_canonical_{args.random_avatars}_{args.variants}_{args.per_clip}.npz"
    )
    if kept is not None:
        return kept
    specs = clip_specs(args.random_avatars, args.variants, seed=3)
    jobs = [(s, args.per_clip, 1000 + i) for i, s in enumerate(specs)]
    t0 = time.time()
    n = len(specs) * args.per_clip
    frames = np.empty((n, CFG.height, CFG.window_width, 4), np.uint8)
    motions = np.empty((n, MOTION_DIM), np.float32)
    ids = np.empty((n,), np.int64)
    with Pool(args.workers) as pool:
        for j, (aid, f, m) in enumerate(pool.imap(_render_job, jobs, chunksize=8)):
            sl = slice(j * args.per_clip, (j + 1) * args.per_clip)
            frames[sl], motions[sl], ids[sl] = f, m, aid
        refs = pool.map(_ref_job, range(n_avatars(args.random_avatars)))
    print(f"[motion] rendered {n} frames and {len(refs)} references in {time.time() - t0:.0f}s", flush=True)
    out = {
        "frames": frames,
        "motions": motions,
        "ids": ids,
        "ref_frames": np.stack([r[0] for r in refs]),
        "ref_motions": np.stack([r[1] for r in refs]),
    }
    if not args.no_cache:
        np.savez(cache, **out)
    return out


def heldout(n_builtin: int = 6, n_holdout: int = 6, per_avatar: int = 11, sprites: bool = True) -> list[dict]:
    """The fidelity eval's held-out frames (its avatars, seeds and times), with their motions and references.

    `sprites=False` leaves out each avatar's effect sprites (the rows' "sprites", ~1 s an avatar to draw) for a
    caller that draws no effects (tools/motion_copy.py copy_margin reads the decoder's own outputs)."""
    from avatarcast.engines.avatar_world import sample_variation
    from avatarcast.engines.avatar_world.render import landmarks
    from tools.eval import holdout

    out = []
    for av in holdout.eval_avatars(n_builtin, n_holdout):
        ref_pose = canonical_pose()
        ref = _window(render_frame(av, ref_pose))
        atlas = np.stack([_window(f) for f in atlas_frames(av)])
        drawn = {"sprites": effect_sprites(av)} if sprites else {}
        for s in holdout.reconstruction_frames([av], per_avatar):
            q = pose_at(s.emotion, s.time, sample_variation(s.seed), s.intensity)
            out.append(
                {
                    "avatar": av.name,
                    "frame": render_frame(av, q),
                    "motion": _mv(av, q),
                    "ref": ref,
                    "atlas": atlas,
                    **drawn,
                    "ref_motion": _mv(av, ref_pose),
                    "head": landmarks(av, q).head,
                }
            )
    return out


def decode_frames(
    model: MotionDecoder, motions, ref_motions, refs_win, device, batch: int = 8, atlases=None, sprites=None
) -> np.ndarray:
    """Motions (N, D) and reference window frames (N, H, window_W, 4) (and, for a decoder that mixes atlas
    faces, each frame's atlas (N, K, H, window_W, 4); each frame's avatar's EffectSprites, laid over it as
    MotionEngine does) -> uint8 window frames (N, H, window_W, 4)."""
    outs = []
    layers: dict[int, EffectLayer] = {}  # one per avatar's sprites
    with torch.no_grad():
        for i in range(0, len(motions), batch):
            ref = to_window_tensor(torch.from_numpy(np.stack(refs_win[i : i + batch])).to(device), CFG)
            m = torch.from_numpy(np.stack(motions[i : i + batch])).to(device)
            rm = torch.from_numpy(np.stack(ref_motions[i : i + batch])).to(device)
            at = None
            if model.shape.atlas:
                at = atlas_tensor(torch.from_numpy(np.stack(atlases[i : i + batch])).to(device))
            y = model(m, rm, ref, model.encode_reference(ref), atlas=at).float().clamp(-1, 1)
            if sprites is not None:
                rows = []
                for j in range(len(y)):
                    sp = sprites[i + j]
                    layer = layers.setdefault(id(sp), EffectLayer.in_window(sp, CFG))
                    rows.append(layer.over(y[j : j + 1], m[j : j + 1]))
                y = torch.cat(rows)
            outs.append(tensor_to_rgba(y[:, :, CFG.pad_top : CFG.pad_top + CFG.height]).cpu().numpy())
    return np.concatenate(outs)


def decode_rows(model: MotionDecoder, rows: list[dict], device) -> np.ndarray:
    """heldout()'s rows drawn from their true motion: uint8 window frames (N, H, window_W, 4)."""
    return decode_frames(
        model,
        [r["motion"] for r in rows],
        [r["ref_motion"] for r in rows],
        [r["ref"] for r in rows],
        device,
        atlases=[r["atlas"] for r in rows],
        sprites=[r["sprites"] for r in rows],
    )


def evaluate(model: MotionDecoder, device, ck: Path, n_builtin: int = 6, n_holdout: int = 6) -> dict:
    from tools.eval.fidelity import frame_scores

    rows = heldout(n_builtin, n_holdout)
    rec = decode_rows(model, rows, device)
    x0, x1 = CFG.window_x0, CFG.window_x0 + CFG.window_width
    scores = []
    for r, g in zip(rows, rec):
        full = np.zeros_like(r["frame"])
        full[:, x0:x1] = g
        scores.append({"avatar": r["avatar"], **frame_scores(r["frame"], full, r["head"])})
    builtin = [s for s in scores if not s["avatar"].startswith("random")]
    unseen = [s for s in scores if s["avatar"].startswith("random")]

    def mean(rows, k):
        return round(float(np.mean([s[k] for s in rows])), 2) if rows else None

    rep = {
        k: {"builtin": mean(builtin, k), "heldout_avatars": mean(unseen, k)}
        for k in ("avatar_psnr_db", "head_psnr_db", "avatar_ssim", "alpha_iou")
    }
    rep["frames"] = len(scores)
    # 1:1 strip: one frame per avatar, renderer above the model
    pick = list(range(0, len(rows), max(1, len(rows) // 12)))[:12]
    top = np.concatenate([rows[i]["frame"][:, x0:x1] for i in pick[:6]], 1)
    bot = np.concatenate([rec[i] for i in pick[:6]], 1)
    top2 = np.concatenate([rows[i]["frame"][:, x0:x1] for i in pick[6:12]], 1)
    bot2 = np.concatenate([rec[i] for i in pick[6:12]], 1)
    save_strip(ck / "samples.png", [top, bot] + ([top2, bot2] if len(pick) == 12 else []))
    return rep


def head_crops(model: MotionDecoder, device, path: Path, per_group: int = 4) -> None:
    """1:1 head crops of held-out frames: renderer | the shipped model's autoencoder | this decoder, for the
    first per_group built-in and held-out avatars, over the render command's background."""
    from PIL import Image

    from avatarcast.engines.tiny.engine import TinyEngine
    from tools.eval.crops import composite

    rows = [
        r for i, r in enumerate(heldout(per_group, per_group, per_avatar=11)) if i % 11 in (1, 4, 7)
    ]  # listening, surprised, laughing
    ours = decode_rows(model, rows, device)
    shipped = TinyEngine.load()
    x0 = CFG.window_x0
    tiles = []
    for r, g in zip(rows, ours):
        ae = shipped.decode(shipped.backend.encode(r["frame"][None]))[0]
        full = np.zeros_like(r["frame"])
        full[:, x0 : x0 + CFG.window_width] = g
        bx0, by0, bx1, by1 = (int(round(v)) for v in r["head"])
        by0, bx0 = max(0, by0), max(0, bx0)
        crop = [composite(f)[by0:by1, bx0:bx1] for f in (r["frame"], ae, full)]
        h = min(c.shape[0] for c in crop)
        tiles.append(np.concatenate([c[:h] for c in crop], 1))
    H = max(t.shape[0] for t in tiles)
    W = max(t.shape[1] for t in tiles)
    canvas = np.full((H * len(tiles) // 3 + 8 * (len(tiles) // 3), 3 * W + 16, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, 3)
        canvas[r * (H + 8) : r * (H + 8) + t.shape[0], c * (W + 8) : c * (W + 8) + t.shape[1]] = t
    Image.fromarray(canvas).save(path)


def load_decoder(path: Path, device) -> tuple[MotionDecoder, int]:
    """The EMA decoder a run kept (motion_ema.pt), in the shape it was trained in, and its step."""
    st = torch.load(path, map_location=device)
    model = MotionDecoder(shape_from_dict(st.get("shape"))).to(device)
    model.load_state_dict(st["ema"])
    return model, int(st["step"])


def eval_only(args) -> None:
    """Held-out figures and samples.png of the kept EMA weights (motion_ema.pt), as a run's end writes them."""
    device = torch.device(args.device)
    ck = Path(args.ckpt)
    model, step = load_decoder(ck / "motion_ema.pt", device)
    rep = evaluate(model.eval(), device, ck, n_builtin=args.eval_avatars, n_holdout=args.eval_avatars)
    rep["step"] = step
    update_report(ck, "motion", rep)
    print("[motion] held-out", json.dumps(rep), flush=True)
    if args.head_crops:
        head_crops(model.eval(), device, ck / "head_crops.png")


def train(args) -> None:
    device = torch.device(args.device)
    ck = Path(args.ckpt)
    ck.mkdir(parents=True, exist_ok=True)
    data = build_pool(args)
    frames = torch.from_numpy(data["frames"]).to(device)
    motions = torch.from_numpy(data["motions"]).to(device)
    ids = torch.from_numpy(data["ids"]).to(device)
    ref_frames = torch.from_numpy(data["ref_frames"]).to(device)
    ref_motions = torch.from_numpy(data["ref_motions"]).to(device)
    path = ck / "motion.pt"
    shape = SHAPES[args.shape]
    if args.atlas:
        shape = dataclasses.replace(shape, atlas=len(expression_faces()))
    if args.residual:
        shape = dataclasses.replace(shape, residual=True)
    if path.exists() or (ck / "motion_ema.pt").exists():  # a resumed run keeps the shape it started with
        kept = torch.load(path if path.exists() else ck / "motion_ema.pt", map_location="cpu").get("shape")
        shape = shape_from_dict(kept)
    model = MotionDecoder(shape).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    step = 0
    critic = None
    if args.gan_weight > 0:
        critic = MotionCritic(device, weight=args.gan_weight, lr=args.d_lr, r1=args.r1, warmup=args.d_warmup)
    if path.exists():
        st = torch.load(path, map_location=device)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        if "opt" in st:
            opt.load_state_dict(st["opt"])
        if critic is not None and "critic" in st:  # without it (a run that had none) the critic starts fresh
            critic.load_state_dict(st["critic"])
        step = st["step"]
        print(f"[motion] resumed at step {step}", flush=True)
    elif (ck / "motion_ema.pt").exists():  # a kept checkpoint (tools/ckpt) holds the EMA weights only
        st = torch.load(ck / "motion_ema.pt", map_location=device)
        model.load_state_dict(st["ema"])
        ema.load_state_dict(st["ema"])
        step = st["step"]
        print(f"[motion] started from the kept EMA weights at step {step}", flush=True)
    elif args.init_from:  # another run's weights; what this shape adds (atlas mix, residual) starts fresh, at step 0
        st = torch.load(args.init_from, map_location=device)
        # the half-size tail from the full-size one (init_from); a narrower 1/2 size starts fresh; a quarter tail
        # (and any narrower level) fresh, what matches loaded
        other_end = shape.half_tail or shape.quarter_tail
        if other_end:
            missing, unexpected = init_from(model, st["ema"]), []
        else:
            missing, unexpected = model.load_state_dict(st["ema"], strict=False)
        if unexpected or (not other_end and any(not k.startswith(("atlas_", "res.")) for k in missing)):
            raise SystemExit(f"--init-from {args.init_from}: other layers (missing {missing}, unexpected {unexpected})")
        ema.load_state_dict(model.state_dict())
        print(f"[motion] initialized from {args.init_from} (its step {st['step']}); new: {missing}", flush=True)
    atlas_all = torch.from_numpy(build_atlas(args)).to(device) if shape.atlas else None
    teacher = None
    if args.teacher and args.distill_weight > 0:  # a decoder whose frames the student also matches (frozen)
        tst = torch.load(args.teacher, map_location="cpu")
        teacher = MotionDecoder(shape_from_dict(tst.get("shape"))).to(device)
        teacher.load_state_dict({k: v.float() for k, v in tst["ema"].items()})
        teacher.eval().requires_grad_(False)
        if teacher.shape.atlas != shape.atlas:
            raise SystemExit(f"--teacher {args.teacher}: atlas {teacher.shape.atlas}, the student's {shape.atlas}")
        print(f"[motion] distilling from {args.teacher} (its step {tst.get('step')}), weight {args.distill_weight}")
    effects = build_effects(args, device)
    log = LossLog(ck / "motion_loss.json")
    gen = torch.Generator(device="cpu").manual_seed(1234 + step)
    t0 = time.time()
    deadline = t0 + args.minutes * 60
    local = 0
    use_bf16 = device.type == "cuda"

    def save() -> None:
        kept = {"step": step, "shape": shape_to_dict(shape)}
        full = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), **kept}
        if critic is not None:
            full["critic"] = critic.state_dict()
        save_small(full, path)
        save_small({"ema": ema.state_dict(), **kept}, ck / "motion_ema.pt")

    last_save = time.time()
    by_avatar = [torch.nonzero(ids == a).flatten() for a in range(len(ref_frames))]
    by_avatar = [t for t in by_avatar if len(t)]
    per = max(1, args.batch // args.avatars_per_batch)
    H, W = CFG.pad_height, CFG.window_width
    while time.time() < deadline or local < args.min_steps:
        # a few avatars a step, several frames each: the reference encoder runs once per avatar
        picks = torch.randint(0, len(by_avatar), (args.avatars_per_batch,), generator=gen).tolist()
        idx = torch.cat(
            [by_avatar[a][torch.randint(0, len(by_avatar[a]), (per,), generator=gen).to(device)] for a in picks]
        )
        aid = ids[idx]
        avatar_u = ids[torch.stack([by_avatar[a][0] for a in picks])]  # the picked avatars' ids
        ref_u = to_window_tensor(ref_frames[avatar_u], CFG)
        feats_u = None
        box = None
        m, rm = motions[idx], ref_motions[aid]
        face_px = _face_px(m, H, W)  # (B, 3): each frame's face centre and head radius in window pixels
        if args.crop:  # a random crop over the band the avatars stand in, in multiples of 8 pixels
            ch = min(args.crop, H)
            cw = min(args.crop, W)
            if float(torch.rand((), generator=gen)) < args.face_crops:
                # centred on one frame's face: expressions are small and the L1 of a whole crop barely sees them
                fx, fy = (float(v) for v in face_px[0, :2])
                y0 = 8 * int(round(min(max(fy - ch / 2, 0), H - ch) / 8))
                x0 = 8 * int(round(min(max(fx - cw / 2, 0), W - cw) / 8))
            else:
                y0 = 8 * int(torch.randint(0, (H - ch) // 8 + 1, (1,), generator=gen))
                x0 = 8 * int(
                    torch.randint(
                        max(0, (W // 2 - 160) // 8), (min(W - cw, W // 2 + 160 - cw)) // 8 + 1, (1,), generator=gen
                    )
                )
            box = (y0, x0, ch, cw)
        x = to_window_tensor(frames[idx], CFG)
        if box is not None:
            x = x[:, :, box[0] : box[0] + box[2], box[1] : box[1] + box[3]]
        lr = args.lr * min(1.0, (step + 1) / 300)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            feats_u = model.encode_reference(ref_u)
            rep = torch.arange(len(picks), device=device).repeat_interleave(per)
            ref = ref_u[rep]
            feats = tuple(f[rep] for f in feats_u)
            atlas = None
            if atlas_all is not None:
                atlas = atlas_tensor(atlas_all[avatar_u])[rep]
            y, parts = model(m, rm, ref, feats, box=box, return_parts=True, atlas=atlas)
            y_t = None
            if teacher is not None:
                with torch.no_grad():
                    t_feats = tuple(f[rep] for f in teacher.encode_reference(ref_u))
                    y_t = teacher(m, rm, ref, t_feats, box=box, atlas=atlas).float()
        y_raw = y.float()
        # each avatar's effects over its frames, as served (MotionEngine draws them so)
        y = torch.cat(
            [
                effects[int(a)].over(
                    y[i * per : (i + 1) * per].float(), m[i * per : (i + 1) * per], (box or (0, 0))[:2]
                )
                for i, a in enumerate(avatar_u.tolist())
            ]
        )
        w = avatar_weight(x, args.avatar_boost)
        if args.face_boost != 1.0:
            w = w * _face_weight(face_px, box or (0, 0, H, W), args.face_boost)
        rec = weighted_l1(y, x, w)
        edge = grad_l1(y, x, w)
        # the masks alone: the reference moved by the mixed grid, at 1/4, against the frame at 1/4
        x4 = F.avg_pool2d(x, 4)
        moved4 = (F.grid_sample(parts["ref4"] + 1, parts["grid4"], align_corners=False)) * parts["vis4"] - 1
        w4 = avatar_weight(x4, args.avatar_boost)
        mask_l = weighted_l1(moved4, x4, w4)
        loss = rec + args.edge_weight * edge + args.mask_weight * mask_l
        extra: dict[str, torch.Tensor] = {}
        if y_t is not None:  # the teacher's frame before the effects (the same sprites go over both)
            distill = weighted_l1(y_raw, y_t, w) + args.edge_weight * grad_l1(y_raw, y_t, w)
            loss = loss + args.distill_weight * distill
            extra["distill"] = distill.detach()
        if critic is not None and critic.active:
            # scaled to the frame losses' gradient at the last layer that draws the frame (the mask loss does not
            # reach it): the residual where there is one, since a saturated copy mask passes none to /out
            last = model.last_layer.weight
            g_term, lam = critic.generator_term(y, rec + args.edge_weight * edge, last)
            loss = loss + g_term
            extra["gan_lam"] = lam
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if critic is not None:
            extra["d_hinge"], extra["d_r1"] = critic.step(x, y.detach())
        ema_update(ema, model, args.ema if step > 500 else 0.9)
        step += 1
        local += 1
        log.tick("motion", step, local, t0, rec=rec.detach(), edge=edge.detach(), mask=mask_l.detach(), **extra)
        if time.time() - last_save > args.save_every:
            save()
            log.save()
            last_save = time.time()
    save()
    log.save()
    print(f"[motion] {local} steps this run, {step} in all, {(time.time() - t0) / max(1, local) * 1000:.0f} ms/step")
    if not args.no_eval:
        rep = evaluate(ema.eval(), device, ck)
        rep["step"] = step
        update_report(ck, "motion", rep)
        print("[motion] held-out", json.dumps(rep), flush=True)


_FACE = KEYPOINTS.index("face")
_HEAD = (KEYPOINTS.index("head_centre"), KEYPOINTS.index("head_up"))


def _face_px(motions: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, 3) the face keypoint in window pixels (x, y) and the head's radius in pixels, from motion vectors
    (window coordinates with pixel edges at -1 and 1)."""
    kp = motions[:, : 2 * len(KEYPOINTS)].reshape(-1, len(KEYPOINTS), 2).float()
    scale = torch.tensor([W / 2.0, H / 2.0], device=motions.device)
    px = (kp + 1.0) * scale
    r = (px[:, _HEAD[1]] - px[:, _HEAD[0]]).norm(dim=-1, keepdim=True)
    return torch.cat([px[:, _FACE], r], 1)


def _face_weight(face_px: torch.Tensor, box: tuple[int, int, int, int], boost: float) -> torch.Tensor:
    """(B, 1, h, w): `boost` inside each frame's head disc (1.2 head radii around the face), 1 elsewhere."""
    y0, x0, h, w = box
    dev = face_px.device
    yy = torch.arange(h, device=dev, dtype=torch.float32).view(1, h, 1) + y0 + 0.5
    xx = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, w) + x0 + 0.5
    fx, fy, r = (face_px[:, i].view(-1, 1, 1) for i in range(3))
    inside = ((xx - fx) ** 2 + (yy - fy) ** 2) <= (1.2 * r) ** 2
    return (1.0 + (boost - 1.0) * inside.float()).unsqueeze(1)


def add_run_arguments(ap: argparse.ArgumentParser, minutes: float, random_avatars: int) -> None:
    """The arguments every architecture-3 training script takes: where, how long, on which clips."""
    ap.add_argument("--work", default="/tmp/avm", help="cache of rendered frames and motion clips")
    ap.add_argument("--ckpt", required=True, help="checkpoint folder (resumes from it)")
    ap.add_argument("--minutes", type=float, default=minutes)
    ap.add_argument(
        "--random-avatars", type=int, default=random_avatars, help="parametric training avatars (+6 built-in)"
    )
    ap.add_argument("--variants", type=int, default=2, help="clip variants per avatar and emotion")
    ap.add_argument("--workers", type=int, default=os.cpu_count())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(ap, minutes=10.0, random_avatars=294)
    ap.add_argument("--per-clip", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="default", help="a new run's decoder channels")
    ap.add_argument("--avatars-per-batch", type=int, default=2)
    ap.add_argument("--crop", type=int, default=0, help="train on random crops this many pixels wide (multiple of 8)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--avatar-boost", type=float, default=4.0)
    ap.add_argument("--atlas", action="store_true", help="a new run's decoder also copies the atlas faces")
    ap.add_argument("--residual", action="store_true", help="a new run's decoder adds a drawn correction (MotionShape)")
    ap.add_argument("--init-from", default="", help="start from this motion_ema.pt (a new shape's extra layers fresh)")
    ap.add_argument("--face-boost", type=float, default=1.0, help="loss weight inside each frame's head disc")
    ap.add_argument("--face-crops", type=float, default=0.0, help="share of crops centred on a frame's face")
    ap.add_argument("--edge-weight", type=float, default=0.5)
    ap.add_argument("--mask-weight", type=float, default=1.0)
    ap.add_argument("--gan-weight", type=float, default=0.0, help="patch critic term (tools/motion_critic.py)")
    ap.add_argument("--d-lr", type=float, default=2e-4, help="the critic's learning rate")
    ap.add_argument("--r1", type=float, default=1.0, help="the critic's R1 penalty on real crops")
    ap.add_argument("--d-warmup", type=int, default=300, help="critic-only steps before the decoder sees its term")
    ap.add_argument("--teacher", default="", help="a kept motion_ema.pt whose frames the decoder also matches")
    ap.add_argument("--distill-weight", type=float, default=0.0, help="weight of --teacher's L1 and edge terms")
    ap.add_argument("--save-every", type=float, default=120.0, help="seconds between checkpoints")
    ap.add_argument("--min-steps", type=int, default=1)
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--eval-only", action="store_true", help="score the kept EMA weights and stop")
    ap.add_argument("--head-crops", action="store_true", help="also head_crops.png (--eval-only)")
    ap.add_argument("--eval-avatars", type=int, default=6, help="built-in and held-out avatars each (--eval-only)")
    ap.add_argument("--no-cache", action="store_true", help="do not write the rendered pool to --work")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    eval_only(args) if args.eval_only else train(args)


if __name__ == "__main__":
    main()
