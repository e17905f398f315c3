#!/usr/bin/env bash
# The cut-out draw on CUDA (engines/tiny/cutout_torch.py) against numpy's frames, and its fps beside the copy
# decoder's in the same call (docs/bench/cutout_gpu_2026-12-06 and -07), with torch's ops (the kernels pinned to eager
# and torch: Triton's are the default on CUDA since, tools/gpu/cutout_triton_gpu.sh). One call, under 10 minutes:
#   run(command="bash tools/gpu/cutout_torch_gpu.sh", carry=[".whl"], timeout_s=600)
# From a tree staged beside the checkout (a worktree's files copied to DIR): STAGE=DIR bash DIR/tools/gpu/...
# Results in $OUT: log.txt and results.tar (check.json, ops_s200[_compiled].json, prof_<draw>_s<streams>.json,
# bench_<draw>_s<streams>.json).
# Steps in order of need, each under its own limit, all under LIMIT seconds (default 540).
set -uo pipefail
cd "$(dirname "$0")/../.."
. tools/gpu/env.sh  # ROOT, OUT, PYTHONPATH (+ .whl)
R=/tmp/cutout_gpu
mkdir -p "$OUT" "$R"
export CHUNKS=${CHUNKS:-4} R STREAMS=${STREAMS:-"200 50"} TRACE=${TRACE:-1}  # TRACE=1: one cut-out chunk traced
steps() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, avatarcast; print('torch', torch.__version__, torch.cuda.is_available(), avatarcast.__path__)"
  echo "== frames: torch (cuda) against numpy"
  timeout 120 python3 -m tools.cutout_torch_check --device cuda --streams 16 --kernel eager --compose torch \
    | tee "$R/check.json"
  # the figure that decides motion_weights.auto_draw on torch first: each draw's engine fps at 200 streams
  for draw in cutout copy; do
    echo "== bench engine $draw, 200 streams"
    timeout 80 python3 -m avatarcast.realtime.cli bench engine --engine motion --backend torch --device cuda \
      --sessions 200 --seconds 8 --opt draw=$draw --opt compose=torch $([ $draw = cutout ] && echo --opt kernel=eager) \
      --json -o "$R/bench_${draw}_s200.json" >/dev/null
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d[k] for k in ('fps','chunk_latency_ms','decode_ms','realtime_streams')})" "$R/bench_${draw}_s200.json"
  done
  echo "== the cut-out draw's ops and time a chunk (draw_boxes_t), 200 streams over 8 and 16 avatars"
  timeout 150 python3 -m tools.cutout_torch_ops --device cuda --streams 200 --avatars 8,16 --kernel eager \
    | tee "$R/ops_s200.json"
  for s in $STREAMS; do
    for draw in cutout copy; do
      echo "== profile $draw, $s streams"
      kern=""; [ "$draw" = cutout ] && kern="--kernel eager"
      timeout 110 python3 -m tools.motion_torch_profile --device cuda --sessions "$s" --chunks "$CHUNKS" --draw "$draw" \
        $kern --compose-kernel torch | tee "$R/prof_${draw}_s${s}.json"
    done
  done
  echo "== the cut-out draw's time a chunk, the sampling through torch.compile (16 avatars; the first call compiles)"
  timeout 150 python3 -m tools.cutout_torch_ops --device cuda --streams 200 --avatars 16 --kernel compiled \
    | tee "$R/ops_s200_compiled.json"
  [ "$TRACE" = 1 ] || return 0
  echo "== one cut-out chunk traced, 200 streams"
  timeout 100 python3 -m tools.motion_torch_profile --device cuda --sessions 200 --chunks 1 --draw cutout \
    --kernel eager --compose-kernel torch --trace "$R/trace_cutout_s200" | tee "$R/prof_cutout_s200_traced.json"
}
timeout "${LIMIT:-540}" bash -c "$(declare -f steps); steps" > "$R/log.txt" 2>&1
cp "$R/log.txt" "$OUT/log.txt"
tail -c 5000 "$R/log.txt"
(cd "$R" && tar cf "$OUT/results.tar" .)
ls -la "$OUT"
