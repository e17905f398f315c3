#!/usr/bin/env bash
# fp8 transformer blocks vs the bf16 baseline, same machine, same settings as tools/gpu/wan_final.sh:
# 4 steps, chunks of 2 latent frames (8 video frames), compiled transformer in CUDA graphs, compiled
# channels-last bf16 VAE. Usage: bash tools/gpu/wan_fp8.sh [chunk latent frames, default 2] [fp8|bf16|both]
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/avatarcast-inductor}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T=${1:-2}; which=${2:-both}
common="--random-weights --chunk-frames $T --vae-batch 5 --compile --compile-vae --vae-channels-last --seconds 6 --reps 6 --steps 4 --sessions 8,10"
run() {  # name, extra args
  timeout ${LIMIT:-400} python3 -m avatarcast.realtime.bench.wan $common $2 -o "$OUT/wan_t${T}_$1.json" 2>&1 \
    | grep -E "^(B=|N=|cue|fast path)|Error|error" | tail -20
}
[ "$which" != bf16 ] && { echo "== fp8, T=$T"; run fp8 --fp8; }
[ "$which" != fp8 ] && { echo "== bf16, T=$T"; run bf16 ""; }
nvidia-smi --query-gpu=name --format=csv,noheader
