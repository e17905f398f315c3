"""The clip API: N seconds of an avatar in an emotion (or reacting to a text), as MP4 or WebM.

Chunks go through the shared scheduler with a far deadline, so a render never delays a live
stream's frames; it fills the gaps between their batches. Results are files in a disk cache
keyed by a hash of everything that changes the pixels; the same request is served from disk.
With --redis-url the gateways render a request once between them (realtime/shared_state.py): the one that
claims its key renders, the others wait for its result. With --artifact-url every rendered clip also goes to
that store (avatarcast/artifacts.py: a shared path, s3://...), and a gateway missing a clip on its own disk
copies it from there before serving it; without it, clip_cache_dir must be a path the gateways all mount.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatarcast.artifacts import ArtifactError, ArtifactNotFound, ArtifactStore, fetch_to
from avatarcast.engines.contract import StreamStart
from avatarcast.engines.errors import AvatarcastError, ErrorCode
from avatarcast.engines.tiny.engine import avatar_cache_key
from avatarcast.realtime.avatars import resolve_avatar
from avatarcast.realtime.commands import MAX_SAY_CHARS
from avatarcast.realtime.scheduler import ChunkJob
from avatarcast.realtime.services import Services
from avatarcast.realtime.shared_state import LocalState, SharedState, SharedStateError
from avatarcast.realtime.video import write_video
from avatarcast.vocabulary import DEFAULT_AVATAR, FPS

log = logging.getLogger(__name__)
FORMATS = {"mp4": "video/mp4", "webm": "video/webm"}
CLAIM_TTL_S = 600.0  # a render's claim lapses after this (its gateway died); longer than any render takes
RESULT_TTL_S = 7 * 86400.0  # the result index forgets a clip after this (the file may be evicted sooner)
POLL_S = 0.1  # how often a gateway waiting for another one's render looks for the result


@dataclass(frozen=True)
class ClipRequest:
    avatar: str = DEFAULT_AVATAR
    emotion: str | None = None
    text: str | None = None
    seconds: float = 3.0
    format: str = "mp4"
    intensity: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class RenderedClip:
    path: Path
    media_type: str
    emotion: str
    frames: int
    cached: bool
    render_s: float
    key: str


class ClipError(AvatarcastError, ValueError):
    """A bad clip request."""

    code = ErrorCode.BAD_CLIP_REQUEST


class ClipRenderer:
    """Renders clips through the shared scheduler and keeps the files in a disk cache."""

    def __init__(
        self,
        services: Services,
        cache_dir: str | None = None,
        max_entries: int = 512,
        shared: SharedState | None = None,
        store: ArtifactStore | None = None,
    ) -> None:
        """store: where clips also go, for other gateways and machines (None: this directory only)."""
        self.services = services
        self.store = store
        self.dir = Path(cache_dir or os.path.expanduser("~/.cache/avatarcast/clips"))
        self.max_entries = max_entries
        self._inflight: dict[str, asyncio.Future] = {}
        self.shared: SharedState = shared if shared is not None else LocalState()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"  # this gateway, in claims
        self.renders = 0  # clips this renderer rendered itself (not served from disk or another gateway)

    def _validate(self, req: ClipRequest) -> tuple[str, Any, str, float]:
        sv = self.services
        if req.format not in FORMATS:
            raise ClipError(f"format must be one of {sorted(FORMATS)}, got {req.format!r}")
        if not (0 < req.seconds <= sv.settings.max_render_seconds):
            raise ClipError(f"seconds must be in (0, {sv.settings.max_render_seconds}], got {req.seconds}")
        if (req.emotion is None) == (req.text is None):
            raise ClipError("give exactly one of emotion or text")
        try:
            name, params = resolve_avatar(req.avatar)
        except (ValueError, TypeError) as exc:
            raise ClipError(str(exc)) from None
        if req.text is not None:
            if not req.text.strip() or len(req.text) > MAX_SAY_CHARS:
                raise ClipError(f"text must be 1..{MAX_SAY_CHARS} characters, not only whitespace")
            cue = sv.reader.read(req.text)
            emotion, intensity = cue.label, cue.intensity
        else:
            if req.emotion not in sv.emotions:
                raise ClipError(f"unknown emotion {req.emotion!r}; known: {', '.join(sv.emotions)}")
            emotion = req.emotion
            intensity = sv.cache.templates[emotion].default_intensity if emotion in sv.cache.templates else 0.8
        if req.intensity is not None:
            if not 0.0 <= req.intensity <= 1.0:
                raise ClipError(f"intensity must be in 0..1, got {req.intensity}")
            intensity = req.intensity
        return name, params, emotion, float(intensity)

    def key(self, params: Any, emotion: str, intensity: float, req: ClipRequest) -> str:
        blob = json.dumps(
            {
                "weights": self.services.engine.weights_hash,
                "steps": self.services.engine.steps,
                "avatar": avatar_cache_key(params),
                "emotion": emotion,
                "intensity": round(intensity, 4),
                "seconds": req.seconds,
                "format": req.format,
                "seed": req.seed,
                "v": 2,  # 2: the renderer draws at 4x (render.SS), so an avatar's frames changed
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    async def render(self, req: ClipRequest) -> RenderedClip:
        t0 = time.perf_counter()
        name, params, emotion, intensity = await asyncio.get_running_loop().run_in_executor(
            self.services.pools.cpu, self._validate, req
        )
        key = self.key(params, emotion, intensity, req)
        path = self.dir / f"{key}.{req.format}"
        n_frames = max(1, int(round(req.seconds * FPS)))
        if path.is_file() or await self._copy_in(path):
            os.utime(path)
            return RenderedClip(path, FORMATS[req.format], emotion, n_frames, True, 0.0, key)
        fut = self._inflight.get(key)
        if fut is None:  # identical concurrent requests share one render
            fut = asyncio.ensure_future(self._render_once(key, params, emotion, intensity, req, path, n_frames))
            self._inflight[key] = fut
            fut.add_done_callback(lambda _: self._inflight.pop(key, None))
        await asyncio.shield(fut)
        return RenderedClip(
            path, FORMATS[req.format], emotion, n_frames, False, round(time.perf_counter() - t0, 3), key
        )

    async def _render_once(
        self, key: str, params: Any, emotion: str, intensity: float, req: ClipRequest, path: Path, n_frames: int
    ) -> None:
        """Render, unless another gateway holds the key's claim: then wait for the result it indexes.
        A claim that lapses without a result (its gateway died) is taken over; with the store down,
        this gateway renders on its own (logged)."""
        claim, result = f"clip:claim:{key}", f"clip:result:{key}"
        while True:
            try:
                done = self.shared.get(result)
                if done is not None and (path.is_file() or await self._copy_in(path, json.loads(done).get("url"))):
                    return
                mine = self.shared.claim(claim, self.owner, CLAIM_TTL_S)
            except SharedStateError:  # logged where it failed: render here, deduplicated in this process only
                mine = None
            if mine is False:  # another gateway renders it
                await asyncio.sleep(POLL_S)
                continue
            try:
                if await self._copy_in(path):  # rendered meanwhile, or before, by any machine
                    return
                await self._render(params, emotion, intensity, req, path, n_frames)
                self.renders += 1
                url = await self._copy_out(path)
                with contextlib.suppress(SharedStateError):
                    index = json.dumps({"file": path.name, "url": url, "emotion": emotion, "frames": n_frames})
                    self.shared.put(result, index, RESULT_TTL_S)
            finally:
                if mine:
                    with contextlib.suppress(SharedStateError):
                        self.shared.release(claim, self.owner)
            return

    async def _render(
        self, params: Any, emotion: str, intensity: float, req: ClipRequest, path: Path, n_frames: int
    ) -> None:
        sv = self.services
        far = time.monotonic() + 3600.0  # behind every live deadline
        chunks: list[np.ndarray] = []
        start = StreamStart(params, emotion, intensity, req.seed)
        # the first chunk leaves the rest pose
        state = (await sv.scheduler.submit(ChunkJob("clip", start, far, emotion, intensity))).state
        while sum(len(c) for c in chunks) < n_frames:
            res = await sv.scheduler.submit(ChunkJob("clip", state, far, emotion, intensity))
            state = res.state
            chunks.append(res.frames)
        frames = np.concatenate(chunks)[:n_frames]
        await asyncio.get_running_loop().run_in_executor(sv.pools.cpu, self._write, frames, path)

    async def _copy_in(self, path: Path, url: str | None = None) -> bool:
        """Copies the clip into this gateway's directory from the store (or the URL the index names): found?"""
        if self.store is None and not url:
            return False

        def copy() -> bool:
            try:
                if self.store is not None and self.store.exists(path.name):
                    self.store.get_file(path.name, path)
                    return True
                if url and url != str(path):
                    fetch_to(url, path)
                    return True
            except ArtifactNotFound:
                return False
            except (ArtifactError, OSError) as exc:  # the store is down: render here rather than fail the request
                log.warning("clip %s: could not copy it from the artefact store: %s", path.name, exc)
            return False

        return await asyncio.get_running_loop().run_in_executor(self.services.pools.cpu, copy)

    async def _copy_out(self, path: Path) -> str:
        """Stores a rendered clip for the other gateways; its URL (the local path without a store)."""
        if self.store is None:
            return str(path)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.services.pools.cpu, self.store.put_file, path.name, path
            )
        except ArtifactError as exc:  # served from this gateway's disk all the same
            log.warning("clip %s: could not store it: %s", path.name, exc)
            return str(path)

    def _write(self, frames: np.ndarray, path: Path) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=self.dir)
        os.close(fd)
        try:
            write_video(frames, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._evict()

    def _evict(self) -> None:
        files = sorted((p for p in self.dir.glob("*.*") if p.suffix[1:] in FORMATS), key=lambda p: p.stat().st_mtime)
        for p in files[: max(0, len(files) - self.max_entries)]:
            p.unlink(missing_ok=True)


def clip_request_from_dict(d: dict) -> ClipRequest:
    known = set(ClipRequest.__dataclass_fields__)
    extra = set(d) - known
    if extra:
        raise ClipError(f"unknown fields: {', '.join(sorted(extra))}")
    try:
        req = ClipRequest(**d)
        return ClipRequest(**{**asdict(req), "seconds": float(req.seconds), "seed": int(req.seed)})
    except (TypeError, ValueError) as exc:
        raise ClipError(str(exc)) from None
