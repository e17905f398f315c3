"""One settings object for the whole process, built from CLI flags and AVATARCAST_* variables.

Precedence: explicit CLI flag > environment variable > default. Nothing else in the project
reads the environment: it receives a Settings (or the values it needs) from its caller.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

ENV_PREFIX = "AVATARCAST_"


@dataclass
class Settings:
    """Process-wide settings; every field is also AVATARCAST_<FIELD> and --<field>."""

    engine: str = "tiny"
    backend: str = "onnxruntime"
    steps: int = 2
    threads: int = 0  # 0 = all cores
    device: str = "auto"  # auto | cpu | cuda
    weights: str = ""  # empty = the shipped weights
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    log_format: str = "text"  # text | json (one object per line, with the session id as a field)
    asr_model: str = "tiny.en"  # tiny.en | base (multilingual) | a CTranslate2 model directory
    language: str = ""  # empty: the model's default (en for tiny.en, detected for base)
    avatars: str = "pip"  # comma list warmed (loops + latents cache) at start-up
    precompute: int = 1  # 1: fill the latents cache of the start-up avatars before serving
    cache_dir: str = ""  # latents cache; empty = ~/.cache/avatarcast/latents
    clip_cache_dir: str = ""  # rendered clips; empty = ~/.cache/avatarcast/clips
    image_format: str = "jpeg"  # default WebSocket frame format: jpeg | webp (keeps alpha)
    quality: int = 80  # JPEG/WebP quality
    max_sessions: int = 8
    max_clip_bytes: int = 20_000_000
    max_clip_seconds: float = 30.0
    max_audio_backlog_s: float = 5.0  # live audio queued beyond this is dropped with an error
    max_message_bytes: int = 4_000_000  # largest WebSocket message accepted
    max_render_seconds: float = 30.0  # longest clip the clip API renders
    session_idle_s: float = 120.0  # a session with no client attached and no input this long is closed
    auth_secret: str = ""  # set: every /v1/ request needs a JWT signed with it (`avatarcast token`)
    ssl_certfile: str = ""  # serve HTTPS/WSS with this certificate (and ssl_keyfile); browsers need
    ssl_keyfile: str = ""  # a secure origin for the microphone anywhere but localhost

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        s = cls()
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                setattr(s, f.name, _coerce(f.type, raw, ENV_PREFIX + f.name.upper()))
        return s

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
        """Adds --<field> flags (default None, so unset flags fall back to env and defaults)."""
        for f in fields(cls):
            if only and f.name not in only:
                continue
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                                type=_parser_type(f.type), help=f"(env {ENV_PREFIX}{f.name.upper()}, default {f.default!r})")

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> "Settings":
        s = cls.from_env(env)
        for f in fields(cls):
            v = getattr(args, f.name, None)
            if v is not None:
                setattr(s, f.name, v)
        s.validate()
        return s

    def validate(self) -> None:
        if self.engine not in ("tiny", "wan"):
            raise ValueError(f"engine must be 'tiny' or 'wan', got {self.engine!r}")
        if self.backend not in ("onnxruntime", "torch", "tensorrt"):
            raise ValueError(f"backend must be onnxruntime, torch or tensorrt, got {self.backend!r}")
        if not 1 <= self.steps <= 64:
            raise ValueError(f"steps must be 1..64, got {self.steps}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, got {self.log_format!r}")
        if self.image_format not in ("jpeg", "webp"):
            raise ValueError(f"image_format must be jpeg or webp, got {self.image_format!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be 1..100, got {self.quality}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        for name in ("max_sessions", "max_clip_bytes", "max_message_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_clip_seconds", "max_audio_backlog_s", "max_render_seconds", "session_idle_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

        if self.auth_secret and len(self.auth_secret) < 32:
            raise ValueError("auth_secret must be at least 32 characters (HS256 wants a 256-bit key)")

    def avatar_list(self) -> list[str]:
        return [a.strip() for a in self.avatars.split(",") if a.strip()]

    def engine_kwargs(self) -> dict[str, Any]:
        """What TinyEngine.load takes from these settings."""
        device = None if self.device == "auto" else self.device
        return {"weights_dir": self.weights or None, "backend": self.backend, "steps": self.steps,
                "threads": self.threads or None, "device": device}


def _parser_type(t: Any):
    t = t if isinstance(t, str) else getattr(t, "__name__", str(t))
    return {"int": int, "float": float}.get(t, str)


def _coerce(t: Any, raw: str, name: str):
    try:
        return _parser_type(t)(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {t}") from None
