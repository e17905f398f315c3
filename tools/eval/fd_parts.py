"""What architecture 3's Frechet distance (FD) to the renderer is made of: motion, or drawing.

    python -m tools.eval.fd_parts --weights engines/tiny/weights/motion_residual --seeds 2 --out DIR
        # the fidelity eval's 220 clips a set: 11.5 min on 2 cores (--seeds 1: 110 clips, about 6 min)
    python -m tools.eval.fd_parts --motion-only --seeds 2 [--warmup N] [--steps N] [--intensity X] --out DIR
        # the motion statistics alone, nothing drawn: 20-90 s
    python -m tools.eval.fd_parts --seeds 2 --warmup 6 --sets floor,served --out DIR   # the served FD only, ~6 min

(On the shared machine, under `flock /work/locks/bench.lock`.) Findings: docs/training/motion.md, "Where the
Frechet distance comes from".

The fidelity eval (tools/eval/fidelity.py, generation) scores FD(served clips, renderer clips) over its
floor FD(renderer clips at other seeds, the same renderer clips), in the eval classifier's clip features.
Here every (avatar, emotion, seed) of that eval (the same held-out avatars, emotions and seeds, the same
features) gives one 16-frame clip to each of these sets, all scored against the same renderer clips `ref`:

* ``floor``      (a) the renderer at other seeds (the eval's floor);
* ``dec_true``   (c) the motion decoder drawing the renderer's true motion (the floor clip's, as the
                 eval's reconstruction draws it): the decoder alone;
* ``served``     (d) the served engine: the decoder drawing the denoiser's sampled motion (the eval's
                 model clips, the same seeds and calls as ``MotionEngine.generate_clip``);
* ``rend_gen``   (b) the renderer drawing the denoiser's motion: the motion vector is keypoints plus the
                 pose's face and effect fields and the effects' clock (engines/avatar_world/skeleton.py),
                 so the renderer cannot draw it as it is. The face and effect fields are the pose's own;
                 the clock's time is the one whose sin/cos fit best; the body pose (15 angles and offsets,
                 no IK) is fitted to the keypoints by least squares (scipy), frame by frame;
* ``rend_fit_true`` the same fit and drawing applied to the true motion (of the floor clips): what the fit
                 itself costs (should sit at the floor);
* ``rend_gen_body`` the renderer with the denoiser's body (fitted) and the true face, effects and clock;
* ``rend_gen_face`` the renderer with the true body and the denoiser's face, effects and clock.

It also writes motion statistics (the denoiser's raw motion against the true motion of the floor clips,
per emotion and per keypoint: amplitude, speed, acceleration, spectrum, the mean pose's offset, the face
fields) and FDs computed on the motion vectors themselves (single frames, frame-to-frame velocities and
per-clip summaries, in the denoiser's normalization). Writes report.json and report.md to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from avatarcast.engines.avatar_world import EMOTIONS, Pose, render_frame
from avatarcast.engines.avatar_world.render import clip_poses
from avatarcast.engines.avatar_world.skeleton import (
    EXPR_OFFSET,
    FACE_FIELDS,
    FX_FIELDS,
    FX_FREQUENCIES,
    KEYPOINTS,
    LIMB_BONES,
    MOTION_DIM,
    N_POINTS,
    keypoints_px,
)
from tools.eval import fidelity_metrics as fm
from tools.eval import holdout
from tools.eval.classifier import ClipBatcher, load_classifier
from tools.eval.fidelity import scored_engine

BODY_FIELDS = (
    "body_dx", "lift", "squash", "body_tilt", "head_tilt", "head_dx", "head_dy",
    "arm_l_sh", "arm_l_el", "arm_r_sh", "arm_r_el", "leg_l_hip", "leg_l_knee", "leg_r_hip", "leg_r_knee",
)  # fmt: skip
BODY_SCALE = np.array([5, 5, 0.05, 3, 3, 3, 3, 10, 10, 10, 10, 10, 10, 10, 10], np.float64)  # fit's x_scale
SETS = ("floor", "dec_true", "served", "rend_gen", "rend_fit_true", "rend_gen_body", "rend_gen_face")
KP_GROUPS = {
    "torso": ("pelvis", "torso_centre", "torso_side"),
    "head": ("head_centre", "head_up", "face", "face_up"),
    "arms": ("shoulder_l", "shoulder_r", "elbow_l", "elbow_r", "hand_l", "hand_r"),
    "legs": ("hip_l", "hip_r", "knee_l", "knee_r", "ankle_l", "ankle_r"),
    "ground": ("ground", "ground_side"),
}


# --------------------------------------------------------------------------------------
# motion vector -> renderer pose
# --------------------------------------------------------------------------------------
_GRID = np.arange(0.0, 40.0, 0.002)
_GRID_SC = np.concatenate(
    [np.stack([np.sin(2 * math.pi * f * _GRID), np.cos(2 * math.pi * f * _GRID)], 1) for f in FX_FREQUENCIES], 1
)  # (G, 14): the clock's layout in the motion vector


def clock_time(clock: np.ndarray) -> float:
    """The effects' time whose sin/cos at FX_FREQUENCIES are nearest the motion's clock part (14,)."""
    return float(_GRID[int(np.argmax(_GRID_SC @ clock))])


def pose_from_expression(m: np.ndarray, body: Pose) -> Pose:
    """`body`'s body fields with the face and effect fields and clock of the raw motion `m` (D,)."""
    q = Pose(**{f.name: getattr(body, f.name) for f in fields(Pose)})
    e = m[EXPR_OFFSET:]
    for i, n in enumerate(FACE_FIELDS + FX_FIELDS):
        setattr(q, n, float(e[i]))
    q.fx_time = clock_time(e[len(FACE_FIELDS) + len(FX_FIELDS) :])
    return q


