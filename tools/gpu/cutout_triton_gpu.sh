#!/usr/bin/env bash
# The cut-out draw's and the device compose's Triton kernels (engines/tiny/cutout_triton.py, triton_kernels.py) on
# CUDA: their frames against numpy's, then the engine's fps at 200 and 400 streams beside the copy decoder's and the
# torch compose's, in the same call. One call of the device tool, under 10 minutes:
#   run(command="bash tools/gpu/cutout_triton_gpu.sh", carry=[".whl"], timeout_s=600)
# Results in $OUT: log.txt and results.tar (check.json, ops_s200.json, bench_*.json, prof_*.json).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$ROOT
if ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then  # the bench imports realtime/settings (pydantic...): not in the image
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/whl "$ROOT"/.whl/*.whl \
    && export PYTHONPATH=$ROOT:/tmp/whl
fi
OUT=${OUT:-/tmp/out}
R=/tmp/cutout_triton
mkdir -p "$OUT" "$R"
export R
steps() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  echo "== frames: the Triton draw and compose (cuda) against numpy"
  timeout 150 python3 -m tools.cutout_torch_check --device cuda --streams 16 --kernel triton --compose triton \
    | tee "$R/check.json"
  echo "== the draw alone (draw_boxes_t), 200 streams over 16 avatars"
  timeout 60 python3 -m tools.cutout_torch_ops --device cuda --streams 200 --avatars 16 --kernel triton \
    | tee "$R/ops_s200.json"
  B="python3 -m avatarcast.realtime.cli bench engine --engine motion --backend torch --device cuda --seconds 8 --json"
  run() {  # name, sessions, options...
    local name=$1 s=$2
    shift 2
    echo "== bench $name, $s streams: $*"
    timeout 75 $B --sessions "$s" "$@" -o "$R/bench_${name}_s$s.json" >/dev/null
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d.get(k) for k in ('fps','chunk_latency_ms','decode_ms','realtime_streams')})" "$R/bench_${name}_s$s.json"
  }
  run cutout_triton 200 --opt draw=cutout --opt kernel=triton --opt compose=triton
  run copy 200 --opt draw=copy
  run copy_compose_triton 200 --opt draw=copy --opt compose=triton
  run cutout_triton 400 --opt draw=cutout --opt kernel=triton --opt compose=triton
  for k in "cutout triton" "copy torch" "copy triton"; do
    set -- $k
    echo "== profile $1, compose $2, 200 streams"
    kern=""; [ "$1" = cutout ] && kern="--kernel triton"
    timeout 90 python3 -m tools.motion_torch_profile --device cuda --sessions 200 --chunks 4 --draw "$1" $kern \
      --compose-kernel "$2" | tee "$R/prof_$1_$2_s200.json"
  done
}
timeout "${LIMIT:-560}" bash -c "$(declare -f steps); steps" > "$R/log.txt" 2>&1
cp "$R/log.txt" "$OUT/log.txt"
tail -c 6000 "$R/log.txt"
(cd "$R" && tar cf "$OUT/results.tar" .)
ls -la "$OUT"
