"""`avatarcast precompute`: fill the latents cache so first reaction frames are a lookup."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from avatarcast.artifacts import store_under
from avatarcast.engines.avatar_world import BUILTIN_AVATARS, get_avatar
from avatarcast.realtime import progress
from avatarcast.realtime.engine_loader import WAN_FLAGS, load_engine
from avatarcast.realtime.latents_index import index_for
from avatarcast.realtime.settings import Settings
from avatarcast.realtime.shared_state import make_shared_state
from avatarcast.templates import load_templates
from avatarcast.templates.cache import LatentsCache

ENGINE_FLAGS = ("engine", "backend", "steps", "threads", "device", "weights", *WAN_FLAGS)
SHARING_FLAGS = ("redis_url", "artifact_url")  # machines filling one cache build each entry once


def parse_avatars(spec: str) -> list:
    """'all' -> every built-in avatar; '0,1,luna' -> those (indices or names)."""
    if spec.strip().lower() == "all":
        return list(range(len(BUILTIN_AVATARS)))
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        key = int(part) if part.isdigit() else part
        get_avatar(key)  # fail here, with the avatar's name, rather than mid-run
        out.append(key)
    if not out:
        raise ValueError("empty --avatars")
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="avatarcast precompute",
        description="Compute the first chunk of every (avatar, emotion, variant) reaction.",
    )
    ap.add_argument("--avatars", default="all", help="'all' or a comma list of built-in indices/names")
    ap.add_argument("--emotions", default="", help="comma list of emotions (default: every template)")
    ap.add_argument("--variants", type=int, default=None, help="variants per emotion (default: each template's own)")
    ap.add_argument("--batch", type=int, default=8, help="streams per sampler run")
    ap.add_argument("--cache-dir", default=None, help="default ~/.cache/avatarcast/latents")
    ap.add_argument("--templates", default=None, help="templates JSON (default: the shipped emotions.json)")
    ap.add_argument("--json", action="store_true", help="print the stats as one JSON object")
    ap.add_argument(
        "--prompts-only",
        action="store_true",
        help="engine wan: only write the templates' prompt embeddings (needs text_encoder/ + tokenizer/)",
    )
    progress.add_quiet_flag(ap)
    Settings.add_arguments(ap, (*ENGINE_FLAGS, *SHARING_FLAGS))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_args(args)
    templates = load_templates(args.templates)
    emotions = [e.strip() for e in args.emotions.split(",") if e.strip()] or None
    avatars = parse_avatars(args.avatars)
    shared = make_shared_state(settings.redis_url)
    shared.check()  # an unreachable --redis-url fails here, before the engine loads
    store = store_under(settings.artifact_url, "latents")
    t0 = time.perf_counter()
    # wan: loading computes and stores the templates' prompt embeddings where they are missing
    engine = load_engine(settings, cache_dir=args.cache_dir, templates=templates)
    load_s = time.perf_counter() - t0
    cache = LatentsCache(engine, templates, args.cache_dir, store=store, index=index_for(shared))
    if args.prompts_only:
        if settings.engine != "wan":
            raise ValueError("--prompts-only is for --engine wan")
        from avatarcast.engines.wan.serving import WanAvatarEngine  # loaded above: torch is in already

        assert isinstance(engine, WanAvatarEngine)
        stats: dict[str, Any] = {
            "prompt_embeds": engine.embeds_id,
            "prompts": len(templates),
            "dir": str(cache.cache_dir / "prompt_embeds"),
            "engine_load_seconds": round(load_s, 3),
        }
        print(
            json.dumps(stats, sort_keys=True)
            if args.json
            else f"{stats['prompts']} prompt embeddings ({stats['prompt_embeds']}) in {stats['dir']}"
        )
        return 0
    with progress.bar(desc="precompute", unit="entry", quiet=args.quiet) as bar:

        def computed(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        stats = cache.precompute(avatars, emotions, variants=args.variants, batch=args.batch, on_computed=computed)
    stats.update(
        cache_dir=cache.store.root,
        steps=engine.steps,
        weights=engine.weights_hash,
        engine_load_seconds=round(load_s, 3),
    )
    if stats["computed"]:
        stats["seconds_per_computed"] = round(stats["seconds"] / stats["computed"], 4)
    if args.json:
        print(json.dumps(stats, sort_keys=True))
    else:
        print(
            f"{stats['entries']} entries in {stats['cache_dir']}: {stats['computed']} computed, "
            f"{stats['loaded']} loaded from disk, {stats['in_memory']} already in memory, "
            f"{stats['seconds']:.2f}s (engine load {load_s:.2f}s, {engine.steps} steps)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
