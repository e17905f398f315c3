#!/usr/bin/env bash
# The server's own path on one GPU: N sessions submitting chunk jobs to the EngineScheduler over the
# serving adapter (WanAvatarEngine), calls of at most 5 streams, pipelined (depth 2: one call's VAE
# decode overlaps the next call's sampler steps) and, for comparison, in turn (depth 1). fp8 blocks,
# 12-frame chunks, compiled transformer + VAE. "cold": inductor's disk cache empty (fills it);
# "warm": the same settings once it is filled, so ready_s is a warm restart. The graphs are those
# serve captures with --wan-compile 1 (batch buckets 1 and 5).
# MODE=regional (the default, as serve) compiles only the transformer's repeated blocks; MODE=full the whole model.
# VAEB: most streams per VAE call (1, as serve's --wan-vae-batch: one static compiled graph; 5 before).
# Usage: [MODE=regional|full] [VAEB=1] [CHECK=1] bash tools/gpu/wan_server_pipeline.sh [N] [cold|warm] [seconds] [depths]
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# inside the repo's ignored .cache/: the device machine keeps it between calls while it stays warm
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor} TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
N=${1:-10}; which=${2:-cold}; secs=${3:-12}; depths=${4:-2}  # cold: 240 s compiling (regional; full: 500 s)
# CHECK=1 first (about a minute, nothing compiled): pipelined frames against the calls in turn, within
# the noise floor of two in-turn runs; mind the 600 s a call may take
[ "${CHECK:-0}" = 1 ] && timeout 150 python3 -m tools.wan_pipeline_check | tee "$OUT/wan_pipeline_check.json" | tail -1
timeout ${LIMIT:-580} python3 -m avatarcast.realtime.bench.wan --random-weights --chunk-frames 3 --vae-batch ${VAEB:-1} --batch 5 --compile --compile-mode ${MODE:-regional} \
  --compile-vae --vae-channels-last --steps 4 --fp8 --scheduler --depths $depths --server-buckets --seconds $secs --sessions $N \
  -o "$OUT/wan_server_pipeline_${MODE:-regional}_${which}.json" 2>&1 | tee "$OUT/wan_server_pipeline_${MODE:-regional}_${which}.log" | grep -E "^(N=|fast path)|Error|error|Traceback" | tail -20
nvidia-smi --query-gpu=name --format=csv,noheader
