"""Device: the server's wan engine (WanAvatarEngine, what `serve --engine wan` loads) on a GPU.

Saves a random Wan2.2-TI2V-5B checkpoint (real shapes, bf16), then times what start-up does
(load + CUDA graph capture), fills one latents-cache entry, and plays a reaction: a cached
first chunk, then sampled chunks for 4 streams batched, as the scheduler runs them."""

# ruff: noqa: E402  (the imports after t_proc are timed: they count in the start-up figures)
import json
import sys
import tempfile
import time

t_proc = time.perf_counter()
import torch

from avatarcast.realtime.bench.wan import build_random

ckpt = sys.argv[1] if len(sys.argv) > 1 else "/tmp/wan5b"
out = {}
if len(sys.argv) <= 2 or sys.argv[2] != "--reuse":
    t0 = time.perf_counter()
    tr, vae = build_random(vae_dtype="fp32")
    tr.save_pretrained(f"{ckpt}/transformer")
    vae.save_pretrained(f"{ckpt}/vae")
    del tr, vae
    torch.cuda.empty_cache()
    out["save_checkpoint_s"] = round(time.perf_counter() - t0, 1)
    t_proc = time.perf_counter()

from avatarcast.engines.wan.serving import WanAvatarEngine
from avatarcast.templates import load_templates
from avatarcast.templates.cache import LatentsCache

t0 = time.perf_counter()
eng = WanAvatarEngine.load(
    ckpt, tempfile.mkdtemp(), device="cuda", steps=4, chunk_latent_frames=2, prompt_embeds="random"
)
torch.cuda.synchronize()
out["load_and_capture_s"] = round(time.perf_counter() - t0, 1)
out["ready_s_since_process_start"] = round(time.perf_counter() - t_proc, 1)
templates = load_templates()
cache = LatentsCache(eng, templates, tempfile.mkdtemp())
t0 = time.perf_counter()
stats = cache.precompute(["pip"], ["happy"], variants=1)
out["cache_entry_s"] = round(time.perf_counter() - t0, 2)
t0 = time.perf_counter()
frames, st = cache.start_from_cache("pip", "happy", 0, seed=1)
out["cache_hit_ms"] = round((time.perf_counter() - t0) * 1000, 2)
out["cached_frames"] = list(frames.shape)
states = [st] + [eng.start_stream("pip", e, 1.0, seed=i) for i, e in enumerate(["sad", "angry", "idle"])]
times = []
for _ in range(4):
    t0 = time.perf_counter()
    lat = eng.sample_chunks(states)
    fr = eng.decode_chunks(states, lat)
    torch.cuda.synchronize()
    times.append(round((time.perf_counter() - t0) * 1000, 1))
    assert fr.shape == (4, 8, 360, 640, 4) and fr.dtype.name == "uint8", fr.shape
eng.set_emotion(states[1], "happy", 0.8)
fr = eng.decode_chunks(states, eng.sample_chunks(states))
out["chunk_ms_4_streams"] = times
out["frames_shape"] = list(fr.shape)
out["gpu"] = torch.cuda.get_device_name()
print(json.dumps(out, indent=1))
