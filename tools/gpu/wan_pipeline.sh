#!/usr/bin/env bash
# Pipelined Wan bench: two half-size groups, one's VAE decode on a second CUDA stream while the other
# samples. fp8 blocks, 4 steps, compiled transformer + VAE. Usage: bash tools/gpu/wan_pipeline.sh [T] [sessions]
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/avatarcast-inductor}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T=${1:-3}; N=${2:-10}
timeout ${LIMIT:-420} python3 -m avatarcast.realtime.bench.wan --random-weights --chunk-frames $T --vae-batch 5 --compile --compile-vae \
  --vae-channels-last --seconds 8 --reps 4 --steps 4 --sessions $N --fp8 --pipeline -o "$OUT/wan_t${T}_fp8_pipeline.json" 2>&1 \
  | grep -E "^(B=|N=|cue|fast path)|Error|error" | tail -20
nvidia-smi --query-gpu=name --format=csv,noheader
