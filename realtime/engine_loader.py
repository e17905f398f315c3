"""Loads the engine the settings name, for serve, precompute and render alike."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from avatarcast.engines.contract import StreamEngine
from avatarcast.engines.tiny.engine import TinyEngine
from avatarcast.realtime.settings import Settings
from avatarcast.templates.cache import default_cache_dir

# every --wan-* setting (and --checkpoint) for the commands that load an engine: precompute and render
# take the serve flags that shape the engine, so their caches and frames match the server's
WAN_FLAGS = ("checkpoint", *(f.name for f in fields(Settings) if f.name.startswith("wan_")))


def load_engine(settings: Settings, cache_dir: str | Path | None = None, templates: dict | None = None) -> StreamEngine:
    """TinyEngine, WanAvatarEngine (same interface) whose prompt embeddings live in the latents cache dir, or
    MotionEngine from an exported folder."""
    if settings.engine == "wan":
        from avatarcast.engines.wan.serving import WanAvatarEngine  # torch: only for the wan engine

        return WanAvatarEngine.load(
            cache_dir=cache_dir or settings.cache_dir or default_cache_dir(),
            templates=templates,
            **settings.wan_kwargs(),
        )
    if settings.engine == "motion":
        from avatarcast.engines.tiny.motion_engine import MotionEngine  # PIL, onnxruntime (torch): this engine's

        threads = settings.threads or None
        return MotionEngine.from_folder(
            settings.weights or None,
            steps=settings.steps,
            threads=threads,
            draw=settings.motion_folder_draw,
            backend=settings.backend,
            device=None if settings.device == "auto" else settings.device,
            # the avatars the server holds and those it is preparing: a stream's avatar is never pushed out, and
            # --max-avatars bounds the engine's ~55 MB an avatar (24 kept by default, whatever the server held)
            max_avatars=settings.max_avatars + settings.max_preparing_avatars,
        )
    return TinyEngine.load(**settings.engine_kwargs())
