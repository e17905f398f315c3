"""Prompt embeddings for the emotion templates, stored on disk so serving needs no text encoder.

Wan's UMT5-XXL encoder is 5.7B parameters, far more than is worth loading to embed a dozen fixed
prompts. So embeddings are computed once (where the checkpoint has text_encoder/ + tokenizer/)
and kept under `<root>/<encoder id>/<prompt hash>.npz`, the encoder id being a cheap fingerprint of
its files' names, sizes and first/last MiB. A checkpoint without a text encoder then uses the stored
set that holds every prompt it needs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from avatarcast.engines.wan.checkpoint import CheckpointInfo, WanCheckpointError

log = logging.getLogger(__name__)

MAX_LENGTH = 512  # Wan pads every prompt to 512 tokens with zeros; the model attends to those too
RANDOM = "random"  # the opt-in id of random embeddings (benchmarks with random weights)


class PromptEmbedsMissing(WanCheckpointError):
    """No stored embeddings for some prompts, and no text encoder to compute them."""


def normalize_prompt(prompt: str) -> str:
    """The text the encoder sees (WanEngine.encode_prompts collapses whitespace the same way)."""
    return re.sub(r"\s+", " ", prompt).strip()


def _head_tail(f: Path, n: int = 1 << 20) -> str:
    """sha256 of a file's size, first and last MiB: tells retrained weights of the same shapes apart
    (the safetensors header alone would not) while reading 2 MiB of a multi-GB shard."""
    size = f.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with f.open("rb") as fh:
        h.update(fh.read(n))
        if size > n:
            fh.seek(max(n, size - n))
            h.update(fh.read(n))
    return h.hexdigest()[:16]


def dir_fingerprint(d: Path) -> dict:
    """Every file of a component dir by name + size + first/last MiB: cheap even for 10 GB of shards."""
    files = (p for p in d.rglob("*") if p.is_file() and not any(c.startswith(".") for c in p.relative_to(d).parts))
    return {f.relative_to(d).as_posix(): _head_tail(f) for f in sorted(files)}  # not .cache/ or lock files


def text_encoder_id(info: CheckpointInfo, max_length: int = MAX_LENGTH) -> str:
    """Identity of the checkpoint's text encoder + tokenizer (None-safe callers check has_text_encoder)."""
    if info.text_encoder_dir is None or info.tokenizer_dir is None:  # both set, or neither (has_text_encoder)
        raise WanCheckpointError(f"checkpoint {info.root} has no text encoder")
    blob = json.dumps(
        {
            "text_encoder": dir_fingerprint(info.text_encoder_dir),
            "tokenizer": dir_fingerprint(info.tokenizer_dir),
            "max_length": max_length,
        },
        sort_keys=True,
    )
    return "umt5-" + hashlib.sha256(blob.encode()).hexdigest()[:20]


def _prompt_file(prompt: str) -> str:
    return hashlib.sha256(normalize_prompt(prompt).encode()).hexdigest()[:32] + ".npz"


