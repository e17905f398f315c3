"""How the VAE's compiled decode gets ready at a start, on CPU with the tiny VAE.

In the background (`--wan-vae-warmup background`): streams decode eagerly, with the same frames,
until the graphs are compiled, then switch; a failed compile leaves them eager.
As AOTInductor packages (engines/wan/vae_aot.py): a cold start exports and compiles two packages
(batch 1, batches 2..max); a warm start (a new decoder over the same directory, as a restarted
server is) loads them and compiles nothing; both give the frames of the eager decoder, chunk
after chunk, for every batch size."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.engines.wan_checkpoint import Z, tiny_vae

# latents of 2x4 (frames of 16x32): the packages, the warm start and the background switch do not
# depend on the picture's size, and the eager decodes the frames are checked against cost a quarter
LATENT_HW = (2, 4)


def _stream_frames(dec, batches: list[int], seed: int = 0) -> list[torch.Tensor]:
    """Each batch size in turn: a fresh group of streams, its first chunk then two steady chunks."""
    from avatarcast.engines.wan.vae_stream import VaeStreamCache

    gen = torch.Generator().manual_seed(seed)
    out = []
    for B in batches:
        caches = [VaeStreamCache() for _ in range(B)]
        for frames in (1 + 3, 3, 3):  # 3 latent frames a call once steady (frames_per_call)
            out.append(torch.stack(dec.decode(torch.randn(B, Z, frames, *LATENT_HW, generator=gen), caches)))
    return out


def _same(got: list[torch.Tensor], want: list[torch.Tensor], tol: float) -> None:
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.slow
def test_aot_packages_decode_like_eager_and_a_warm_start_only_loads_them(tmp_path):
    from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder

    torch.manual_seed(0)
    vae = tiny_vae(num_res_blocks=0).eval()  # one residual block an up block: a smaller graph to compile
    batches = [2, 1, 3]
    want = _stream_frames(StreamingVaeDecoder(vae, max_batch=3, frames_per_call=3), batches)
    cold = StreamingVaeDecoder(vae, max_batch=3, compile=True, frames_per_call=3, aot_dir=tmp_path)
    got = _stream_frames(cold, batches)
    assert len(cold.aot.built) == 2 and cold.aot.loaded == []  # batch 1 and batches 2..3
    assert cold.compiled_calls == 2 * len(batches)  # each group's two steady chunks
    _same(got, want, 1e-4)
    assert want[-1].abs().amax() > 0.05  # real pictures
    assert sorted(p.name for p in tmp_path.glob("*.pt2")) == sorted(cold.aot.built)  # no temporary left over

    warm = StreamingVaeDecoder(vae, max_batch=3, compile=True, frames_per_call=3, aot_dir=tmp_path)
    got = _stream_frames(warm, [3, 1, 2], seed=1)
    assert warm.aot.built == [] and sorted(warm.aot.loaded) == sorted(cold.aot.built)
    want = _stream_frames(StreamingVaeDecoder(vae, max_batch=3, frames_per_call=3), [3, 1, 2], seed=1)
    _same(got, want, 1e-4)

    # the packages hold no weights: they run on the decoder's own parameters, changed ones included
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(-1.0)
    got = _stream_frames(warm, [2], seed=2)
    want = _stream_frames(StreamingVaeDecoder(vae, max_batch=3, frames_per_call=3), [2], seed=2)
    _same(got, want, 1e-4)


def test_package_names_follow_shapes_and_weights_layout(tmp_path):
    """A package is found again only for the same shapes, dtype, batch range and weight layout."""
    from avatarcast.engines.wan.vae_aot import AotSteadyDecoder

    vae = tiny_vae().eval()
    aot = AotSteadyDecoder(vae.decoder, 34, tmp_path, max_batch=3)
    x = torch.zeros(2, Z, 3, 4, 8)
    key = ("n", (0, 1), (Z, 3, 4, 8), ((8, 2, 4, 8), (8, 2, 4, 8)), torch.float32)
    base = aot._path(key, x)
    assert base == aot._path(key, x) and base.parent == tmp_path
    others = {
        aot._path(("1",) + key[1:], x),
        aot._path(key[:2] + ((Z, 3, 8, 8),) + key[3:], x),
        aot._path(key[:4] + (torch.bfloat16,), x),
        AotSteadyDecoder(vae.decoder, 34, tmp_path, max_batch=5)._path(key, x),
    }
    assert base not in others and len(others) == 4
    vae.decoder.conv_out.weight.data = vae.decoder.conv_out.weight.data.contiguous(memory_format=torch.channels_last_3d)
    assert aot._path(key, x) != base  # compiled kernels assume the weights' strides


@pytest.mark.slow
def test_a_package_that_cannot_be_built_falls_back_to_torch_compile(tmp_path, caplog):
    """An unwritable cache directory (or a failed export) costs the warm restart, never the stream."""
    from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(len(example_inputs))
        return gm.forward

    torch.manual_seed(0)
    vae = tiny_vae(num_res_blocks=0).eval()
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    torch._dynamo.reset()
    dec = StreamingVaeDecoder(
        vae, max_batch=2, compile=True, frames_per_call=3, compile_backend=backend, aot_dir=blocked / "aoti"
    )
    with caplog.at_level("WARNING", logger="avatarcast.engines.wan.vae_stream"):
        got = _stream_frames(dec, [2, 1])
    assert dec.aot is None and graphs and dec.compiled_calls == 4
    assert "no AOTInductor package" in caplog.text and "NotADirectoryError" in caplog.text
    want = _stream_frames(StreamingVaeDecoder(vae, max_batch=2, frames_per_call=3), [2, 1])
    _same(got, want, 1e-5)
    torch._dynamo.reset()


def _gated_backend(gate: threading.Event, callers: list[str], fail: bool = False, compiles: list[str] | None = None):
    """A torch.compile backend whose compile waits for `gate` and whose graphs note who calls them
    (and `compiles`, which thread compiled each graph)."""

    def backend(gm, example_inputs):
        if compiles is not None:
            compiles.append(threading.current_thread().name)
        assert gate.wait(60)
        if fail:
            raise RuntimeError("no compiler here")

        def run(*args):
            callers.append(threading.current_thread().name)
            return gm.forward(*args)

        return run

    return backend


@pytest.mark.slow
def test_background_warm_up_decodes_eagerly_until_the_graphs_are_ready(caplog):
    from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder

    torch.manual_seed(0)
    vae = tiny_vae(num_res_blocks=0).eval()
    eager = StreamingVaeDecoder(vae, max_batch=3, frames_per_call=3)
    gate, callers, compiles = threading.Event(), [], []
    torch._dynamo.reset()
    dec = StreamingVaeDecoder(
        vae,
        max_batch=3,
        compile=True,
        frames_per_call=3,
        compile_backend=_gated_backend(gate, callers, compiles=compiles),
    )
    thread = dec.warm_up_in_background(LATENT_HW, range(1, 4))
    assert thread is not None and not dec.compiled_ready.is_set()
    got, want = _stream_frames(dec, [2, 1]), _stream_frames(eager, [2, 1])  # while the compile waits
    _same(got, want, 1e-5)
    assert callers == [] and not dec.compiled_ready.is_set()

    with caplog.at_level("INFO", logger="avatarcast.engines.wan.vae_stream"):
        gate.set()
        thread.join(120)
    assert dec.compiled_ready.is_set() and dec.compiled_ready_s is not None
    assert "compiled decoder serving after" in caplog.text
    assert set(callers) == {"wan-vae-compile"}  # the warm-up's own steady calls
    got, want = _stream_frames(dec, [3, 1], seed=1), _stream_frames(eager, [3, 1], seed=1)
    _same(got, want, 1e-5)
    assert callers.count(threading.current_thread().name) == 4  # now the graphs serve: 2 groups x 2 chunks
    assert compiles and set(compiles) == {"wan-vae-compile"}  # and the serving thread compiled none
    torch._dynamo.reset()


def test_a_failed_background_compile_leaves_the_decode_eager(caplog):
    from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder

    torch.manual_seed(0)
    vae = tiny_vae(num_res_blocks=0).eval()
    gate, callers = threading.Event(), []
    gate.set()
    torch._dynamo.reset()
    dec = StreamingVaeDecoder(
        vae, max_batch=2, compile=True, frames_per_call=3, compile_backend=_gated_backend(gate, callers, fail=True)
    )
    with caplog.at_level("ERROR", logger="avatarcast.engines.wan.vae_stream"):
        dec.warm_up_in_background(LATENT_HW, range(1, 3)).join(120)
    assert not dec.compiled_ready.is_set() and "frames stay eager" in caplog.text
    got = _stream_frames(dec, [2])
    want = _stream_frames(StreamingVaeDecoder(vae, max_batch=2, frames_per_call=3), [2])
    _same(got, want, 1e-5)
    assert callers == []
    torch._dynamo.reset()
