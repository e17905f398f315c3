"""`avatarcast serve --engine wan` on a tiny random Wan2.2-shaped checkpoint: the adapter, the prompt
embeddings store, the latents cache, settings, and a real server driven over WebSocket (CPU)."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from avatarcast.engines.wan.checkpoint import WanCheckpointError
from avatarcast.engines.wan.prompts import PromptEmbedsMissing, normalize_prompt
from avatarcast.engines.wan.serving import WanAvatarEngine
from avatarcast.templates import load_templates
from avatarcast.templates.cache import LatentsCache
from tests.engines.wan_checkpoint import TEXT_DIM, H, W, Z, make_checkpoint

GRID = {"height": H, "width": W}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """'full' (with text encoder + tokenizer), 'bare' (transformer + vae), 'broken' (vae weights gone)."""
    root = tmp_path_factory.mktemp("wan")
    full = make_checkpoint(root / "full", text_encoder=True)
    bare, broken = root / "bare", root / "broken"
    for d in (bare, broken):
        for part in ("transformer", "vae"):
            shutil.copytree(full / part, d / part)
    for f in (broken / "vae").glob("*.safetensors"):
        f.unlink()
    return {"full": full, "bare": bare, "broken": broken}


@pytest.fixture(scope="module")
def embeds_dir(ckpts, tmp_path_factory) -> Path:
    """A cache dir whose prompt embeddings were written by `avatarcast precompute --prompts-only`."""
    from avatarcast.realtime.precompute import main

    d = tmp_path_factory.mktemp("cache")
    assert (
        main(
            [
                "--engine",
                "wan",
                "--checkpoint",
                str(ckpts["full"]),
                "--cache-dir",
                str(d),
                "--prompts-only",
                "--wan-height",
                str(H),
                "--wan-width",
                str(W),
                "--json",
            ]
        )
        == 0
    )
    return d


@pytest.fixture(scope="module")
def engine(ckpts, embeds_dir) -> WanAvatarEngine:
    return WanAvatarEngine.load(ckpts["bare"], embeds_dir, steps=2, **GRID)


def test_adapter_has_the_engine_interface_the_server_drives(engine):
    templates = load_templates()
    assert engine.emotions == tuple(templates) and engine.emotion_index("sad") == list(templates).index("sad")
    with pytest.raises(ValueError, match="unknown emotion"):
        engine.emotion_index("bored")
    assert engine.steps == 2 and engine.frames_per_chunk == 4 and engine.weights_hash.startswith("wan-")
    states = [engine.start_stream("pip", "happy", 0.8, seed=s) for s in (0, 1)]
    lat = engine.sample_chunks(states)
    assert isinstance(lat, np.ndarray) and lat.shape == (2, 1, Z, H // 8, W // 8) and lat.dtype == np.float32
    frames = engine.decode_chunks(states, lat)
    assert frames.shape == (2, 4, 360, 640, 4) and frames.dtype == np.uint8 and (frames[..., 3] == 255).all()
    assert frames[..., :3].std() > 0  # a picture, not a constant
    chunk = engine.next_chunk(states)
    assert len(chunk) == 2 and chunk[0].shape == (4, 360, 640, 4) and states[0].frames_done == 2
    assert engine.decode(lat[:, 0]).shape == (2, 360, 640, 4)  # flat decode: one still per latent
    # the context the latents cache stores round-trips into start_stream(ctx=...)
    resumed = engine.start_stream("pip", "happy", 0.8, seed=0, ctx=states[0].ctx)
    assert torch.equal(resumed.context, states[0].context) and states[0].ctx.shape == (Z, H // 8, W // 8)
    with pytest.raises(ValueError, match="context must be"):
        engine.start_stream("pip", "happy", ctx=np.zeros((Z + 1, H // 8, W // 8), np.float32))
    ref = engine.reference_image("pip")
    assert ref.shape == (320, 640, 3)  # 640x360 cropped to the 32x64 grid's aspect, on an opaque background


def test_intensity_blends_the_emotion_prompt_with_idle(engine):
    idle, happy = engine.prompt_embeds("idle", 1.0), engine.prompt_embeds("happy", 1.0)
    assert not torch.equal(idle, happy)
    assert torch.equal(engine.prompt_embeds("happy", 0.0), idle)
    torch.testing.assert_close(engine.prompt_embeds("happy", 0.25), idle + 0.25 * (happy - idle))
    assert torch.equal(engine.prompt_embeds("idle", 0.2), idle)  # the neutral prompt is not blended
    st = engine.start_stream("pip", "idle", 0.5, seed=0)
    engine.set_emotion(st, "happy", 0.5)
    assert st.emotion == engine.emotion_index("happy") and st.intensity == 0.5
    torch.testing.assert_close(st.prompt_embeds, engine.prompt_embeds("happy", 0.5))


def test_copied_state_advances_without_touching_the_original(engine):
    st = engine.start_stream("pip", "sad", 0.9, seed=3)
    engine.next_chunk([st])
    twin = st.copy()
    a, b = engine.next_chunk([twin])[0], engine.next_chunk([st])[0]
    assert np.array_equal(a, b)  # same rng and VAE cache, advanced separately
    assert st.frames_done == twin.frames_done == 2


@pytest.mark.slow
def test_pipelined_scheduler_gives_the_frames_of_calls_in_turn(engine):
    """--wan-pipeline: the scheduler queues a call (launch_chunks) while the last one's frames are collected
    on another thread. The frames must be those of the same calls made one after the other, and busy
    time must not count the overlapping calls twice. (tools/wan_pipeline_check.py: the same on a GPU.)"""
    from tools.wan_pipeline_check import compare

    out = compare(engine, "pip", streams=5, batch=2, rounds=3)
    assert out["max_abs_diff"] == 0 and out["in_turn_repeat_max_abs_diff"] == 0, out
    assert out["batches"] == 9 and out["batch_sizes"] == [1, 2] and out["times_ordered"], out
    assert 0 < out["busy_s"] <= out["wall_s"] + 1e-3, out
    assert engine.pipeline_depth == 1  # restored


def test_a_failing_pipelined_call_fails_its_jobs_only(engine):
    """A call that fails while being queued fails its own jobs; the scheduler goes on with the next."""
    from avatarcast.realtime.scheduler import ChunkJob, EngineScheduler

    async def go() -> tuple[BaseException | None, object]:
        engine.pipeline_depth = 2
        sch = EngineScheduler(engine, max_batch=1, max_wait_s=0.0)
        await sch.start()
        try:
            bad = engine.start_stream("pip", "happy", 0.9, seed=0)
            bad.context = bad.context[:, :, :1]  # a context the sampler cannot take: a real engine error
            good = engine.start_stream("pip", "sad", 0.9, seed=1)
            now = time.monotonic()
            out = await asyncio.gather(
                sch.submit(ChunkJob("bad", bad, now, "happy", 0.9)),
                sch.submit(ChunkJob("good", good, now + 0.5, "sad", 0.9)),
                return_exceptions=True,
            )
            return out[0], out[1]
        finally:
            await sch.close()
            engine.pipeline_depth = 1

    err, ok = asyncio.run(go())
    assert isinstance(err, RuntimeError), err
    assert ok.frames.shape == (4, 360, 640, 4) and ok.batch == 1


def test_graph_buckets_are_fewer_when_compiled():
    from avatarcast.engines.wan.serving import wan_buckets

    assert wan_buckets(5) == (1, 2, 3, 5) and wan_buckets(2) == (1, 2) and wan_buckets(1) == (1,)
    assert wan_buckets(5, compiled=True) == (1, 5) and wan_buckets(1, compiled=True) == (1,)


def test_prompt_embeddings_are_computed_once_then_loaded_without_text_encoder(ckpts, embeds_dir, engine, monkeypatch):
    templates = load_templates()
    files = list((embeds_dir / "prompt_embeds" / engine.embeds_id).glob("*.npz"))
    assert engine.embeds_id.startswith("umt5-") and len(files) == len(templates)
    from avatarcast.engines.wan.engine import WanEngine

    monkeypatch.setattr(WanEngine, "encode_prompts", lambda *a, **k: pytest.fail("re-encoded stored prompts"))
    again = WanAvatarEngine.load(ckpts["full"], embeds_dir, steps=2, **GRID)  # has a text encoder, uses the store
    assert again.embeds_id == engine.embeds_id
    monkeypatch.undo()
    direct = again.wan.encode_prompts([templates["sad"].prompt])[0]  # what the text encoder says
    stored = engine.prompt_embeds("sad", 1.0)
    assert stored.shape == (512, TEXT_DIM)
    torch.testing.assert_close(stored, direct.to(stored.dtype), atol=1e-6, rtol=0)
    assert normalize_prompt("  a \n b ") == "a b"


def test_missing_prompt_embeddings_fail_with_what_to_do_and_random_is_opt_in(ckpts, tmp_path, engine):
    with pytest.raises(PromptEmbedsMissing) as e:
        WanAvatarEngine.load(ckpts["bare"], tmp_path, steps=2, **GRID)
    msg = str(e.value)
    assert "avatarcast precompute --engine wan" in msg and "--wan-prompt-embeds random" in msg
    assert "text_encoder/config.json" in msg and isinstance(e.value, WanCheckpointError)
    rnd = WanAvatarEngine.load(ckpts["bare"], tmp_path, steps=2, prompt_embeds="random", **GRID)
    assert rnd.embeds_id == "random" and rnd.weights_hash != engine.weights_hash
    assert not torch.equal(rnd.prompt_embeds("happy", 1.0), rnd.prompt_embeds("sad", 1.0))
    assert not (tmp_path / "prompt_embeds").exists()  # random embeddings are never stored


def test_a_distilled_schedule_sets_the_steps_and_the_cache_key(ckpts, embeds_dir, engine):
    """--wan-sigmas / --wan-timesteps reach the sampler: its steps are their count, and cached chunks
    made with another schedule are not reused (the weights hash holds the sigmas)."""
    from avatarcast.engines.sampler import FlowMatchEulerSampler

    dmd = WanAvatarEngine.load(ckpts["bare"], embeds_dir, steps=2, sigmas=[1.0, 0.6], **GRID)
    assert dmd.steps == 2 and dmd.wan.sampler.sigma_list == [1.0, 0.6, 0.0]
    assert engine.wan.sampler.sigma_list == FlowMatchEulerSampler(steps=2, shift=5.0).sigma_list  # [1, 5/6, 0]
    assert dmd.weights_hash != engine.weights_hash
    st = dmd.start_stream("pip", "happy", 0.9, seed=0)
    assert dmd.next_chunk([st])[0].shape == (4, 360, 640, 4)


def test_latents_cache_keys_follow_checkpoint_steps_and_chunking(ckpts, embeds_dir, engine, tmp_path):
    from safetensors.torch import load_file, save_file

    templates = load_templates()
    key = LatentsCache(engine, templates, tmp_path).key("pip", "happy")
    other = tmp_path / "retrained"
    for part in ("transformer", "vae"):
        shutil.copytree(ckpts["bare"] / part, other / part)
    f = next((other / "transformer").glob("*.safetensors"))
    w = load_file(str(f))
    name = sorted(w)[0]
    w[name] = w[name] + 0.01  # same shapes and file size, other weights
    save_file(w, str(f), metadata={"format": "pt"})
    keys = {key}
    for eng in (
        WanAvatarEngine.load(other, embeds_dir, steps=2, **GRID),
        WanAvatarEngine.load(ckpts["bare"], embeds_dir, steps=3, **GRID),
        WanAvatarEngine.load(ckpts["bare"], embeds_dir, steps=2, chunk_latent_frames=2, **GRID),
    ):
        keys.add(LatentsCache(eng, templates, tmp_path).key("pip", "happy"))
    assert len(keys) == 4
    assert (
        LatentsCache(WanAvatarEngine.load(ckpts["bare"], embeds_dir, steps=2, **GRID), templates, tmp_path).key(
            "pip", "happy"
        )
        == key
    )  # and stays put across loads


def test_latents_cache_round_trip(engine, tmp_path):
    templates = load_templates()
    cache = LatentsCache(engine, templates, tmp_path)
    assert cache.precompute(["pip"], ["happy"], variants=1)["computed"] == 1
    fresh = LatentsCache(engine, templates, tmp_path)
    stats = fresh.precompute(["pip"], ["happy"], variants=1)
    assert stats["loaded"] == 1 and stats["computed"] == 0
    entry = fresh.get("pip", "happy")
    assert entry.frames.shape == (4, 360, 640, 4) and entry.latents.shape == (1, Z, H // 8, W // 8)
    assert np.array_equal(entry.frames, cache.get("pip", "happy").frames)
    _, st = fresh.start_from_cache("pip", "happy")
    assert engine.next_chunk([st])[0].shape == (4, 360, 640, 4)


def test_settings_require_a_complete_checkpoint(ckpts):
    from avatarcast.realtime.settings import Settings

    with pytest.raises(WanCheckpointError, match="needs --checkpoint"):
        Settings(engine="wan").validate()
    with pytest.raises(WanCheckpointError, match="vae weights"):
        Settings(engine="wan", checkpoint=str(ckpts["broken"])).validate()
    with pytest.raises(ValueError, match="wan_prompt_embeds"):
        Settings(engine="wan", checkpoint=str(ckpts["bare"]), wan_prompt_embeds="zeros").validate()
    Settings(engine="wan", checkpoint=str(ckpts["bare"])).validate()
    assert Settings(engine="wan", checkpoint="x", wan_height=H).wan_kwargs()["height"] == H
    with pytest.raises(ValueError, match="wan_fp8 must be 0 or 1"):
        Settings(engine="wan", checkpoint=str(ckpts["bare"]), wan_fp8=2).validate()
    assert Settings(engine="wan", checkpoint="x", wan_fp8=1).wan_kwargs()["fp8"] is True
    from avatarcast.realtime.cli import build_parser

    args = build_parser().parse_args(
        ["serve", "--engine", "wan", "--checkpoint", "x", "--wan-fp8", "1", "--wan-batch", "3"]
    )
    assert args.wan_fp8 == 1 and args.wan_batch == 3
    assert Settings(engine="wan", checkpoint="x", wan_batch=3).wan_kwargs()["batch"] == 3
    assert Settings(engine="wan", checkpoint="x").wan_kwargs()["vae_batch"] == 1
    assert build_parser().parse_args(["serve", "--engine", "wan", "--wan-vae-batch", "2"]).wan_vae_batch == 2
    with pytest.raises(ValueError, match="wan_vae_batch must be >= 1"):
        Settings(engine="wan", checkpoint=str(ckpts["bare"]), wan_vae_batch=0).validate()
    with pytest.raises(ValueError, match="wan_batch must be >= 1"):
        Settings(engine="wan", checkpoint=str(ckpts["bare"]), wan_batch=0).validate()
    # --wan-compile-mode picks what --wan-compile 1 compiles; --wan-pipeline is a 0/1 switch
    assert Settings(engine="wan", checkpoint="x").wan_kwargs()["compile"] is False
    assert (
        Settings(engine="wan", checkpoint="x", wan_compile=1, wan_compile_mode="regional").wan_kwargs()["compile"]
        == "regional"
    )
    with pytest.raises(ValueError, match="wan_compile_mode must be full or regional"):
        Settings(engine="wan", checkpoint=str(ckpts["bare"]), wan_compile_mode="blocks").validate()
    with pytest.raises(ValueError, match="wan_vae_warmup must be start or background"):
        Settings(engine="wan", checkpoint=str(ckpts["bare"]), wan_vae_warmup="later").validate()
    kw = Settings(engine="wan", checkpoint="x", wan_vae_warmup="background").wan_kwargs()
    assert kw["vae_warmup"] == "background"
    with pytest.raises(ValueError, match="wan_pipeline must be 0 or 1"):
        Settings(engine="wan", checkpoint=str(ckpts["bare"]), wan_pipeline=2).validate()
    # a distilled checkpoint's own schedule: sigmas as given, or a DMD denoising_step_list warped by the shift
    assert Settings(engine="wan", checkpoint="x").wan_kwargs()["sigmas"] is None
    assert Settings(engine="wan", checkpoint="x", wan_sigmas="1, 0.8,0.5").wan_kwargs()["sigmas"] == [1.0, 0.8, 0.5]
    dmd = Settings(engine="wan", checkpoint="x", wan_timesteps="1000,750,500,250", wan_shift=5.0).wan_schedule()
    np.testing.assert_allclose(dmd, [1.0, 0.9375, 2.5 / 3, 0.625])  # = 4 evenly spaced steps at shift 5
    for bad, match in [
        (dict(wan_sigmas="1,0.5", wan_timesteps="1000,500"), "not both"),
        (dict(wan_sigmas="0.5,0.8"), "wan_sigmas '0.5,0.8': sigmas must be strictly decreasing"),
        (dict(wan_sigmas="1,x"), "comma-separated numbers"),
        (dict(wan_timesteps="1200,500"), r"wan_timesteps must be in \(0, 1000\]"),
    ]:
        with pytest.raises(ValueError, match=match):
            Settings(engine="wan", checkpoint=str(ckpts["bare"]), **bad).validate()
    args = build_parser().parse_args(
        ["serve", "--engine", "wan", "--checkpoint", "x", "--wan-compile-mode", "full", "--wan-pipeline", "0"]
    )
    assert (args.wan_compile_mode, args.wan_pipeline) == ("full", 0)
    kw = Settings(engine="wan", checkpoint="x", wan_compile=1).wan_kwargs()  # the defaults measured fastest
    assert (kw["compile"], kw["pipeline"]) == ("regional", True)


def test_server_with_an_incomplete_checkpoint_fails_at_start_up(ckpts):
    from tests.conftest import running_server

    with pytest.raises(RuntimeError, match="server failed to start.*incomplete.*vae weights"):
        with running_server(engine="wan", checkpoint=str(ckpts["broken"])):
            pass


@pytest.mark.slow
def test_server_streams_the_wan_engine_and_reacts_to_an_emotion(ckpts, embeds_dir):
    import websockets
    from PIL import Image

    from avatarcast.realtime.protocol import unpack_frame
    from tests.conftest import running_server

    async def session(base: str) -> tuple[list, list]:
        frames, events = [], []
        async with websockets.connect(base.replace("http://", "ws://") + "/v1/ws?avatar=pip") as ws:

            async def pump(seconds: float, until=None) -> None:
                end = asyncio.get_running_loop().time() + seconds
                while (left := end - asyncio.get_running_loop().time()) > 0:
                    try:
                        m = await asyncio.wait_for(ws.recv(), left)
                    except TimeoutError:
                        break
                    if isinstance(m, bytes):
                        frames.append(unpack_frame(m))
                    else:
                        events.append(json.loads(m))
                    if until is not None and until():
                        return

            await pump(1.0)
            await ws.send(json.dumps({"type": "emotion", "label": "sad", "intensity": 0.9}))
            await pump(15.0, until=lambda: any(h.emotion == "sad" and h.source == "sampler" for h, _ in frames))
        return frames, events

    with running_server(
        engine="wan",
        checkpoint=str(ckpts["bare"]),
        cache_dir=str(embeds_dir),
        steps=2,
        wan_height=H,
        wan_width=W,
        avatars="pip",
        wan_batch=3,
        wan_pipeline=1,
    ) as (base, hub):
        st = httpx.get(base + "/v1/status").json()
        # --wan-batch: the scheduler's batch
        assert hub.services.engine.max_batch == 3 and st["scheduler"]["max_batch"] == 3
        assert st["scheduler"]["pipeline_depth"] == 2  # --wan-pipeline: two calls in flight
        assert st["engine"]["name"] == "wan" and st["engine"]["backend"] == "torch"
        assert st["engine"]["weights"] == hub.services.engine.weights_hash
        assert st["engine"]["vae_compiled"] is None  # the CPU decodes eagerly: nothing compiling
        assert hub.services.session_config.chunk_frames == 4
        frames, events = asyncio.run(session(base))
    heads = [h for h, _ in frames]
    sources = [(h.source, h.emotion) for h in heads]
    assert ("cache", "sad") in sources and ("sampler", "sad") in sources, sources
    assert [h.index for h in heads] == sorted(h.index for h in heads)
    img = Image.open(io.BytesIO(frames[-1][1]))
    assert img.format == "JPEG" and img.size == (640, 360)
    emo = [e["payload"] for e in events if e["type"] == "emotion"]
    assert emo and emo[0]["label"] == "sad" and emo[0]["source"] == "explicit"
    assert not [e for e in events if e["type"] == "error"]


def test_compiled_artifacts_are_cached_beside_the_latents_cache(tmp_path, monkeypatch):
    """A warm restart needs inductor's artifacts: kept in the cache dir, not inductor's /tmp default;
    a TORCHINDUCTOR_CACHE_DIR the user chose is kept."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    from avatarcast.engines.wan.serving import compile_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing diffusers leaves
    assert compile_cache_dir(tmp_path / "c") == (tmp_path / "c" / "inductor").resolve()
    assert cache_dir() == str((tmp_path / "c" / "inductor").resolve())  # what inductor will use
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache_dir(tmp_path / "c") == tmp_path / "mine" and (tmp_path / "mine").is_dir()
