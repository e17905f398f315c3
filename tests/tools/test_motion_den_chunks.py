"""The denoiser's training batches (tools/train_motion_den.Chunks): own-context rows, one chunk or a chain of the
model's own chunks. A real (small) denoiser samples them; the data are synthetic motions of the real sizes."""

import numpy as np
import pytest
import torch

from avatarcast.engines.avatar_world.skeleton import MOTION_DIM
from avatarcast.engines.tiny.motion_denoiser import build_denoiser
from tools.train_motion_den import CFG, Chunks
from tools.train_tiny import CLIP_FRAMES


def _data(n_clips: int = 12) -> dict:
    rng = np.random.default_rng(0)
    labels = np.repeat(rng.integers(0, 5, (n_clips, 1)), CLIP_FRAMES, axis=1)
    return {
        "motions": rng.normal(size=(n_clips, CLIP_FRAMES, MOTION_DIM)).astype(np.float32),
        "labels": labels,
        "avatar": np.zeros(n_clips, np.int64),
        "intensity": np.ones(n_clips, np.float32),
        "ref": rng.normal(size=(1, MOTION_DIM)).astype(np.float32),
    }


def _batch(chunks: Chunks, model, own: float, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return chunks.batch(8, gen, own=own, model=model)


class _Counting(torch.nn.Module):
    """The real denoiser, counting its calls (a chain of n chunks at s sampler steps calls it n * s times)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, *a):
        self.calls += 1
        return self.model(*a)


def test_own_rows_have_the_models_context_and_chains_sample_chunk_after_chunk():
    torch.manual_seed(0)
    model = _Counting(build_denoiser({"width": 48, "blocks": 1}).eval())
    data, mean, std = _data(), np.zeros(MOTION_DIM, np.float32), np.ones(MOTION_DIM, np.float32)
    one, three = Chunks(data, mean, std, own_chain=1), Chunks(data, mean, std, own_chain=3)
    T, K = CFG.chunk_frames, CFG.context_frames
    assert len(three.pairs_own[3]) < len(three.pairs_own[2]) < len(three.pairs_own[1]) == len(one.pairs_own[1])
    assert int(three.pairs_own[3][:, 1].min()) >= 3 * T + K  # room for three chunks and their context before
    m = one.m.reshape(len(data["motions"]), -1)
    windows = torch.cat([m[:, i * MOTION_DIM : (i + K) * MOTION_DIM] for i in range(CLIP_FRAMES - K + 1)])
    calls = {}
    for name, chunks in (("one", one), ("three", three)):
        calls[name] = []
        for seed in range(8):
            model.calls = 0
            x1, ctx, *_ = _batch(chunks, model, own=0.5, seed=seed)
            calls[name].append(model.calls)
            assert ctx.shape == (8, K * MOTION_DIM, 1, 1) and torch.isfinite(ctx).all()
            own_ctx, true_ctx = ctx[:4].reshape(4, -1), ctx[4:].reshape(4, -1)
            # own rows: a context the model sampled (no K-frame window of the data); the others: the data's own
            assert not torch.isclose(own_ctx[:, None], windows[None]).all(-1).any()
            assert torch.isclose(true_ctx[:, None], windows[None]).all(-1).any(1).all()
    assert max(calls["one"]) <= 2  # one chunk, 1 or 2 sampler steps
    assert max(calls["three"]) > 2  # some batches chained more than one chunk


def test_own_chain_out_of_range_refused():
    data, mean, std = _data(2), np.zeros(MOTION_DIM, np.float32), np.ones(MOTION_DIM, np.float32)
    with pytest.raises(ValueError):
        Chunks(data, mean, std, own_chain=0)
    with pytest.raises(ValueError):
        Chunks(data, mean, std, own_chain=9)
