#!/usr/bin/env bash
# The server's schedule on one GPU: N streams in engine calls of at most 5 (serve --wan-batch 5), fp8
# blocks, 12-frame chunks, compiled transformer + VAE ("cold": inductor's disk cache empty); "warm":
# the same settings timed to ready once that cache is filled (a warm restart).
# Usage: bash tools/gpu/wan_server_schedule.sh [N] [cold|warm|both]
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/avatarcast-inductor} TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
N=${1:-10}; which=${2:-both}
common="--random-weights --chunk-frames 3 --vae-batch 5 --batch 5 --compile --compile-vae --vae-channels-last --steps 4 --fp8"
[ "$which" != warm ] && timeout ${LIMIT:-560} python3 -m avatarcast.realtime.bench.wan $common --seconds 6 --reps 3 --sessions $N \
  -o "$OUT/wan_t3_fp8_batch5.json" 2>&1 | grep -E "^(B=|N=|cue|fast path)|Error|error" | tail -20
[ "$which" != cold ] && timeout ${LIMIT_WARM:-200} python3 -m avatarcast.realtime.bench.wan $common --sessions $N --ready-only \
  -o "$OUT/wan_t3_fp8_batch5_warm.json" 2>&1 | grep -E "^(fast path)|Error|error" | tail -5
nvidia-smi --query-gpu=name --format=csv,noheader
