#!/usr/bin/env bash
# Cold start, then warm restart (torch.compile artifacts cached on disk) of the compiled Wan engine.
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/avatarcast-inductor} TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for run in cold warm; do
  timeout ${LIMIT:-280} python3 -m avatarcast.realtime.bench.wan --random-weights --compile --compile-vae -o "$OUT/wan_compiled_$run.json" "$@" 2>&1 \
    | grep -v -i -E "warn|autotun" | grep -E "^(B=|N=|cue)" ; echo "$run rc=${PIPESTATUS[0]}"
  python3 -c "import json;r=json.load(open('$OUT/wan_compiled_$run.json'));print('$run', {k:r[k] for k in ('ready_s','load_s','graph_capture_s')})" 2>/dev/null
done
