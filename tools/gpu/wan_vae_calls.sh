#!/usr/bin/env bash
# Pipelined fp8 Wan bench at 10 streams (tools/gpu/wan_pipeline.sh's settings), a chunk's steady latent
# frames decoded in one VAE call (the default) against one call per frame, same machine, one process
# each (the second starts warm from the first's inductor cache). Usage: bash tools/gpu/wan_vae_calls.sh [T] [N]
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/avatarcast-inductor}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T=${1:-3}; N=${2:-10}
for k in $T 1; do
  echo "== VAE frames per call: $k"
  timeout ${LIMIT:-330} python3 -m avatarcast.realtime.bench.wan --random-weights --chunk-frames $T --vae-batch 5 --compile --compile-vae \
    --vae-channels-last --seconds 8 --reps 4 --steps 4 --sessions $N --fp8 --pipeline --vae-frames-per-call $k \
    -o "$OUT/wan_t${T}_fp8_pipeline_calls$k.json" 2>&1 | grep -E "^(B=|N=|cue|fast path)|Error|error" | tail -20
done
nvidia-smi --query-gpu=name --format=csv,noheader
