"""The latents cache: the first chunk of every (avatar, emotion, variant) reaction, ready to play.

Each entry holds the chunk's latents, its decoded frames and the stream context after it, so a
reaction starts with a lookup and the sampler then carries on from the cached chunk. Entries
live in memory and as one .npz per entry on disk, keyed by a hash of everything that shapes
them (weights, template, avatar, sampler steps, seed, format), so a restart or a second
replica reuses them and any change misses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatarcast.engines.contract import StreamEngine
from avatarcast.engines.tiny.engine import avatar_cache_key
from avatarcast.templates import EmotionTemplate, template_hash

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    return Path("~/.cache/avatarcast/latents").expanduser()


@dataclass(frozen=True)
class CachedReaction:
    """The first chunk of a reaction: latents (T,C,H,W) f16, frames (T,360,640,4) u8 (4T with wan), ctx (K*C,H,W)."""

    latents: np.ndarray
    frames: np.ndarray
    ctx: np.ndarray
    key: str


def variant_seed(emotion: str, variant: int) -> int:
    """The sampling seed of a cached variant; differs across emotions so variants do not share noise."""
    return int.from_bytes(hashlib.sha256(f"{emotion}/{variant}".encode()).digest()[:4], "little")


def reaction_key(
    weights_hash: str, template_hash_: str, avatar_key: str, steps: int, seed: int, fmt: int = CACHE_FORMAT
) -> str:
    """The cache key: sha256 over everything that changes the cached chunk."""
    blob = json.dumps(
        {
            "weights": weights_hash,
            "template": template_hash_,
            "avatar": avatar_key,
            "steps": int(steps),
            "seed": int(seed),
            "format": int(fmt),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class LatentsCache:
    """First reaction chunks per (avatar, emotion, variant), computed in batches, kept on disk."""

    def __init__(
        self, engine: StreamEngine, templates: dict[str, EmotionTemplate], cache_dir: str | Path | None = None
    ):
        self.engine = engine
        self.templates = dict(templates)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._mem: dict[str, CachedReaction] = {}
        self._lock = threading.Lock()  # guards _mem
        self._compute_lock = threading.Lock()  # one sampling run at a time; engines are not re-entrant

    # -- keys -----------------------------------------------------------------------------
    def template(self, emotion: str) -> EmotionTemplate:
        t = self.templates.get(emotion)
        if t is None:
            raise ValueError(f"no template for emotion {emotion!r}; known: {', '.join(self.templates)}")
        self.engine.emotion_index(emotion)  # the engine must know it too
        return t

    def key(self, avatar, emotion: str, variant: int = 0) -> str:
        t = self.template(emotion)
        return reaction_key(
            self.engine.weights_hash,
            template_hash(t),
            avatar_cache_key(avatar),
            self.engine.steps,
            variant_seed(emotion, variant),
        )

    def path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.npz"

    # -- public API -----------------------------------------------------------------------
    def precompute(
        self,
        avatars: Iterable,
        emotions: Iterable[str] | None = None,
        variants: int | None = None,
        batch: int = 8,
        on_computed: Callable[[int, int], object] | None = None,
    ) -> dict:
        """Makes sure every (avatar, emotion, variant) is in memory: disk first, then batched sampling.

        variants=None takes each template's own count; on_computed(done, to compute) follows the sampling.
        Returns counts and seconds.
        """
        t0 = time.perf_counter()
        emotions = list(self.templates) if emotions is None else list(emotions)
        jobs: list[tuple[Any, str, int, str]] = []
        for avatar in avatars:
            for emotion in emotions:
                n = self.template(emotion).variants if variants is None else int(variants)
                jobs.extend((avatar, emotion, v, self.key(avatar, emotion, v)) for v in range(n))
        stats: dict[str, float] = {"entries": len(jobs), "in_memory": 0, "loaded": 0, "computed": 0}
        with self._compute_lock:
            todo, seen = [], set()
            for job in jobs:
                key = job[3]
                if key in seen:
                    continue
                seen.add(key)
                with self._lock:
                    hit = key in self._mem
                if hit:
                    stats["in_memory"] += 1
                elif (entry := self._load(key)) is not None:
                    self._remember(entry)
                    stats["loaded"] += 1
                else:
                    todo.append(job)
            batch = max(1, int(batch))
            for i in range(0, len(todo), batch):
                for entry in self._compute(todo[i : i + batch]):
                    self._remember(entry)
                stats["computed"] += len(todo[i : i + batch])
                if on_computed is not None:
                    on_computed(int(stats["computed"]), len(todo))
        stats["seconds"] = round(time.perf_counter() - t0, 3)
        return stats

    def get(self, avatar, emotion: str, variant: int = 0) -> CachedReaction:
        """The cached first chunk; loads or computes it on a miss. Thread-safe."""
        key = self.key(avatar, emotion, variant)
        with self._lock:
            entry = self._mem.get(key)
        if entry is not None:
            return entry
        with self._compute_lock:
            with self._lock:
                entry = self._mem.get(key)
            if entry is None:
                entry = self._load(key)
                if entry is None:
                    entry = self._compute([(avatar, emotion, variant, key)])[0]
                self._remember(entry)
        return entry

    def lookup(self, avatar, emotion: str, variant: int = 0) -> CachedReaction | None:
        """The cached first chunk if it is in memory, else None: never loads or computes (safe on an event loop)."""
        key = self.key(avatar, emotion, variant)
        with self._lock:
            return self._mem.get(key)

    def start_from_cache(self, avatar, emotion: str, variant: int = 0, seed: int = 0):
        """(cached frames, StreamState) where the state continues right after the cached chunk."""
        entry = self.get(avatar, emotion, variant)
        t = self.template(emotion)
        state = self.engine.start_stream(avatar, emotion, t.default_intensity, seed, ctx=entry.ctx)
        state.frames_done = len(entry.frames)
        state.meta["cache_key"] = entry.key
        return entry.frames, state

    def forget(self, avatar, delete_files: bool = False) -> int:
        """Drop every entry of `avatar` from memory (and its files with delete_files); how many were in memory."""
        keys = [self.key(avatar, e, v) for e, t in self.templates.items() for v in range(t.variants)]
        with self._lock:
            n = sum(self._mem.pop(k, None) is not None for k in keys)
        if delete_files:
            for k in keys:
                self.path(k).unlink(missing_ok=True)
        return n

    def __len__(self) -> int:
        with self._lock:
            return len(self._mem)

    # -- internals ------------------------------------------------------------------------
    def _remember(self, entry: CachedReaction) -> None:
        with self._lock:
            self._mem[entry.key] = entry

    def _compute(self, jobs: list[tuple]) -> list[CachedReaction]:
        """One sample_chunks and one decode for the whole batch, each stream starting at rest."""
        eng = self.engine
        states = [
            eng.start_stream(avatar, emotion, self.template(emotion).default_intensity, variant_seed(emotion, variant))
            for avatar, emotion, variant, _ in jobs
        ]
        lat = eng.sample_chunks(states).astype(np.float16)
        # decode what is stored, so the cached frames are exactly the frames of the cached latents
        per = list(eng.decode_chunks(states, lat.astype(np.float32)))
        out = []
        for i, ((_, emotion, variant, key), st) in enumerate(zip(jobs, states)):
            entry = CachedReaction(lat[i], per[i], st.ctx.astype(np.float32), key)
            meta = {
                "key": key,
                "format": CACHE_FORMAT,
                "emotion": emotion,
                "variant": variant,
                "avatar": st.avatar_key,
                "steps": eng.steps,
                "weights": eng.weights_hash,
            }
            self._save(entry, meta)
            out.append(entry)
        return out

    def _save(self, entry: CachedReaction, meta: dict) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{entry.key[:16]}-", suffix=".tmp")
            try:
                # level 1: about 40% of the raw size at a fraction of the default level's write time
                with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
                    arrays = {
                        "latents": entry.latents,
                        "frames": entry.frames,
                        "ctx": entry.ctx,
                        "meta": np.array(json.dumps(meta, sort_keys=True)),
                    }
                    for name, a in arrays.items():
                        with z.open(name + ".npy", "w", force_zip64=True) as member:
                            # not np.ascontiguousarray: it turns the 0-d meta string into a 1-d array
                            np.lib.format.write_array(
                                member, a if a.flags.c_contiguous else a.copy(), allow_pickle=False
                            )
                os.chmod(tmp, 0o644)  # mkstemp makes it 0600; replicas may run as another user
                os.replace(tmp, self.path(entry.key))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            # a read-only or full disk costs restarts, not this process: keep serving from memory
            log.warning("latents cache: could not write %s: %s", self.path(entry.key), e)

    def _load(self, key: str) -> CachedReaction | None:
        p = self.path(key)
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"][()]))
                latents, frames, ctx = z["latents"], z["frames"], z["ctx"]
            cfg = self.engine.cfg
            T, C, K = cfg.chunk_frames, cfg.latent_channels, cfg.context_frames
            H, W = cfg.latent_hw
            n_frames = self.engine.capabilities.frames_per_chunk  # wan: 4 video frames per latent frame
            problems = [
                meta.get("key") != key and "key mismatch",
                meta.get("format") != CACHE_FORMAT and "format mismatch",
                (latents.dtype != np.float16 or latents.shape != (T, C, H, W))
                and f"latents {latents.dtype}{latents.shape}",
                (frames.dtype != np.uint8 or frames.shape != (n_frames, cfg.height, cfg.width, 4))
                and f"frames {frames.dtype}{frames.shape}",
                (ctx.dtype != np.float32 or ctx.shape != (K * C, H, W)) and f"ctx {ctx.dtype}{ctx.shape}",
                not (np.isfinite(latents).all() and np.isfinite(ctx).all()) and "non-finite values",
            ]
            found = [str(p_) for p_ in problems if p_]
            if found:
                raise ValueError("; ".join(found))
        # a partial/corrupt file is a miss: it gets recomputed and rewritten
        except (OSError, EOFError, KeyError, TypeError, ValueError, zipfile.BadZipFile, zlib.error) as e:
            log.warning("latents cache: ignoring unreadable entry %s (%s: %s); recomputing", p, type(e).__name__, e)
            return None
        return CachedReaction(latents, frames, ctx, key)


__all__ = ["CACHE_FORMAT", "CachedReaction", "LatentsCache", "default_cache_dir", "reaction_key", "variant_seed"]
