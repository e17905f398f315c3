"""The `avatarcast` command: serve, render, bench, eval, precompute."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from avatarcast.realtime import progress
from avatarcast.realtime.engine_loader import WAN_FLAGS, load_engine
from avatarcast.realtime.settings import Settings
from avatarcast.realtime.video import parse_color, write_video
from avatarcast.vocabulary import FPS

ENGINE_FLAGS = ("engine", "backend", "steps", "threads", "device", "weights", "motion_draw", "cache_dir", *WAN_FLAGS)


def parse_schedule(spec: str, seconds: float) -> list[tuple[str, float]]:
    """'happy' or 'idle:1,happy:3,sad:2' -> [(emotion, seconds), ...]; a bare name fills --seconds."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty --emotion")
    if len(parts) == 1 and ":" not in parts[0]:
        return [(parts[0], seconds)]
    out = []
    for p in parts:
        name, _, dur = p.partition(":")
        try:
            out.append((name, float(dur)))
        except ValueError:
            raise ValueError(f"bad schedule item {p!r}: use emotion:seconds") from None
    return out


def parse_avatar(s: str):
    """An index, a built-in name, a JSON object, or a path to a JSON file of AvatarParams."""
    if s.isdigit():
        return int(s)
    if s.lstrip().startswith("{"):
        return json.loads(s)
    p = Path(s)
    if p.suffix == ".json" and p.exists():
        return json.loads(p.read_text())
    return s


