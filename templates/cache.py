"""The latents cache: the first chunk of every (avatar, emotion, variant) reaction, ready to play.

Each entry holds the chunk's latents, its decoded frames and the stream context after it, so a
reaction starts with a lookup and the sampler then carries on from the cached chunk. Entries
live in memory and as one .npz per entry in an artefact store (a directory by default, any fsspec
URL with --artifact-url), keyed by a hash of everything that shapes them (weights, template,
avatar, sampler steps, seed, format), so a restart or a second replica reuses them and any change
misses. A `BuildIndex` (Redis with --redis-url: realtime/latents_index.py) lets processes on
several machines build each entry once and find where it was published.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from avatarcast.artifacts import ArtifactError, ArtifactNotFound, ArtifactStore, FsspecStore, fetch
from avatarcast.engines.contract import StreamEngine
from avatarcast.engines.tiny.engine import avatar_cache_key
from avatarcast.templates import EmotionTemplate, template_hash

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: the renderer draws at 4x (render.SS, 2026-12-07), so avatars' reference frames changed
POLL_S = 0.1  # how often a process waiting for another one's entry looks for it


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


class BuildIndex(Protocol):
    """Which process builds which entry, and where finished entries live. One process: `LocalIndex`; gateways
    on several machines share one in Redis (realtime/latents_index.py). Calls never raise: an index that cannot
    be reached answers None / True, and this process builds on its own."""

    def where(self, weights: str, key: str) -> str | None:
        """The artefact URL another process published for the entry, or None."""
        ...

    def claim(self, weights: str, key: str) -> bool:
        """True: build the entry here; False: another process is building it (its claim lapses if it dies)."""
        ...

    def publish(self, weights: str, key: str, url: str, meta: dict) -> None: ...

    def release(self, weights: str, key: str) -> None: ...


class LocalIndex:
    """The BuildIndex of one process: nothing is published elsewhere, every claim is granted (the cache's
    compute lock already makes this process build an entry once)."""

    def where(self, weights: str, key: str) -> str | None:
        return None

    def claim(self, weights: str, key: str) -> bool:
        return True

    def publish(self, weights: str, key: str, url: str, meta: dict) -> None:
        return None

    def release(self, weights: str, key: str) -> None:
        return None


class LatentsCache:
    """First reaction chunks per (avatar, emotion, variant), computed in batches, kept in an artefact store."""

    def __init__(
        self,
        engine: StreamEngine,
        templates: dict[str, EmotionTemplate],
        cache_dir: str | Path | None = None,
        store: ArtifactStore | None = None,
        index: BuildIndex | None = None,
    ):
        """store: where entries live (default: a directory, cache_dir); index: who builds what (default: local)."""
        self.engine = engine
        self.templates = dict(templates)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.store: ArtifactStore = store if store is not None else FsspecStore(self.cache_dir)
        self.index: BuildIndex = index if index is not None else LocalIndex()
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

    @staticmethod
    def name(key: str) -> str:
        """The entry's artefact name in the store."""
        return f"{key}.npz"

    # -- public API -----------------------------------------------------------------------
    def precompute(
        self,
        avatars: Iterable,
        emotions: Iterable[str] | None = None,
        variants: int | None = None,
        batch: int = 8,
        on_computed: Callable[[int, int], object] | None = None,
    ) -> dict:
        """Makes sure every (avatar, emotion, variant) is in memory: the store first, then batched sampling.

        variants=None takes each template's own count; on_computed(done, to fill) follows the entries not in
        memory (loaded or computed). Returns counts and seconds.
        """
        t0 = time.perf_counter()
        emotions = list(self.templates) if emotions is None else list(emotions)
        jobs: list[tuple[Any, str, int, str]] = []
        for avatar in avatars:
            for emotion in emotions:
                n = self.template(emotion).variants if variants is None else int(variants)
                jobs.extend((avatar, emotion, v, self.key(avatar, emotion, v)) for v in range(n))
        stats: dict[str, float] = {"entries": len(jobs), "in_memory": 0, "loaded": 0, "computed": 0, "waited": 0}
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
                else:
                    todo.append(job)
            self._fill(todo, max(1, int(batch)), stats, on_computed)
        stats["seconds"] = round(time.perf_counter() - t0, 3)
        return stats

    def get(self, avatar, emotion: str, variant: int = 0) -> CachedReaction:
        """The cached first chunk; loads or computes it on a miss (or waits for the process building it)."""
        key = self.key(avatar, emotion, variant)
        with self._lock:
            entry = self._mem.get(key)
        if entry is not None:
            return entry
        with self._compute_lock:
            with self._lock:
                entry = self._mem.get(key)
            if entry is None:
                self._fill([(avatar, emotion, variant, key)], 1, {"loaded": 0, "computed": 0, "waited": 0}, None)
                with self._lock:
                    entry = self._mem[key]
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
        """Drop every entry of `avatar` from memory (and its artefacts with delete_files); how many were in memory."""
        keys = [self.key(avatar, e, v) for e, t in self.templates.items() for v in range(t.variants)]
        with self._lock:
            n = sum(self._mem.pop(k, None) is not None for k in keys)
        if delete_files:
            for k in keys:
                try:
                    self.store.delete(self.name(k))
                except ArtifactError as e:
                    log.warning("latents cache: could not delete %s: %s", self.store.url(self.name(k)), e)
        return n

    def __len__(self) -> int:
        with self._lock:
            return len(self._mem)

    # -- internals ------------------------------------------------------------------------
    def _remember(self, entry: CachedReaction) -> None:
        with self._lock:
            self._mem[entry.key] = entry

    def _fill(
        self, jobs: list[tuple], batch: int, stats: dict, on_computed: Callable[[int, int], object] | None
    ) -> None:
        """Loads or computes every job, a batch at a time. Each round loads what is published or stored, claims
        up to `batch` of the rest and computes them; entries another process claimed are waited for (POLL_S)
        until they are published or their claim lapses (that process died) and this one takes them over."""
        weights, pending, total = self.engine.weights_hash, list(jobs), len(jobs)
        elsewhere: set[str] = set()  # entries found being built by another process
        while pending:
            mine: list[tuple] = []
            rest: list[tuple] = []
            for job in pending:
                if len(mine) < batch:
                    if (entry := self._load(job[3])) is not None:
                        self._remember(entry)
                        stats["loaded"] += 1
                        continue
                    if self.index.claim(weights, job[3]):
                        mine.append(job)
                        continue
                    elsewhere.add(job[3])
                rest.append(job)
            if mine:
                try:
                    for entry in self._compute(mine):
                        self._remember(entry)
                finally:
                    for job in mine:
                        self.index.release(weights, job[3])
                stats["computed"] += len(mine)
            elif rest:
                time.sleep(POLL_S)
            if on_computed is not None:
                on_computed(total - len(rest), total)
            pending = rest
        stats["waited"] += len(elsewhere)

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
        """Writes the entry to the store and publishes where it is; a store that refuses costs restarts only."""
        buf = io.BytesIO()
        # level 1: about 40% of the raw size at a fraction of the default level's write time
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            arrays = {
                "latents": entry.latents,
                "frames": entry.frames,
                "ctx": entry.ctx,
                "meta": np.array(json.dumps(meta, sort_keys=True)),
            }
            for name, a in arrays.items():
                with z.open(name + ".npy", "w", force_zip64=True) as member:
                    # not np.ascontiguousarray: it turns the 0-d meta string into a 1-d array
                    np.lib.format.write_array(member, a if a.flags.c_contiguous else a.copy(), allow_pickle=False)
        try:
            url = self.store.put(self.name(entry.key), buf.getvalue())  # atomic: no reader sees half an entry
        except ArtifactError as e:
            # a read-only or full disk, or an unreachable bucket: keep serving from memory
            log.warning("latents cache: could not write %s: %s", self.store.url(self.name(entry.key)), e)
            return
        self.index.publish(self.engine.weights_hash, entry.key, url, meta)

    def _read(self, key: str) -> tuple[str, bytes] | None:
        """(where, bytes) of the entry: at the URL the index names, else in this cache's store; None: nowhere."""
        url = self.index.where(self.engine.weights_hash, key)
        if url is not None and url != self.store.url(self.name(key)):
            try:
                return url, fetch(url)
            except ArtifactError as e:  # deleted, or a path on another machine: try the store, then build it
                log.warning("latents cache: published entry unreadable here (%s); trying %s", e, self.store.root)
        try:
            return self.store.url(self.name(key)), self.store.get(self.name(key))
        except ArtifactNotFound:
            return None
        except ArtifactError as e:
            log.warning("latents cache: %s", e)
            return None

    def _load(self, key: str) -> CachedReaction | None:
        read = self._read(key)
        if read is None:
            return None
        p, data = read
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
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


__all__ = [
    "CACHE_FORMAT",
    "BuildIndex",
    "CachedReaction",
    "LatentsCache",
    "LocalIndex",
    "default_cache_dir",
    "reaction_key",
    "variant_seed",
]