def random_embeds(prompt: str, dim: int, length: int = MAX_LENGTH) -> np.ndarray:
    """Deterministic random embeddings of the real shape, distinct per prompt (explicit opt-in only)."""
    seed = int.from_bytes(hashlib.sha256(normalize_prompt(prompt).encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal((length, dim), dtype=np.float32)


class PromptEmbedStore:
    """Prompt embeddings on disk: `<root>/<encoder id>/<sha256(prompt)>.npz`, float32, zero tail trimmed."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, encoder_id: str, prompt: str) -> Path:
        return self.root / encoder_id / _prompt_file(prompt)

    def load(self, encoder_id: str, prompt: str, dim: int | None = None) -> np.ndarray | None:
        """(max_length, D) float32, or None when absent, unreadable or of another prompt/width."""
        p = self.path(encoder_id, prompt)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                emb, meta = z["embeds"], json.loads(str(z["meta"][()]))
            if meta.get("prompt") != normalize_prompt(prompt) or emb.ndim != 2 or (dim and emb.shape[1] != dim):
                raise ValueError(f"holds {meta.get('prompt')!r} {emb.shape}")
            if not np.isfinite(emb).all():
                raise ValueError("non-finite values")
        except (OSError, KeyError, ValueError, TypeError) as e:
            log.warning("prompt embeddings: ignoring %s (%s)", p, e)
            return None
        full = np.zeros((max(int(meta.get("max_length", len(emb))), len(emb)), emb.shape[1]), np.float32)
        full[: len(emb)] = emb
        return full

    def save(self, encoder_id: str, prompt: str, embeds: np.ndarray) -> Path:
        """Atomic write; keeps only up to the last non-zero token (the rest is zero padding)."""
        emb = np.asarray(embeds, dtype=np.float32)
        nz = np.flatnonzero(np.abs(emb).sum(1))
        keep = emb[: (nz[-1] + 1) if len(nz) else 0]
        p = self.path(encoder_id, prompt)
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = {"prompt": normalize_prompt(prompt), "encoder": encoder_id, "max_length": len(emb)}
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".emb-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, embeds=keep, meta=np.array(json.dumps(meta)))
            os.chmod(tmp, 0o644)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p

    def find_encoder(self, prompts: Iterable[str], dim: int) -> str | None:
        """The stored encoder id holding every prompt at width `dim` (newest first), else None."""
        if not self.root.is_dir():
            return None
        prompts = list(prompts)
        dirs = sorted((d for d in self.root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
        for d in dirs:
            if all(self.load(d.name, p, dim) is not None for p in prompts):
                return d.name
        return None


def resolve_prompt_embeds(
    prompts: Iterable[str],
    dim: int,
    info: CheckpointInfo,
    store: PromptEmbedStore,
    encode: Callable[[list[str]], Iterable[np.ndarray]] | None = None,
    mode: str = "auto",
) -> tuple[str, dict[str, np.ndarray]]:
    """(source id, {prompt: (L, D) float32}) for every prompt.

    mode "random": random embeddings (never chosen silently). mode "auto": the store, computing
    and saving what is missing with `encode` when the checkpoint has a text encoder; without one,
    any stored encoder set holding every prompt; else PromptEmbedsMissing saying what to do.
    `encode` may be None to only check that nothing needs computing (it then raises as well).
    """
    prompts = list(dict.fromkeys(prompts))
    if mode == RANDOM:
        return RANDOM, {p: random_embeds(p, dim) for p in prompts}
    if mode != "auto":
        raise ValueError(f"prompt embeddings mode must be 'auto' or 'random', got {mode!r}")
    if info.has_text_encoder:
        enc_id = text_encoder_id(info)
        out = {p: e for p in prompts if (e := store.load(enc_id, p, dim)) is not None}
        todo = [p for p in prompts if p not in out]
        if todo:
            if encode is None:
                raise PromptEmbedsMissing(f"{len(todo)} prompt embeddings must be computed with the text encoder")
            log.info("computing %d prompt embeddings with the text encoder of %s", len(todo), info.root)
            for p, e in zip(todo, encode(todo)):
                store.save(enc_id, p, e)
                out[p] = np.asarray(e, dtype=np.float32)
        return enc_id, out
    found = store.find_encoder(prompts, dim)
    if found is None:
        raise PromptEmbedsMissing(
            f"no stored prompt embeddings (width {dim}) for the {len(prompts)} emotion prompts in {store.root}, "
            f"and checkpoint {info.root} has no text encoder to compute them (missing "
            f"{', '.join(info.text_encoder_missing)}). Write them once with a checkpoint that has text_encoder/ "
            f"and tokenizer/: `avatarcast precompute --engine wan --checkpoint DIR --prompts-only` with the same "
            f"--cache-dir; or, for benchmarks with random weights, pass --wan-prompt-embeds random"
        )
    # find_encoder loaded each of them
    return found, {p: e for p in prompts if (e := store.load(found, p, dim)) is not None}


__all__ = [
    "MAX_LENGTH",
    "RANDOM",
    "PromptEmbedStore",
    "PromptEmbedsMissing",
    "dir_fingerprint",
    "normalize_prompt",
    "random_embeds",
    "resolve_prompt_embeds",
    "text_encoder_id",
]
