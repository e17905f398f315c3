"""Sharded dataset of avatar-world clips.

Layout of ``out_dir``::

    manifest.json      DATA_VERSION, emotions, counts, arguments, shard list
    avatars.json       list of AvatarParams dicts, index = avatar id
    shard-00000.npz    frames (N,T,H,W,4) uint8 RGBA, labels (N,T) int64 per-frame emotion index,
                       avatar_id (N,) int64, intensity (N,) float32, seed (N,) int64,
                       plus emotion (N,) int64 (the clip's final emotion) and
                       switch_frame (N,) int64 (first frame of the final emotion, 0 if no switch)

Avatars are ``BUILTIN_AVATARS`` (ids 0..5) followed by ``random_avatar(seed + k)``.
Every avatar x emotion x variant gives one clip.  All random choices come from
a per-clip seed derived from (seed, avatar id, emotion, variant), and the clip
order/sharding is fixed in the parent process, so the output does not depend
on the number of workers.

CLI: ``python -m tools.avatar_world.dataset --out DIR [--random-avatars N --variants V --frames T --workers W]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatarcast.engines.avatar_world.avatars import BUILTIN_AVATARS, AvatarParams, random_avatar
from avatarcast.engines.avatar_world.render import render_sequence
from avatarcast.realtime.progress import add_quiet_flag
from avatarcast.realtime.progress import bar as progress_bar
from avatarcast.vocabulary import EMOTIONS, FPS, FRAME_HEIGHT, FRAME_WIDTH

# v2 (2026-12-06): the mouth's corners drawn once (render._draw_mouth), not as a spiked bow-tie
DATA_VERSION = "avatar-world-v2"
SHARD_ARRAYS = ("frames", "labels", "avatar_id", "intensity", "seed", "emotion", "switch_frame")


@dataclass(frozen=True)
class ClipSpec:
    avatar_id: int
    emotion: int
    variant: int
    seed: int
    intensity: float
    start_time: float
    segments: tuple  # ((emotion name, n_frames, intensity), ...)
    switch_frame: int


def _clip_seed(seed: int, avatar_id: int, emotion: int, variant: int) -> int:
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, avatar_id, emotion, variant, 0xDA7A])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def plan_clips(n_avatars: int, variants: int, clip_frames: int, seed: int, switch_fraction: float) -> list[ClipSpec]:
    """All clips, in their (shuffled, deterministic) dataset order."""
    specs = []
    for aid in range(n_avatars):
        for ei, emo in enumerate(EMOTIONS):
            for v in range(variants):
                cs = _clip_seed(seed, aid, ei, v)
                rng = np.random.default_rng(cs)
                inten = float(np.float32(rng.uniform(0.5, 1.0)))
                start = float(rng.uniform(0.0, 20.0))
                do_switch = rng.random() < switch_fraction
                segs: tuple = ((emo, clip_frames, inten),)
                switch = 0
                if do_switch and clip_frames >= 14:
                    others = [e for e in EMOTIONS if e != emo]
                    first = others[int(rng.integers(len(others)))]
                    switch = int(rng.integers(6, clip_frames - 8 + 1))
                    segs = ((first, switch, float(rng.uniform(0.5, 1.0))), (emo, clip_frames - switch, inten))
                specs.append(ClipSpec(aid, ei, v, cs, inten, start, segs, switch))
    order = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5B0F]).permutation(len(specs))
    return [specs[i] for i in order]


# worker state (set by the pool initializer, or directly when running in-process)
_AVATARS: list[AvatarParams] = []


def _init_worker(avatar_dicts: list[dict]) -> None:
    global _AVATARS
    _AVATARS = [AvatarParams.from_dict(d) for d in avatar_dicts]


def _render_shard(job: tuple[str, list[ClipSpec], int]) -> dict:
    path, specs, clip_frames = job
    n = len(specs)
    frames = np.zeros((n, clip_frames, FRAME_HEIGHT, FRAME_WIDTH, 4), np.uint8)
    labels = np.zeros((n, clip_frames), np.int64)
    for i, sp in enumerate(specs):
        fr, lab = render_sequence(
            _AVATARS[sp.avatar_id], list(sp.segments), seed=sp.seed, fps=FPS, start_time=sp.start_time
        )
        frames[i] = fr
        labels[i] = lab
    arrays = dict(
        frames=frames,
        labels=labels,
        avatar_id=np.array([s.avatar_id for s in specs], np.int64),
        intensity=np.array([s.intensity for s in specs], np.float32),
        seed=np.array([s.seed for s in specs], np.int64),
        emotion=np.array([s.emotion for s in specs], np.int64),
        switch_frame=np.array([s.switch_frame for s in specs], np.int64),
    )
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return {"file": os.path.basename(path), "n_clips": n, "bytes": os.path.getsize(path)}


def write_dataset(
    out_dir,
    *,
    n_random_avatars: int = 26,
    variants: int = 6,
    clip_frames: int = 24,
    seed: int = 0,
    workers: int | None = os.cpu_count(),
    switch_fraction: float = 0.35,
    clips_per_shard: int = 16,
    progress: bool = False,
) -> dict:
    """Render the dataset into ``out_dir``; returns (and writes) the manifest."""
    if clip_frames < 1 or variants < 1 or n_random_avatars < 0 or clips_per_shard < 1:
        raise ValueError("clip_frames, variants, clips_per_shard must be >= 1 and n_random_avatars >= 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    avatars = list(BUILTIN_AVATARS) + [random_avatar(seed + k) for k in range(n_random_avatars)]
    avatar_dicts = [a.to_dict() for a in avatars]
    specs = plan_clips(len(avatars), variants, clip_frames, seed, switch_fraction)
    jobs = [
        (str(out / f"shard-{i // clips_per_shard:05d}.npz"), specs[i : i + clips_per_shard], clip_frames)
        for i in range(0, len(specs), clips_per_shard)
    ]
    (out / "avatars.json").write_text(json.dumps(avatar_dicts, indent=1))
    t0 = time.time()
    results = []
    workers = max(1, int(workers or 1))
    if workers == 1 or len(jobs) == 1:
        _init_worker(avatar_dicts)
        it = map(_render_shard, jobs)
        pool = None
    else:
        pool = multiprocessing.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(avatar_dicts,))
        it = pool.imap(_render_shard, jobs)
    bar = progress_bar(total=len(jobs), desc="dataset", unit="shard", quiet=not progress)
    try:
        for k, res in enumerate(it):
            results.append(res)
            bar.update()
            if progress and bar.disable:  # a log, not a terminal: a line per shard
                el = time.time() - t0
                print(
                    f"[avatar_world] shard {k + 1}/{len(jobs)} {res['file']} ({el:.0f}s, "
                    f"eta {el / (k + 1) * (len(jobs) - k - 1):.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    label_counts = np.zeros(len(EMOTIONS), np.int64)
    for sp in specs:
        for emo, n, _ in sp.segments:
            label_counts[EMOTIONS.index(emo)] += n
    manifest = {
        "data_version": DATA_VERSION,
        "emotions": list(EMOTIONS),
        "fps": FPS,
        "width": FRAME_WIDTH,
        "height": FRAME_HEIGHT,
        "n_avatars": len(avatars),
        "n_builtin_avatars": len(BUILTIN_AVATARS),
        "n_clips": len(specs),
        "clip_frames": clip_frames,
        "n_frames": len(specs) * clip_frames,
        "n_switch_clips": sum(1 for s in specs if s.switch_frame > 0),
        "label_frame_counts": {e: int(c) for e, c in zip(EMOTIONS, label_counts)},
        "n_shards": len(jobs),
        "shards": results,
        "arrays": list(SHARD_ARRAYS),
        "args": {
            "n_random_avatars": n_random_avatars,
            "variants": variants,
            "clip_frames": clip_frames,
            "seed": seed,
            "switch_fraction": switch_fraction,
            "clips_per_shard": clips_per_shard,
        },
        "seconds": round(time.time() - t0, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def iter_shards(out_dir) -> Iterator[dict]:
    """Yield one dict of arrays per shard, in shard order."""
    out = Path(out_dir)
    man = out / "manifest.json"
    if man.exists():
        files = [out / s["file"] for s in json.loads(man.read_text())["shards"]]
    else:
        files = sorted(out.glob("shard-*.npz"))
    for f in files:
        with np.load(f) as z:
            yield {k: z[k] for k in z.files}


def load_avatars(out_dir) -> list[AvatarParams]:
    return [AvatarParams.from_dict(d) for d in json.loads((Path(out_dir) / "avatars.json").read_text())]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Render the avatar-world emotion dataset.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--random-avatars", type=int, default=26)
    ap.add_argument("--variants", type=int, default=6)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--switch-fraction", type=float, default=0.35)
    ap.add_argument("--clips-per-shard", type=int, default=16)
    add_quiet_flag(ap)
    a = ap.parse_args(argv)
    m = write_dataset(
        a.out,
        n_random_avatars=a.random_avatars,
        variants=a.variants,
        clip_frames=a.frames,
        seed=a.seed,
        workers=a.workers,
        switch_fraction=a.switch_fraction,
        clips_per_shard=a.clips_per_shard,
        progress=not a.quiet,
    )
    print(json.dumps({k: m[k] for k in ("data_version", "n_avatars", "n_clips", "n_frames", "n_shards", "seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
