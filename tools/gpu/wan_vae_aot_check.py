"""GPU check of the AOTInductor VAE path (engines/wan/vae_aot.py) at the real Wan2.2 VAE size.

Decodes streams (a first chunk, then steady chunks of 3 latent frames) at batch 1 and 3 through
AOT packages in DIR and through the eager decoder, and prints the largest difference and the
seconds the packages took (built or loaded). `--embed`: packages carry their own weights;
`--copy`: shared weights handed over as copies. Run twice on one machine: cold, then warm.
`--tiny`: only a two-layer model through the same export, package and load (does loading an
AOTInductor package work on this machine at all? On the H100 device the VAE's crashed in the loader).
python -X faulthandler -m tools.gpu.wan_vae_aot_check DIR [--embed] [--copy] [--tiny]
"""

from __future__ import annotations

import json
import sys
import time

import torch


def tiny(out_dir: str) -> dict:
    """A Linear + GELU model on the GPU: exported, packaged (weights in the package), loaded, run."""
    from pathlib import Path

    import torch._inductor

    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU()).cuda().eval()
    x = torch.randn(4, 64, device="cuda")
    path = str(Path(out_dir) / "tiny.pt2")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        ep = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("b", min=2, max=16)},))
        torch._inductor.aoti_compile_and_package(ep, package_path=path)
        print("tiny: packaged", flush=True)
        runner = torch._inductor.aoti_load_package(path)
        print("tiny: loaded", flush=True)
        diff = float((runner(x) - m(x)).abs().max())
    return {"tiny_max_abs_diff": diff, "torch": torch.__version__}


def main(argv: list[str]) -> int:
    if "--tiny" in argv:
        print(json.dumps(tiny(argv[0])), flush=True)
        return 0
    from diffusers import AutoencoderKLWan

    from avatarcast.engines.wan.shapes import VAE_22
    from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder, VaeStreamCache

    torch.manual_seed(0)
    with torch.device("cuda"):
        vae = AutoencoderKLWan(**VAE_22).to(torch.bfloat16).eval()
    aot = StreamingVaeDecoder(vae, max_batch=5, compile=True, channels_last=True, frames_per_call=3, aot_dir=argv[0])
    aot.aot.share_weights = "--embed" not in argv
    aot.aot.user_managed = "--copy" not in argv
    eager = StreamingVaeDecoder(vae, max_batch=5, channels_last=True, frames_per_call=3)
    report: dict = {
        "gpu": torch.cuda.get_device_name(),
        "share_weights": aot.aot.share_weights,
        "user_managed": aot.aot.user_managed,
        "max_abs_diff": {},
        "s": {},
    }
    gen = torch.Generator(device="cuda").manual_seed(1)
    with torch.no_grad():
        for B in (1, 3):
            t0 = time.perf_counter()
            ca, ce = [VaeStreamCache() for _ in range(B)], [VaeStreamCache() for _ in range(B)]
            diffs = []
            for frames in (4, 3, 3):
                z = torch.randn(B, 48, frames, 22, 40, device="cuda", generator=gen)
                a, e = aot.decode(z, ca), eager.decode(z, ce)
                diffs.append(max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, e)))
            torch.cuda.synchronize()
            report["max_abs_diff"][B] = diffs
            report["s"][B] = round(time.perf_counter() - t0, 2)
            print(json.dumps(report), flush=True)
    report["built"], report["loaded"] = aot.aot.built, aot.aot.loaded
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
