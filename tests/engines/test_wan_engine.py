"""The `wan` engine on a tiny random Wan2.2-shaped checkpoint (same diffusers classes, CPU, seconds)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from avatarcast.engines.wan.checkpoint import WanCheckpointError, inspect_checkpoint
from avatarcast.engines.wan.engine import WanEngine
from tests.engines.wan_checkpoint import TEXT_DIM, H, W, Z, tiny_transformer
from tests.engines.wan_checkpoint import make_checkpoint as _make_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _make_checkpoint(tmp_path_factory.mktemp("wan") / "ckpt")


# the engine the tests load: 2 steps, 2-latent-frame chunks, a 36x64 output
SMALL_ENGINE = dict(
    steps=2, shift=5.0, chunk_latent_frames=2, context_latent_frames=1, height=H, width=W, out_height=36, out_width=64
)


@pytest.fixture(scope="module")
def engine(ckpt) -> WanEngine:
    return WanEngine.load(ckpt, **SMALL_ENGINE)


def _ref_image() -> np.ndarray:
    yy, xx = np.mgrid[0:40, 0:80]
    return np.stack([xx * 3, yy * 6, (xx + yy) * 2], -1).astype(np.uint8)  # resized to 32x64


def _embeds(seed: int, length: int = 5) -> torch.Tensor:
    return torch.randn(1, length, TEXT_DIM, generator=torch.Generator().manual_seed(seed))


def test_inspect_checkpoint_ok(ckpt):
    info = inspect_checkpoint(ckpt)
    assert info.transformer_dir == ckpt.resolve() / "transformer"
    assert not info.has_text_encoder and "text_encoder/config.json" in info.text_encoder_missing


def test_inspect_checkpoint_names_missing_pieces(ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    for f in (bad / "vae").glob("*.safetensors"):
        f.unlink()
    (bad / "transformer" / "config.json").unlink()
    with pytest.raises(WanCheckpointError) as e:
        inspect_checkpoint(bad)
    msg = str(e.value)
    assert str(bad.resolve()) in msg and "transformer/config.json" in msg and "vae weights" in msg
    assert isinstance(e.value, ValueError)
    with pytest.raises(WanCheckpointError, match="not a directory"):
        inspect_checkpoint(tmp_path / "nope")


def test_inspect_checkpoint_missing_shard(ckpt, tmp_path):
    bad = tmp_path / "sharded"
    shutil.copytree(ckpt, bad)
    (bad / "vae" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors"}}'
    )
    with pytest.raises(WanCheckpointError, match="vae/diffusion_pytorch_model-00001-of-00002.safetensors"):
        inspect_checkpoint(bad)


def test_encode_prompts_without_text_encoder(engine):
    with pytest.raises(WanCheckpointError, match="text encoder"):
        engine.encode_prompts(["a happy cartoon face"])


def test_reference_latent_shape(engine):
    ref = engine.reference_latent(_ref_image())
    assert ref.shape == (Z, H // 8, W // 8) and torch.isfinite(ref).all()


def test_chunks_shapes_determinism_and_continuation(engine):
    ref = engine.reference_latent(_ref_image())

    def run(seed0: int):
        states = [
            engine.start_stream(ref, _embeds(1), seed=seed0),
            engine.start_stream(ref, _embeds(2, length=7), seed=seed0 + 1),
        ]
        first = engine.sample_chunks(states)
        ctx_after_first = [s.context.clone() for s in states]
        second = engine.sample_chunks(states)
        return states, first, ctx_after_first, second

    states, a1, ctx1, a2 = run(0)
    assert a1.shape == (2, 2, Z, H // 8, W // 8) and torch.isfinite(a1).all() and torch.isfinite(a2).all()
    assert not torch.allclose(a1[0], a1[1])  # different seeds and prompts
    for b, s in enumerate(states):
        assert torch.equal(ctx1[b], a1[b, -1:].permute(1, 0, 2, 3))  # context = last new frame
        assert torch.equal(s.last_context, ctx1[b])  # chunk 2 was sampled from chunk 1's tail
        assert s.frames_done == 4
    _, b1, _, b2 = run(0)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    _, c1, _, _ = run(10)
    assert not torch.allclose(a1, c1)


def test_set_prompt_changes_next_chunk(engine):
    ref = engine.reference_latent(_ref_image())
    outs = []
    for switch in (False, True):
        st = engine.start_stream(ref, _embeds(1), seed=3)
        engine.sample_chunks([st])
        if switch:
            engine.set_prompt(st, _embeds(99))
        outs.append(engine.sample_chunks([st]))
    assert not torch.allclose(outs[0], outs[1])
    with pytest.raises(ValueError):
        engine.set_prompt(st, torch.zeros(1, 3, TEXT_DIM + 1))


def test_decode_frames(engine):
    ref = engine.reference_latent(_ref_image())
    states = [engine.start_stream(ref, _embeds(1), seed=s) for s in (0, 1)]
    frames = engine.next_chunk(states)  # context-decoded: 4 frames per new latent frame
    assert len(frames) == 2 and frames[0].shape == (8, 36, 64, 3) and frames[0].dtype == np.uint8
    lat = engine.sample_chunks(states)
    clip = engine.decode(lat)  # decoded as a clip: 1 + 4 * (T - 1) frames
    assert clip.shape == (2, 5, 36, 64, 3) and clip.dtype == np.uint8


def test_bfloat16_and_scalar_timestep_fallback(ckpt, monkeypatch):
    eng = WanEngine.load(ckpt, dtype=torch.bfloat16, steps=1, height=H, width=W, out_height=H, out_width=W)
    assert eng.per_token_timesteps and eng.transformer.dtype == torch.bfloat16
    ref = eng.reference_latent(_ref_image())
    out = eng.sample_chunks([eng.start_stream(ref, _embeds(1), seed=0)])
    assert out.shape == (1, 1, Z, H // 8, W // 8) and out.dtype == torch.float32 and torch.isfinite(out).all()
    eng.per_token_timesteps = False  # older transformers: one timestep per sample
    out2 = eng.sample_chunks([eng.start_stream(ref, _embeds(1), seed=0)])
    assert torch.isfinite(out2).all() and not torch.allclose(out, out2)
    assert eng.decode(out2).shape == (1, 1, H, W, 3)


def test_first_chunk_matches_diffusers_ti2v_pipeline(engine):
    """Chunk 1 (context = reference frame) equals diffusers' Wan 2.2 TI2V loop (expand_timesteps)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from PIL import Image

    sched = FlowMatchEulerDiscreteScheduler(shift=5.0)
    sched.set_timesteps(2)
    eng = WanEngine(
        engine.transformer,
        engine.vae,
        engine.info,
        sigmas=[float(s) for s in sched.sigmas[:-1]],
        chunk_latent_frames=2,
        height=H,
        width=W,
        out_height=H,
        out_width=W,
    )
    img = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    ref, emb = eng.reference_latent(img), _embeds(1)
    ours = eng.sample_chunks([eng.start_stream(ref, emb, seed=0)])
    noise = torch.randn(Z, 2, H // 8, W // 8, generator=torch.Generator().manual_seed(0))
    pipe = WanImageToVideoPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=eng.vae,
        scheduler=sched,
        transformer=eng.transformer,
        expand_timesteps=True,
    )
    pipe.set_progress_bar_config(disable=True)
    lat = torch.cat([torch.zeros(1, Z, 1, H // 8, W // 8), noise[None]], 2)
    out = pipe(
        image=Image.fromarray(img),
        prompt_embeds=emb,
        guidance_scale=1.0,
        height=H,
        width=W,
        num_frames=9,
        num_inference_steps=2,
        latents=lat,
        output_type="latent",
    ).frames
    torch.testing.assert_close(out[0, :, 0], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, :, 1:].permute(0, 2, 1, 3, 4), ours, atol=1e-5, rtol=0)


def test_streaming_decode_equals_whole_clip_decode(engine):
    """Chunk by chunk with the VAE's causal cache == the whole stream decoded as one clip."""
    ref = engine.reference_latent(_ref_image())
    states = [engine.start_stream(ref, _embeds(1), seed=0), engine.start_stream(ref, _embeds(2), seed=1)]
    lat, outs = [], []
    for _ in range(3):
        lat.append(engine.sample_chunks(states))
        outs.append(engine.decode_new(states, lat[-1]))
    assert [o.shape for o in outs] == [(2, 8, 36, 64, 3)] * 3
    assert all(s.vae.frames == 1 + 2 * 3 for s in states)  # context primed once, then only new frames
    whole = engine.decode(torch.cat([ref[None, None].expand(2, 1, -1, -1, -1)] + lat, 1))  # ref | 3 chunks
    assert whole.shape == (2, 1 + 4 * 6, 36, 64, 3)
    got = np.concatenate(outs, 1).astype(int)
    assert np.abs(got - whole[:, 1:].astype(int)).max() <= 1  # rounding of float noise only


def test_streaming_decode_mixes_fresh_and_running_streams(engine):
    """A stream joining a running batch primes its own cache; batching changes no frame."""
    ref = engine.reference_latent(_ref_image())

    def scenario(together: bool):
        a = engine.start_stream(ref, _embeds(1), seed=0)
        first = engine.decode_new([a], engine.sample_chunks([a]))
        b = engine.start_stream(ref, _embeds(2), seed=5)  # joins one chunk later: its cache is new
        lat = engine.sample_chunks([a, b])
        if together:
            out = engine.decode_new([a, b], lat)
        else:
            out = np.concatenate([engine.decode_new([a], lat[:1]), engine.decode_new([b], lat[1:])])
        assert a.vae.frames == 1 + 4 and b.vae.frames == 1 + 2
        return first, out

    (f1, both), (f2, apart) = scenario(True), scenario(False)
    assert both.shape == (2, 8, 36, 64, 3) and np.array_equal(f1, f2)
    assert np.abs(both.astype(int) - apart.astype(int)).max() <= 1
    assert np.abs(both[0].astype(int) - both[1].astype(int)).max() > 10  # different streams


def _counted(vae, **kw):
    """A compiled StreamingVaeDecoder whose backend (no inductor: fast) lists the graphs it compiles."""
    from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder

    graphs: list[int] = []

    def backend(gm, example_inputs):
        graphs.append(len(example_inputs))
        return gm.forward

    torch._dynamo.reset()
    return StreamingVaeDecoder(vae, compile=True, compile_backend=backend, **kw), graphs


def test_stream_caches_own_their_memory(engine):
    """A cache kept between chunks holds only its own frames, not the batch's merged cache or the
    activation it was sliced from (on an H100 such views doubled the peak memory), eager or compiled."""
    from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder, VaeStreamCache

    gen = torch.Generator().manual_seed(2)
    for dec in (
        StreamingVaeDecoder(engine.vae, max_batch=3, frames_per_call=2),
        _counted(engine.vae, max_batch=1, frames_per_call=2)[0],
    ):
        caches = [VaeStreamCache() for _ in range(3)]
        for T in (3, 2):
            dec.decode(torch.randn(3, Z, T, 4, 8, generator=gen), caches)
            held = [f for c in caches for f in c.feats if torch.is_tensor(f)]
            assert held and all(f.untyped_storage().nbytes() == f.numel() * f.element_size() for f in held)
    torch._dynamo.reset()


def test_fp8_blocks_quantize_every_block_linear_and_stay_close(ckpt):
    """engines/wan/fp8.py: every linear layer of the transformer blocks becomes fp8 (per-channel weights,
    per-token activations); on the CPU the same quantized numbers are multiplied in float32, so this
    checks the quantization and the module surgery; the kernel (torch._scaled_mm) is checked on the GPU
    by `bench engine --engine wan --fp8` (fp8_rel_err)."""
    from avatarcast.engines.wan.fp8 import FP8_MAX, Fp8Linear, convert_blocks_to_fp8, quantize_rows

    x = torch.randn(6, 32) * torch.logspace(-2, 2, 6)[:, None]
    q, s = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (6, 1)
    back = q.float() * s
    assert ((back - x).abs() <= x.abs().amax(1, keepdim=True) / 16).all()  # e4m3: 3 mantissa bits
    assert torch.allclose(back.abs().amax(1), x.abs().amax(1), rtol=1e-6)  # each row's max maps to FP8_MAX
    assert float(q.float().abs().max()) == FP8_MAX

    eng = WanEngine.load(ckpt, **SMALL_ENGINE)
    ref = eng.reference_latent(_ref_image())
    linears = sum(isinstance(m, torch.nn.Linear) for m in eng.transformer.blocks.modules())
    before = eng.sample_chunks([eng.start_stream(ref, _embeds(1), seed=3)])
    assert convert_blocks_to_fp8(eng.transformer) == linears > 0
    assert not any(isinstance(m, torch.nn.Linear) for m in eng.transformer.blocks.modules())
    assert sum(isinstance(m, Fp8Linear) for m in eng.transformer.modules()) == linears
    after = eng.sample_chunks([eng.start_stream(ref, _embeds(1), seed=3)])
    err = float((after - before).abs().max() / before.abs().max())
    assert 0 < err < 0.1, err


def test_steady_frames_decode_several_per_call_like_one_per_call(engine):
    """frames_per_call=3 (one decoder call for a chunk's steady frames) gives the frames of one call each."""
    from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder, VaeStreamCache

    z = torch.randn(2, Z, 1 + 3 * 3, 4, 8, generator=torch.Generator().manual_seed(3))
    outs = {}
    for k in (1, 3):
        dec = StreamingVaeDecoder(engine.vae, max_batch=2, frames_per_call=k)
        calls = []
        hook = engine.vae.decoder.register_forward_pre_hook(
            lambda m, a, kw, calls=calls: calls.append(a[0].shape[2]), with_kwargs=True
        )
        caches = [VaeStreamCache(), VaeStreamCache()]
        chunks = [dec.decode(z[:, :, :1], caches)]  # a fresh stream's first frame primes its cache
        chunks += [dec.decode(z[:, :, t : t + 3], caches) for t in (1, 4, 7)]
        hook.remove()
        outs[k] = torch.cat([torch.stack(c) for c in chunks], 2)
        assert calls == ([1] * 10 if k == 1 else [1, 1, 2, 3, 3])  # the frame after the first is not steady yet
    assert outs[1].shape[:3] == (2, 3, 1 + 4 * 9)
    torch.testing.assert_close(outs[3], outs[1], atol=1e-5, rtol=1e-4)
    assert outs[1].abs().amax() > 0.05  # a real picture, not a blank


@pytest.mark.slow
def test_compiled_vae_makes_few_graphs_warms_them_up_and_never_recompiles(engine):
    """Steady decodes compile one graph per batch-size class, all at warm_up: a new batch size or a
    cache sliced from another batch never stalls the streams with a compile."""
    from avatarcast.engines.wan.vae_stream import VaeStreamCache

    dec, graphs = _counted(engine.vae, max_batch=5, channels_last=True, frames_per_call=2)
    # latents of 2x4 (as in test_wan_vae_start): the graphs count batch classes and strides, not the picture's size
    dec.warm_up((2, 4), range(1, 6))
    n = len(graphs)
    assert 1 <= n <= 3, graphs  # batch 1, 2 and >= 3 (a guard in conv2d's shape checks)
    assert dec.compiled_calls == 5
    gen = torch.Generator().manual_seed(0)
    for B in (3, 1, 5, 2, 4):
        caches = [VaeStreamCache() for _ in range(B)]
        dec.decode(torch.randn(B, Z, 3, 2, 4, generator=gen), caches)
        for _ in range(2):
            dec.decode(torch.randn(B, Z, 2, 2, 4, generator=gen), caches)
        # a batch made of streams sliced out of a bigger one (strides differ): still no compile
        dec.decode(torch.randn(1, Z, 2, 2, 4, generator=gen), caches[:1])
    assert len(graphs) == n and dec.compiled_calls == 5 + 5 * 3
    torch._dynamo.reset()


def test_compiled_vae_one_stream_per_call_is_one_static_graph(engine):
    """max_batch=1 (serve's --wan-vae-batch default): every batch of streams decodes one stream per
    call through a single static graph, giving the frames a batched decode gives."""
    from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder, VaeStreamCache

    one, graphs = _counted(engine.vae, max_batch=1, channels_last=True, frames_per_call=2)
    one.warm_up((2, 4), range(1, one.max_batch + 1))
    assert len(graphs) == 1 and one.compiled_calls == 1
    batched = StreamingVaeDecoder(engine.vae, max_batch=4, frames_per_call=2)
    gen = torch.Generator().manual_seed(1)
    a, b = [VaeStreamCache() for _ in range(3)], [VaeStreamCache() for _ in range(3)]
    for T in (3, 2, 2):
        z = torch.randn(3, Z, T, 2, 4, generator=gen)
        for x, y in zip(one.decode(z, a), batched.decode(z, b)):
            assert x.shape == y.shape and torch.allclose(x, y, atol=1e-5)
    assert len(graphs) == 1 and one.compiled_calls == 1 + 3 * 2
    torch._dynamo.reset()


def test_regional_compile_traces_one_block_for_all_blocks():
    """compile="regional" (a faster warm restart): the transformer's repeated blocks share one compiled
    graph per batch size, and the output is the eager model's."""
    from avatarcast.engines.wan.graphs import compile_transformer

    torch.manual_seed(0)
    tr = tiny_transformer(num_layers=3).eval()

    def inputs(B: int):
        g = torch.Generator().manual_seed(B)
        return (
            torch.randn(B, Z, 2, H // 8, W // 8, generator=g),
            torch.full((B, 2 * (H // 16) * (W // 16)), 500.0),
            torch.randn(B, 7, TEXT_DIM, generator=g),
        )

    graphs: list[bool] = []  # per compiled graph: does it hold the patch embedding (outside the blocks)?

    def backend(gm, example_inputs):
        graphs.append("patch_embedding" in gm.code)
        return gm.forward

    from avatarcast.engines.wan.fp8 import convert_blocks_to_fp8

    assert convert_blocks_to_fp8(tr) > 0  # as served with --wan-fp8 1: the blocks' fp8 buffers are graph inputs too
    torch._dynamo.reset()
    with torch.no_grad():
        eager = {B: tr(*inputs(B), return_dict=False)[0] for B in (1, 2)}
        fn = compile_transformer(tr, "regional", backend=backend)
        for B in (1, 2, 2, 1):
            torch.testing.assert_close(fn(*inputs(B), return_dict=False)[0], eager[B], rtol=0, atol=0)
    assert graphs == [False, False], graphs  # a block's graph per batch size, not one per block (3 blocks)
    torch._dynamo.reset()
    graphs.clear()
    with torch.no_grad():  # "full" (a fresh model): the whole model in one graph
        full = compile_transformer(type(tr).from_config(tr.config).eval(), "full", backend=backend)
        full(*inputs(1), return_dict=False)
    assert graphs and graphs[0] is True, graphs
    assert compile_transformer(tr, False) is tr
    with pytest.raises(ValueError, match="compile mode"):
        compile_transformer(tr, "blocks")
    torch._dynamo.reset()