def _with_body(q: Pose, x: np.ndarray) -> Pose:
    q = Pose(**{f.name: getattr(q, f.name) for f in fields(Pose)})
    for n, v in zip(BODY_FIELDS, x):
        setattr(q, n, float(v))
    for side in ("l", "r"):
        setattr(q, f"ik_{side}_w", 0.0)
    return q


def fit_body(avatar, target_px: np.ndarray, face: Pose, inits: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Body fields (15,) whose keypoints (frame pixels) come nearest `target_px` (N_POINTS, 2), the face fields
    taken from `face`; the best of `inits`. Returns them and the mean keypoint error in pixels."""
    from scipy.optimize import least_squares

    def res(x):
        return (keypoints_px(avatar, _with_body(face, x)) - target_px).ravel()

    best = None
    for x0 in inits:
        r = least_squares(res, x0, x_scale=BODY_SCALE, diff_step=1e-4, max_nfev=60, method="trf")
        if best is None or r.cost < best.cost:
            best = r
    err = float(np.linalg.norm(best.fun.reshape(-1, 2), axis=1).mean())
    return best.x, err


def body_vec(q: Pose) -> np.ndarray:
    return np.array([getattr(q, n) for n in BODY_FIELDS], np.float64)


# --------------------------------------------------------------------------------------
# clips
# --------------------------------------------------------------------------------------
def served_clip(
    engine, avatar, emotion: str, n: int, seed: int, draw: bool = True, warmup: int = 1, intensity: float = 1.0
) -> tuple:
    """engine.generate_clip(avatar, emotion, n, seed) (`warmup` chunks from rest skipped, the eval's 1), with its
    raw motion (n, D); frames None where not `draw`."""
    st = engine.start_stream(avatar, emotion, intensity, seed)
    for _ in range(warmup):
        engine.sample_chunks([st])
    frames, motion = [], []
    while sum(len(m) for m in motion) < n:
        lat = engine.sample_chunks([st])
        if draw:
            frames.append(engine.decode_chunks([st], lat)[0])
        motion.append(lat[0].reshape(-1, MOTION_DIM) * engine.std + engine.mean)
    return (np.concatenate(frames)[:n] if draw else None), np.concatenate(motion)[:n]


def window_to_px(engine, m: np.ndarray) -> np.ndarray:
    """Raw motions (..., D) -> keypoints in frame pixels (..., N_POINTS, 2) (skeleton.to_window inverted)."""
    w = engine.window
    kp = m[..., :EXPR_OFFSET].reshape(*m.shape[:-1], N_POINTS, 2).astype(np.float64)
    x = (kp[..., 0] + 1.0) * 0.5 * w.window_width + w.window_x0
    y = (kp[..., 1] + 1.0) * 0.5 * w.pad_height - w.pad_top
    return np.stack([x, y], -1)


def fitted_poses(engine, avatar, m: np.ndarray, true_q: list[Pose]) -> tuple[list[Pose], list[np.ndarray], float]:
    """Renderer poses of raw motions (n, D): face/effects/clock as they are, the body fitted to the keypoints
    (the first frame from the best of four true poses of the clip, then from the frame before). Also the
    fitted body vectors and the mean keypoint error (px)."""
    px = window_to_px(engine, m)
    out, bodies, errs = [], [], []
    prev = None
    for i in range(len(m)):
        face = pose_from_expression(m[i], true_q[0])
        inits = [prev] if prev is not None else [body_vec(true_q[j]) for j in range(0, len(true_q), 4)]
        x, err = fit_body(avatar, px[i], face, inits)
        prev = x
        out.append(_with_body(face, x))
        bodies.append(x)
        errs.append(err)
    return out, bodies, float(np.mean(errs))


# --------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------
def fd_parts_of(x: np.ndarray, y: np.ndarray) -> dict:
    """FD, with its mean term |mu_x - mu_y|^2 and the rest (the covariances')."""
    fd = fm.frechet_distance(x, y)
    mean = float(((x.mean(0) - y.mean(0)) ** 2).sum())
    return {"fd": fd, "mean_term": mean, "cov_term": fd - mean}


def motion_stats(px: np.ndarray) -> dict:
    """Per-clip keypoint statistics of clips (C, T, N_POINTS, 2) in pixels, averaged over clips: temporal std,
    speed |dx|/frame, acceleration |d2x|/frame^2, each (N_POINTS,); spectrum (T//2+1,) of the detrended
    trajectories' power, summed over keypoints."""
    amp = px.std(1).mean(-1)  # (C, N)
    v = np.linalg.norm(np.diff(px, axis=1), axis=-1)  # (C, T-1, N)
    a = np.linalg.norm(np.diff(px, 2, axis=1), axis=-1)
    t = np.arange(px.shape[1])
    c = px - px.mean(1, keepdims=True)
    slope = (c * (t - t.mean())[None, :, None, None]).sum(1, keepdims=True) / ((t - t.mean()) ** 2).sum()
    c = c - slope * (t - t.mean())[None, :, None, None]
    spec = (np.abs(np.fft.rfft(c, axis=1)) ** 2).sum((2, 3))  # (C, F)
    return {"amp": amp.mean(0), "speed": v.mean((0, 1)), "acc": a.mean((0, 1)), "spectrum": spec.mean(0)}


def bone_len(px: np.ndarray, a: str, b: str) -> np.ndarray:
    return np.linalg.norm(px[..., KEYPOINTS.index(a), :] - px[..., KEYPOINTS.index(b), :], axis=-1)


def clip_summary(mn: np.ndarray) -> np.ndarray:
    """Normalized motion clips (C, T, D) -> per-clip summary features: time mean, time std, mean |velocity|."""
    return np.concatenate([mn.mean(1), mn.std(1), np.abs(np.diff(mn, axis=1)).mean(1)], 1)


# --------------------------------------------------------------------------------------
def run(args, log=print) -> dict:
    torch.set_num_threads(1)
    from avatarcast.realtime.settings import Settings

    steps = args.steps if args.steps is not None else Settings().steps  # the serving default, as the eval's
    engine, _, wpath = scored_engine(args.weights, "motion", steps=steps, threads=args.threads)
    pix = not args.motion_only
    clf = load_classifier()
    avatars = holdout.eval_avatars(args.n_builtin, args.n_holdout)
    emotions = tuple(args.emotions.split(",")) if args.emotions else EMOTIONS
    n = 16
    sets = [s for s in SETS if (args.fit or not s.startswith("rend_")) and pix]
    if args.sets:
        sets = [s for s in sets if s in ("floor", "served", *args.sets.split(","))]  # the rend_ sets go together
    clips = {k: ClipBatcher(clf) for k in ("ref", *sets)}
    keys, mot = [], {"gen": [], "true": [], "ref": []}
    fit_err = {"gen": [], "true": []}
    t0 = time.time()

    def add(k, clip):
        if clip.shape != (n, 360, 640, 4) or clip.dtype != np.uint8:
            raise ValueError(f"{k}: clip {clip.shape} {clip.dtype}")
        clips[k].add(clip)

    for av in avatars:
        for e in emotions:
            for s in range(args.seeds):
                key = (av.name, e, s)
                sr = holdout.heldout_seed("gen-ref", *key, args.rerun)
                sf = holdout.heldout_seed("gen-floor", *key, args.rerun)
                q_ref, q_true = clip_poses(e, n, sr, args.intensity), clip_poses(e, n, sf, args.intensity)
                m_true = np.stack([engine.motion(av, q) for q in q_true])
                noise = holdout.heldout_seed("gen-noise", *key, args.rerun)
                g, m_gen = served_clip(engine, av, e, n, noise, draw=pix, warmup=args.warmup, intensity=args.intensity)
                if pix:
                    add("ref", np.stack([render_frame(av, q) for q in q_ref]))
                    add("floor", np.stack([render_frame(av, q) for q in q_true]))
                    if "dec_true" in sets:
                        add("dec_true", engine.draw(av, m_true))
                    add("served", g)
                if "rend_gen" in sets:
                    qg, bg, eg = fitted_poses(engine, av, m_gen, q_true)
                    qt, _, et = fitted_poses(engine, av, m_true, q_true)
                    fit_err["gen"].append(eg)
                    fit_err["true"].append(et)
                    add("rend_gen", np.stack([render_frame(av, q) for q in qg]))
                    add("rend_fit_true", np.stack([render_frame(av, q) for q in qt]))
                    # the denoiser's body with the true face/effects/clock, and the other way round
                    body = [pose_from_expression(mt, _with_body(qt_i, b)) for mt, qt_i, b in zip(m_true, q_true, bg)]
                    add("rend_gen_body", np.stack([render_frame(av, q) for q in body]))
                    face = [pose_from_expression(mg, qt_i) for mg, qt_i in zip(m_gen, q_true)]
                    add("rend_gen_face", np.stack([render_frame(av, q) for q in face]))
                keys.append(key)
                mot["gen"].append(m_gen)
                mot["true"].append(m_true)
                mot["ref"].append(np.stack([engine.motion(av, q) for q in q_ref]))
        log(f"  {av.name} done, {time.time() - t0:.0f} s")
    for b in clips.values():
        b.flush()
    F = {k: np.stack(b.feats) for k, b in clips.items() if b.feats}
    L = {k: np.stack(b.logits) for k, b in clips.items() if b.logits}
    emo_of = np.array([EMOTIONS.index(k[1]) for k in keys])
    res: dict = {
        "weights": wpath,
        "steps": engine.steps,
        "warmup_chunks": args.warmup,
        "intensity": args.intensity,
        "n_clips": len(keys),
        "avatars": [a.name for a in avatars],
        "emotions": list(emotions),
        "seeds": args.seeds,
        "rerun": args.rerun,
    }
    if pix:
        classifier_space(res, F, L, sets, emo_of, emotions)
    if "rend_gen" in sets:
        res["fit_error_px"] = {k: float(np.mean(v)) for k, v in fit_err.items()}
    motion_part(res, engine, mot, emo_of, emotions)
    res["seconds"] = round(time.time() - t0, 1)
    return res


def classifier_space(res, F, L, sets, emo_of, emotions) -> None:
    """FD (mean and covariance terms) per set, per emotion the mean features' distance, emotion accuracy."""
    fd = {k: fd_parts_of(F[k], F["ref"]) for k in sets}
    floor = fd["floor"]["fd"]
    for k in sets:
        fd[k]["over_floor"] = fd[k]["fd"] / floor
    # the floor at half the clips (every other clip of each set): how much of it is sampling
    fd["floor_half"] = fd_parts_of(F["floor"][::2], F["ref"][::2])
    fd["served_half"] = fd_parts_of(F["served"][::2], F["ref"][::2])
    res["fd"] = fd
    res["per_emotion_mean_dist"] = {
        e: {k: float(((F[k][emo_of == i].mean(0) - F["ref"][emo_of == i].mean(0)) ** 2).sum()) for k in sets}
        for i, e in ((EMOTIONS.index(e), e) for e in emotions)
    }
    res["emotion_accuracy"] = {k: float((L[k].argmax(1) == emo_of).mean()) for k in ("ref", *sets)}
    res["emotion_accuracy_per_emotion"] = {
        e: {k: float((L[k][emo_of == EMOTIONS.index(e)].argmax(1) == EMOTIONS.index(e)).mean()) for k in ("ref", *sets)}
        for e in emotions
    }


def motion_part(res, engine, mot, emo_of, emotions) -> None:
    """The denoiser's motion against the true motion: FDs on motion vectors, statistics per emotion."""
    M = {k: np.stack(v) for k, v in mot.items()}  # (C, T, D) raw
    Mn = {k: (v - engine.mean) / engine.std for k, v in M.items()}
    res["motion_fd"] = {
        what: {k: fd_parts_of(f(Mn[k]), f(Mn["ref"])) for k in ("gen", "true")}
        for what, f in (
            ("frames", lambda x: x.reshape(-1, MOTION_DIM)),
            ("frames_keypoints", lambda x: x[..., :EXPR_OFFSET].reshape(-1, EXPR_OFFSET)),
            ("frames_face_fx", lambda x: x[..., EXPR_OFFSET:].reshape(-1, MOTION_DIM - EXPR_OFFSET)),
            ("velocities", lambda x: np.diff(x, axis=1).reshape(-1, MOTION_DIM)),
            ("clip_summary", clip_summary),
            ("clip_summary_keypoints", lambda x: clip_summary(x[..., :EXPR_OFFSET])),
        )
    }
    P = {k: window_to_px(engine, v) for k, v in M.items()}
    per_emo = {}
    for e in emotions:
        sel = emo_of == EMOTIONS.index(e)
        st = {k: motion_stats(P[k][sel]) for k in P}
        row = {}
        for k in ("gen", "ref"):
            row[k] = {
                "amp_ratio": float(st[k]["amp"].mean() / st["true"]["amp"].mean()),
                "speed_ratio": float(st[k]["speed"].mean() / st["true"]["speed"].mean()),
                "acc_ratio": float(st[k]["acc"].mean() / st["true"]["acc"].mean()),
                "spectrum_ratio": (st[k]["spectrum"] / st["true"]["spectrum"]).tolist(),
                # power of the detrended trajectories at 0.5-1.5 Hz and at 2-4 Hz (16 frames at 8 fps)
                "low_power_ratio": float(st[k]["spectrum"][1:4].sum() / st["true"]["spectrum"][1:4].sum()),
                "high_power_ratio": float(st[k]["spectrum"][4:].sum() / st["true"]["spectrum"][4:].sum()),
                # the mean pose's offset from the true clips' mean (px, mean over keypoints)
                "mean_offset_px": float(
                    np.linalg.norm(P[k][sel].mean((0, 1)) - P["true"][sel].mean((0, 1)), axis=-1).mean()
                ),
                "group_amp_ratio": {
                    g: float(
                        st[k]["amp"][[KEYPOINTS.index(p) for p in ps]].mean()
                        / st["true"]["amp"][[KEYPOINTS.index(p) for p in ps]].mean()
                    )
                    for g, ps in KP_GROUPS.items()
                },
                "group_speed_ratio": {
                    g: float(
                        st[k]["speed"][[KEYPOINTS.index(p) for p in ps]].mean()
                        / st["true"]["speed"][[KEYPOINTS.index(p) for p in ps]].mean()
                    )
                    for g, ps in KP_GROUPS.items()
                },
                "keypoint_amp_ratio": {
                    p: float(st[k]["amp"][i] / max(st["true"]["amp"][i], 1e-6)) for i, p in enumerate(KEYPOINTS)
                },
                # the mean pose's offset per keypoint as (dx, dy) px, +y down
                "keypoint_mean_offset_xy": {
                    p: [round(float(v), 2) for v in P[k][sel].mean((0, 1))[i] - P["true"][sel].mean((0, 1))[i]]
                    for i, p in enumerate(KEYPOINTS)
                },
                # limb lengths, mean over clips and frames, over the true motion's (1 = the avatar's own)
                "bone_ratio": {
                    f"{a}-{b}": float(bone_len(P[k][sel], a, b).mean() / bone_len(P["true"][sel], a, b).mean())
                    for a, b in LIMB_BONES
                },
                "keypoint_mean_offset_px": {
                    p: float(np.linalg.norm(P[k][sel].mean((0, 1))[i] - P["true"][sel].mean((0, 1))[i]))
                    for i, p in enumerate(KEYPOINTS)
                },
                # face/effect fields: the mean's offset and the std ratio, in the denoiser's normalization units
                "expr_offset": {
                    nm: float(Mn[k][sel][..., EXPR_OFFSET + i].mean() - Mn["true"][sel][..., EXPR_OFFSET + i].mean())
                    for i, nm in enumerate(FACE_FIELDS + FX_FIELDS)
                },
                "expr_time_std_ratio": {
                    nm: float(
                        M[k][sel][..., EXPR_OFFSET + i].std(1).mean()
                        / max(M["true"][sel][..., EXPR_OFFSET + i].std(1).mean(), 1e-6)
                    )
                    for i, nm in enumerate(FACE_FIELDS + FX_FIELDS)
                },
            }
        row["true_amp_px"] = float(st["true"]["amp"].mean())
        row["true_keypoint_amp_px"] = {p: float(st["true"]["amp"][i]) for i, p in enumerate(KEYPOINTS)}
        row["true_speed_px"] = float(st["true"]["speed"].mean())
        row["true_spectrum"] = st["true"]["spectrum"].tolist()
        per_emo[e] = row
    res["motion_per_emotion"] = per_emo


def classifier_markdown(res: dict) -> list[str]:
    fd, sets = res["fd"], [k for k in SETS if k in res["fd"]]
    L = [
        "| set | FD | / floor | mean term | cov term | emotion acc |",
        "|---|---|---|---|---|---|",
    ]
    for k in sets:
        d = fd[k]
        L.append(
            f"| {k} | {d['fd']:.2f} | {d['over_floor']:.2f} | {d['mean_term']:.2f} | {d['cov_term']:.2f} | "
            f"{100 * res['emotion_accuracy'][k]:.0f}% |"
        )
    L.append(f"| ref (itself) | | | | | {100 * res['emotion_accuracy']['ref']:.0f}% |")
    L += [
        "",
        f"Half the clips: floor {fd['floor_half']['fd']:.2f}, served {fd['served_half']['fd']:.2f} "
        f"({fd['served_half']['fd'] / fd['floor_half']['fd']:.2f}x).",
    ]
    if "fit_error_px" in res:
        L.append(
            f"Body fit's mean keypoint error: denoiser motion {res['fit_error_px']['gen']:.2f} px, "
            f"true motion {res['fit_error_px']['true']:.2f} px."
        )
    L += ["", "Per emotion: |mean feature - ref's|^2 (classifier space), and emotion accuracy", ""]
    L.append("| emotion | " + " | ".join(sets) + " | acc ref / floor / served |")
    L.append("|---" * (len(sets) + 2) + "|")
    for e, row in res["per_emotion_mean_dist"].items():
        a = res["emotion_accuracy_per_emotion"][e]
        L.append(
            f"| {e} | "
            + " | ".join(f"{row[k]:.1f}" for k in sets)
            + f" | {100 * a['ref']:.0f} / {100 * a['floor']:.0f} / {100 * a['served']:.0f}% |"
        )
    return L


def markdown(res: dict) -> str:
    L = [
        f"## FD parts: `{res['weights']}`, {res.get('steps', 2)} sampler steps, "
        f"{res.get('warmup_chunks', 1)} warm-up chunks, intensity {res.get('intensity', 1.0)}, "
        f"{res['n_clips']} clips a set",
        "",
    ]
    if "fd" in res:
        L += classifier_markdown(res)
    mf = res["motion_fd"]
    L += ["", "Motion FD (normalized motion vectors; against the ref clips' true motion)", "",
          "| features | true, other seeds | denoiser | ratio |", "|---|---|---|---|"]  # fmt: skip
    for what, d in mf.items():
        L.append(f"| {what} | {d['true']['fd']:.2f} | {d['gen']['fd']:.2f} | {d['gen']['fd'] / d['true']['fd']:.2f} |")
    L += ["", "Denoiser motion / true motion (other seeds), per emotion (keypoints in pixels)", "",
          "| emotion | true amp px | amp | speed | acc | power 0.5-1.5 Hz | power 2-4 Hz | mean offset px | arms amp |"
          " legs amp | head amp | torso amp | worst keypoint moving > 1 px (amp ratio) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for e, row in res["motion_per_emotion"].items():
        g = row["gen"]
        moving = [kv for kv in g["keypoint_amp_ratio"].items() if row.get("true_keypoint_amp_px", {}).get(kv[0], 2) > 1]
        worst = max(moving or [("-", 1.0)], key=lambda kv: abs(math.log(max(kv[1], 1e-6))))
        L.append(
            f"| {e} | {row['true_amp_px']:.1f} | {g['amp_ratio']:.2f} ({row['ref']['amp_ratio']:.2f}) | "
            f"{g['speed_ratio']:.2f} ({row['ref']['speed_ratio']:.2f}) | {g['acc_ratio']:.2f} | "
            f"{g['low_power_ratio']:.2f} | {g['high_power_ratio']:.2f} ({row['ref']['high_power_ratio']:.2f}) | "
            f"{g['mean_offset_px']:.1f} ({row['ref']['mean_offset_px']:.1f}) | "
            + " | ".join(f"{g['group_amp_ratio'][k]:.2f}" for k in ("arms", "legs", "head", "torso"))
            + f" | {worst[0]} {worst[1]:.2f} |"
        )
    L += ["", "(in brackets: the renderer's ref clips / true, the same statistic's sampling spread)", ""]
    L.append(f"{res['seconds']:.0f} s.")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="engines/tiny/weights/motion_residual", help="architecture 3's folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-builtin", type=int, default=6)
    ap.add_argument("--n-holdout", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=1, help="clips per (avatar, emotion); the fidelity eval's is 2")
    ap.add_argument("--emotions", default="", help="comma-separated (default: all)")
    ap.add_argument("--rerun", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the server's)")
    ap.add_argument("--warmup", type=int, default=1, help="chunks from rest skipped (the fidelity eval's: 1)")
    ap.add_argument("--intensity", type=float, default=1.0, help="the emotion's intensity (the eval's: 1)")
    ap.add_argument("--motion-only", action="store_true", help="the motion statistics only: nothing drawn")
    ap.add_argument("--sets", default="", help="comma-separated sets beside floor and served (default: all)")
    ap.add_argument("--no-fit", dest="fit", action="store_false", help="skip the renderer-drawn sets (b)")
    args = ap.parse_args(argv)
    res = run(args, log=lambda m: print(m, file=sys.stderr, flush=True))
    res["command"] = "python -m tools.eval.fd_parts " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (out / "report.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
