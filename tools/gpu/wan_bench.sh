#!/usr/bin/env bash
# The Wan engine on the GPU device: correctness check, then `bench engine --engine wan` at 5B.
#   bash tools/gpu/wan_bench.sh [extra bench args]
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
python3 tools/gpu/wan_check.py 2>&1 | tee "$OUT/wan_check.txt"
python3 -m avatarcast.realtime.bench.wan --random-weights --json -o "$OUT/wan_bench.json" "$@" 2>&1 | tee "$OUT/wan_bench.log" | grep -v Warning | tail -60
