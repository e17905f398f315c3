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
