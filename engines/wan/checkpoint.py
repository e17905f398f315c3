"""Checks a local diffusers-format Wan2.2 checkpoint before anything heavy is loaded.

Loading a 5B model only to fail on a missing VAE shard wastes minutes, and the server must never
fall back to a hub download; so the directory is inspected up front and every missing piece is
named in one error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from avatarcast.engines.errors import EngineError


class WanCheckpointError(EngineError, ValueError):
    """The checkpoint directory lacks something the engine needs."""


@dataclass
class CheckpointInfo:
    """What a checkpoint directory holds (paths are absolute)."""

    root: Path
    transformer_dir: Path
    vae_dir: Path
    text_encoder_dir: Path | None = None  # set only when text encoder and tokenizer are complete
    tokenizer_dir: Path | None = None
    text_encoder_missing: list[str] = field(default_factory=list)  # why prompts can't be encoded

    @property
    def has_text_encoder(self) -> bool:
        return self.text_encoder_dir is not None


def _weights_missing(d: Path, name: str) -> list[str]:
    """Missing-weight descriptions for component dir `d`: sharded (index json) or single files."""
    indexes = sorted(d.glob("*.safetensors.index.json")) if d.is_dir() else []
    if indexes:
        missing: list[str] = []
        for idx in indexes:
            try:
                shards = set(json.loads(idx.read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError) as e:
                missing.append(f"{name}/{idx.name} (unreadable: {e})")
                continue
            missing += [f"{name}/{s}" for s in sorted(shards) if not (d / s).is_file()]
        return missing
    if d.is_dir() and any(d.glob("*.safetensors")):
        return []
    return [f"{name} weights (*.safetensors)"]


def _component_missing(root: Path, name: str) -> list[str]:
    d = root / name
    missing = [] if (d / "config.json").is_file() else [f"{name}/config.json"]
    return missing + _weights_missing(d, name)


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Validate a local checkpoint dir (transformer/, vae/, optional text_encoder/ + tokenizer/).

    Raises WanCheckpointError naming the directory and every missing required piece.
    """
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise WanCheckpointError(f"checkpoint {root} is not a directory")
    missing = _component_missing(root, "transformer") + _component_missing(root, "vae")
    if missing:
        raise WanCheckpointError(f"checkpoint {root} is incomplete: missing {', '.join(missing)}")
    info = CheckpointInfo(root, root / "transformer", root / "vae")
    te_missing = _component_missing(root, "text_encoder")
    tok = root / "tokenizer"
    if not (tok.is_dir() and any(tok.iterdir())):
        te_missing.append("tokenizer/")
    if te_missing:
        info.text_encoder_missing = te_missing
    else:
        info.text_encoder_dir, info.tokenizer_dir = root / "text_encoder", tok
    return info
