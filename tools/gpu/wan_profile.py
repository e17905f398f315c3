"""Device: where one Wan 5B step (B streams, chunk shapes) and one streaming VAE frame spend GPU time."""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder, VaeStreamCache
from avatarcast.realtime.bench.wan import build_random

B = int(sys.argv[1]) if len(sys.argv) > 1 else 8
torch.backends.cudnn.benchmark = True
tr, vae = build_random(vae_dtype="bf16")
x = torch.randn(B, 48, 2, 22, 40, device="cuda", dtype=torch.bfloat16)
t = torch.full((B, 440), 700.0, device="cuda")
text = torch.randn(B, 512, 4096, device="cuda", dtype=torch.bfloat16) * 0.1
with torch.no_grad():
    for _ in range(2):
        tr(x, t, text, return_dict=False)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        tr(x, t, text, return_dict=False)
        torch.cuda.synchronize()
print(p.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=70))
d = StreamingVaeDecoder(vae)
cs = [VaeStreamCache() for _ in range(4)]
z = torch.randn(4, 48, 3, 22, 40, device="cuda")
with torch.no_grad():
    d.decode(z, cs)
    z1 = torch.randn(4, 48, 1, 22, 40, device="cuda")
    d.decode(z1, cs)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        d.decode(z1, cs)
        torch.cuda.synchronize()
print(p.key_averages().table(sort_by="cuda_time_total", row_limit=16, max_name_column_width=70))