def cmd_render(args: argparse.Namespace) -> int:
    settings = Settings.from_args(args)
    schedule = parse_schedule(args.emotion, args.seconds)
    avatar = parse_avatar(args.avatar)
    fps = FPS
    t0 = time.perf_counter()
    if args.renderer:
        from avatarcast.engines.avatar_world import get_avatar, render_sequence  # PIL: kept off `avatarcast --help`

        segs = [(e, max(1, round(s * fps)), args.intensity) for e, s in schedule]
        frames, _ = render_sequence(get_avatar(avatar), segs, seed=args.seed)
        label = "renderer"
    else:
        engine = load_engine(settings)
        st = engine.start_stream(avatar, schedule[0][0], args.intensity, args.seed)
        engine.sample_chunks([st])  # leave the rest pose before the clip starts
        chunks = []
        total = sum(max(1, round(secs * fps)) for _, secs in schedule)
        with progress.bar(total=total, desc="render", unit="frame", quiet=args.quiet) as bar:
            for emotion, secs in schedule:
                engine.set_emotion(st, emotion, args.intensity)
                need = max(1, round(secs * fps))
                got = 0
                while got < need:
                    c = engine.next_chunk([st])[0]
                    chunks.append(c[: need - got])
                    got += len(chunks[-1])
                    bar.update(len(chunks[-1]))
        frames = np.concatenate(chunks)
        label = f"{settings.engine}/{'torch' if settings.engine == 'wan' else settings.backend}/{settings.steps} steps"
    gen_s = time.perf_counter() - t0
    out = write_video(frames, args.output, fps=fps, background=parse_color(args.background))
    print(
        f"wrote {out} ({len(frames)} frames, {label}, generated in {gen_s:.2f}s = "
        f"{len(frames) / max(gen_s, 1e-9):.1f} fps)"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from avatarcast.realtime.server import StartupError, serve  # fastapi, uvicorn: ~0.5 s off `avatarcast --help`

    if args.print_config:  # the effective settings, each with its source, as a file --config reads back
        from avatarcast.realtime.settings_file import render

        settings, sources = Settings.resolve(args)
        settings.validate(sources)
        print(render(settings, sources), end="")
        return 0
    settings = Settings.from_args(args)
    if settings.ray:  # the gateway and the engine replicas as Ray Serve deployments (realtime/cluster/)
        try:
            import ray.serve  # noqa: F401  # ray: the optional `ray` extra, checked before use

            from avatarcast.realtime.cluster.launch import serve_on_ray  # with ray only: off `avatarcast --help`
        except ImportError as exc:
            print(f"avatarcast: error: --ray needs Ray Serve: pip install 'avatarcast[ray]' ({exc})", file=sys.stderr)
            return 1
        serve_on_ray(settings)
        return 0
    try:
        serve(settings)
    except StartupError as exc:  # missing or corrupt model files: say so and exit non-zero
        print(f"avatarcast: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C / SIGINT: uvicorn re-raises it after the drain; a stop is not a crash
        return 130
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from avatarcast.realtime.auth import mint  # jwt, cryptography: kept off `avatarcast --help`

    secret = args.secret or Settings.from_env().auth_secret
    if not secret:
        raise ValueError("no secret: pass --secret or set AVATARCAST_AUTH_SECRET")
    print(mint(secret, args.subject, args.ttl))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "engine":
        from avatarcast.realtime.bench.engine import main as bench_main  # PIL: kept off `avatarcast --help`

        return bench_main(args.rest) or 0
    if args.what == "latency":
        from avatarcast.realtime.bench.latency import main as bench_main  # asyncio, websockets: off `--help`

        return bench_main(args.rest) or 0
    if args.what == "load":
        from avatarcast.realtime.bench.load import main as bench_main  # asyncio, websockets: off `--help`

        return bench_main(args.rest) or 0
    print(f"unknown benchmark {args.what!r}", file=sys.stderr)
    return 2


def version() -> str:
    """The installed distribution's version (pyproject.toml's); a checkout that was never installed has none."""
    try:
        return importlib.metadata.version("avatarcast")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="avatarcast", description="A cartoon avatar that reacts, live, to what a person says."
    )
    ap.add_argument("--version", action="version", version=f"avatarcast {version()}")
    sub = ap.add_subparsers(dest="command", required=True)

    sv = sub.add_parser("serve", help="run the real-time server (HTTP, WebSocket, WebRTC, demo page)")
    Settings.add_arguments(sv)
    sv.add_argument("--print-config", action="store_true", help="print the settings (TOML, with sources) and exit")
    sv.set_defaults(func=cmd_serve)

    t = sub.add_parser("token", help="mint a signed session token for a server started with --auth-secret")
    t.add_argument("--secret", default="", help="the server's secret (default: AVATARCAST_AUTH_SECRET)")
    t.add_argument("--subject", default="client", help="who the token is for (its 'sub' claim)")
    t.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires")
    t.set_defaults(func=cmd_token)

    r = sub.add_parser("render", help="generate a clip of an avatar showing an emotion")
    r.add_argument("--avatar", default="0", help="built-in index or name, AvatarParams JSON, or a .json file")
    r.add_argument("--emotion", default="happy", help="an emotion, or a schedule like idle:1,happy:3,sad:2")
    r.add_argument("--seconds", type=float, default=4.0)
    r.add_argument("--intensity", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--background", default="#f5f0e6", help="background for formats without alpha")
    r.add_argument("--renderer", action="store_true", help="draw with the procedural renderer instead of the model")
    r.add_argument("-o", "--output", required=True, help=".mp4, .webm (alpha), .gif, or folder/ for PNGs")
    progress.add_quiet_flag(r)
    Settings.add_arguments(r, ENGINE_FLAGS)
    r.set_defaults(func=cmd_render)

    b = sub.add_parser("bench", help="benchmarks: engine, latency, load", add_help=False)
    b.add_argument("what", choices=["engine", "latency", "load"])
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)

    # listed for --help; main() hands their arguments to their own parsers
    sub.add_parser("eval", help="evaluate the engine with the emotion classifier (see: avatarcast eval --help)")
    sub.add_parser("precompute", help="fill the emotion templates' latents cache (see: avatarcast precompute --help)")
    return ap


# Subcommands whose own parser takes every flag: argparse's REMAINDER cannot start with an option.
PASSTHROUGH = {"precompute": "avatarcast.realtime.precompute"}


def run_eval(argv: list[str]) -> int:
    """`avatarcast eval` is offline work that lives in a source checkout's tools/eval (with its classifier's
    weights), which the package does not install: run it there, as its own process."""
    if not (Path.cwd() / "tools" / "eval" / "evaluate.py").is_file():
        print(
            "avatarcast: error: eval runs from a source checkout of avatarcast (it needs tools/eval and the "
            "classifier's weights there): run it in the repository's folder",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, "-m", "tools.eval.evaluate", *argv])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "eval":
        return run_eval(argv[1:])
    if argv and argv[0] in PASSTHROUGH:
        return importlib.import_module(PASSTHROUGH[argv[0]]).main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"avatarcast: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
