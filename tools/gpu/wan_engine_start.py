"""Device: how long `serve --engine wan` takes to get its engine ready, from process start.

It runs what the server runs at start (avatarcast.realtime.engine_loader.load_engine with the Settings that
the given serve flags make): the checkpoint read from disk, prompt embeddings, fp8, the compiled
graphs (inductor's artifacts in the cache dir, as serve keeps them), and then decodes one chunk for
5 streams to show the engine serves. Run it twice: the first start is cold, the second a warm restart.
The server's other start-up work (ASR model, HTTP) is not included.

    python -m tools.gpu.wan_engine_start --save-random /tmp/wan5b        # once: a random 5B checkpoint
    python -m tools.gpu.wan_engine_start --checkpoint /tmp/wan5b --cache-dir .cache/serve \\
        --engine wan --wan-compile 1 --wan-fp8 1 --wan-chunk-latents 3 --wan-prompt-embeds random
"""

import time

T_PROC = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402


def main(argv: list[str]) -> dict:
    import torch

    if argv[:1] == ["--save-random"]:  # a checkpoint directory with the real shapes, random weights
        from avatarcast.realtime.bench.wan import build_random

        t0 = time.perf_counter()
        tr, vae = build_random(vae_dtype="bf16")
        tr.save_pretrained(f"{argv[1]}/transformer")
        vae.save_pretrained(f"{argv[1]}/vae")
        return {"saved": argv[1], "save_s": round(time.perf_counter() - t0, 1)}
    from avatarcast.realtime.avatars import resolve_avatar
    from avatarcast.realtime.cli import build_parser
    from avatarcast.realtime.engine_loader import load_engine
    from avatarcast.realtime.settings import Settings

    settings = Settings.from_args(build_parser().parse_args(["serve", *argv]))
    settings.validate()
    eng = load_engine(settings)
    gpu = eng.wan.device.type == "cuda"
    if gpu:
        torch.cuda.synchronize()
    out = {
        "ready_s": round(time.perf_counter() - T_PROC, 2),
        "warm_s": getattr(eng.wan, "warm_s", None),
        "flags": argv,
        "device": torch.cuda.get_device_name() if gpu else "cpu",
    }
    vae = eng.wan.vae_stream
    if vae.compiled is False:  # --wan-vae-warmup background: serving already, at full speed once compiled
        vae.compiled_ready.wait(timeout=1800)
        out["full_speed_s"] = round(time.perf_counter() - T_PROC, 2)
    avatar = resolve_avatar("pip")[1]
    states = [eng.start_stream(avatar, "happy", 1.0, seed=i) for i in range(5)]
    t0 = time.perf_counter()
    frames = eng.next_chunk(states)  # fresh streams: their first chunk primes each VAE cache
    out["first_chunk_5_streams_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    t0 = time.perf_counter()
    frames = eng.next_chunk(states)
    out["chunk_5_streams_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    out["frames"] = [len(frames), *frames[0].shape]
    if gpu:
        out["memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
