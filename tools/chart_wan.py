"""Chart of `bench engine --engine wan` reports: fps by concurrent streams, against the 8 fps line.

    cd docs/bench && python -m tools.chart_wan wan_h100_{t1_eager_graphs,k4,k3,fp8_t2_k4,fp8_t3_k4}.json \
        wan_h100_fp8_t3_k4_{pipeline,pipeline_vae_chunk,batch5}.json wan_h100_server_pipeline_regional_warm.json \
        wan_h100_server_vae_b1_warm_60s.json -o wan_h100.png
"""

from __future__ import annotations

import argparse
import json
import sys


def label(r: dict) -> str:
    how = "CUDA graphs" if r.get("cuda_graphs") else "eager"
    if r.get("compile"):
        how = "compiled (regional)" if r["compile"] == "regional" else "compiled"
    vae = "VAE compiled" if r.get("compile_vae") else "VAE eager"
    if r.get("compile_vae") and "streams" in r and not r.get("vae_compiled_calls"):  # before the steady-state fix
        vae = "VAE eager (its compile never engaged)"
    extra = (
        (", fp8" if r.get("fp8") else "")
        + (", 2 pipelined groups" if r.get("pipeline") else "")
        + (f", calls of {r['batch']} (server)" if r.get("batch") else "")
        + (", VAE a chunk per call" if (r.get("vae_frames_per_call") or 1) > 1 else "")
        + (", one stream per VAE call" if r.get("vae_batch") == 1 and r.get("scheduled") else "")
    )
    return f"{r['steps']} steps, {r['chunk_video_frames']}-frame chunks, {how}, {vae}{extra}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("reports", nargs="+")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    top = 0
    for path in args.reports:
        r = json.load(open(path))
        series = [(label(r), sorted((int(n), s["fps"]) for n, s in r.get("streams", {}).items()))]
        depths = sorted({d for by_depth in r.get("scheduled", {}).values() for d in by_depth}, reverse=True)
        for d in depths:  # `--scheduler`: sessions through the server's own scheduler, by depth
            how = "pipelined (depth 2)" if d == "2" else "calls in turn"
            series.append(
                (
                    f"{label(r)}, server scheduler {how}",
                    sorted((int(n), by_depth[d]["fps"]) for n, by_depth in r["scheduled"].items()),
                )
            )
        for name, pts in series:
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) > 1 else "D", label=name)
                top = max(top, max(p[0] for p in pts))
    xs = list(range(1, top + 2))
    ax.plot(xs, [8 * x for x in xs], "k--", lw=1, label="needed: 8 fps per stream")
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("frames per second, all streams")
    ax.set_title(f"Wan2.2-TI2V-5B at 640x360, random weights, {r.get('gpu', '')}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    ax.grid(alpha=0.3)
    fig.savefig(args.output, dpi=110, bbox_inches="tight")
    return 0


if __name__ == "__main__":
    sys.exit(main())
