"""Device check: the CUDA-graphed Wan transformer matches eager, and the streaming VAE decode
matches a whole-clip decode, at the real 5B/Wan2.2 widths (fewer layers to keep it quick)."""

import sys

import numpy as np
import torch

from avatarcast.engines.wan.checkpoint import CheckpointInfo
from avatarcast.engines.wan.engine import WanEngine
from avatarcast.engines.wan.graphs import GraphedDenoiser
from avatarcast.realtime.bench.wan import build_random

tr, vae = build_random(layers=2, vae_dtype="fp32")
eng = WanEngine(
    tr, vae, CheckpointInfo(None, None, None), device="cuda", dtype=torch.bfloat16, steps=2, chunk_latent_frames=1
)
g = torch.Generator(device="cuda").manual_seed(0)
ref = torch.randn(48, 22, 40, device="cuda", generator=g)
emb = [torch.randn(512, 4096, device="cuda", generator=g, dtype=torch.bfloat16) * 0.1 for _ in range(3)]
x = torch.randn(3, 48, 2, 22, 40, device="cuda", dtype=torch.bfloat16, generator=g)
t = torch.full((3, 440), 700.0, device="cuda")
text = torch.stack(emb)
with torch.no_grad():
    ref_out = tr(x, t, text, return_dict=False)[0].float()
    gd = GraphedDenoiser(tr, buckets=(1, 4))
    out = gd(x, t, text)[0].float()
    out2 = gd(x[:1], t[:1], text[:1, :300])[0].float()  # shorter prompt, padded with zeros
    ref2 = tr(x[:1], t[:1], torch.cat([text[:1, :300], torch.zeros_like(text[:1, 300:])], 1), return_dict=False)[
        0
    ].float()
err = (out - ref_out).abs().max().item() / ref_out.abs().max().item()
err2 = (out2 - ref2).abs().max().item() / ref2.abs().max().item()
print(f"graphs vs eager: max rel err {err:.2e} (B=3 in bucket 4), {err2:.2e} (B=1, padded prompt)")
states = [eng.start_stream(ref, emb[i], seed=i) for i in range(2)]
lats, outs = [], []
for _ in range(3):
    lats.append(eng.sample_chunks(states))
    outs.append(eng.decode_new(states, lats[-1]))
whole = eng.decode(torch.cat([ref[None, None].expand(2, 1, -1, -1, -1)] + lats, 1))
got = np.concatenate(outs, 1).astype(int)
d = np.abs(got - whole[:, 1:].astype(int))
print(
    f"streaming vs whole-clip decode (fp32 VAE): max abs diff {d.max()} of 255, mean {d.mean():.3f}; "
    f"shapes {got.shape} {whole.shape}"
)
ok = err < 0.02 and err2 < 0.02 and d.max() <= 2
print("CHECK", "OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
