#!/usr/bin/env bash
# The README's Wan figures: 4 and 3 steps, 8 and 10 streams, chunks of 2 latent frames (8 video
# frames), compiled transformer (CUDA graphs) and compiled channels-last bf16 VAE; then a warm restart.
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/avatarcast-inductor}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
common="--random-weights --chunk-frames 2 --vae-batch 5 --compile --compile-vae --vae-channels-last --seconds 6 --reps 6"
for steps in 4 3; do
  timeout ${LIMIT:-300} python3 -m avatarcast.realtime.bench.wan $common --sessions 8,10 --steps $steps -o "$OUT/wan_k${steps}.json" 2>&1 \
    | grep -E "^(B=|N=|cue)|Error"
  python3 -c "import json;r=json.load(open('$OUT/wan_k$steps.json'));print('k$steps', {k:r[k] for k in ('ready_s','graph_capture_s','memory_gb')})"
done
