"""Loads the engine the settings name, for serve, precompute and render alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from realtime.settings import Settings

WAN_FLAGS = ("checkpoint", "wan_dtype", "wan_chunk_latents", "wan_context_latents", "wan_height", "wan_width",
             "wan_shift", "wan_sigmas", "wan_timesteps", "wan_prompt_embeds", "wan_compile", "wan_compile_mode",
             "wan_vae_warmup", "wan_fp8", "wan_pipeline")


def load_engine(settings: Settings, cache_dir: str | Path | None = None, templates: dict | None = None) -> Any:
    """TinyEngine, or WanAvatarEngine (same interface) whose prompt embeddings live in the latents cache dir."""
    if settings.engine == "wan":
        from engines.wan.serving import WanAvatarEngine
        from templates.cache import default_cache_dir
        return WanAvatarEngine.load(cache_dir=cache_dir or settings.cache_dir or default_cache_dir(),
                                    templates=templates, **settings.wan_kwargs())
    from engines.tiny.engine import TinyEngine
    return TinyEngine.load(**settings.engine_kwargs())
