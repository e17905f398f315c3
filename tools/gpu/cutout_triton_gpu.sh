#!/usr/bin/env bash
# The cut-out draw's and the device compose's Triton kernels (engines/tiny/cutout_triton.py, triton_kernels.py) on
# CUDA, their default there: their frames against numpy's (and the launched chunks against those made one at a time),
# then the engine's fps with --motion-draw auto (the cut-out draw) at 200 and 400 streams beside one call at a time
# planned in one process (no pipelining, no host pool), in the same call; 200 sessions through the server's scheduler;
# where a chunk's time goes. One call of the device tool, under 10 minutes:
#   run(command="bash tools/gpu/cutout_triton_gpu.sh", carry=[".whl"], timeout_s=600)
# Results in $OUT: log.txt and results.tar (check.json, [ops_s200.json,] bench_*.json, prof_cutout_s200.json).
set -uo pipefail
cd "$(dirname "$0")/../.."
. tools/gpu/env.sh  # ROOT, OUT, PYTHONPATH (+ .whl)
R=/tmp/cutout_triton
mkdir -p "$OUT" "$R"
# OPS=1: the draw alone too; QUICK=1: not the host pool alone, one call at a time at 400 streams nor the profile
export R AVATARS=${AVATARS:-pip,luna,random-424242} OPS=${OPS:-0} QUICK=${QUICK:-0}
sched() {  # SCHED_ONLY=1: only these, the runs through the scheduler
  local B="python3 -m avatarcast.realtime.cli bench engine --engine motion --backend torch --device cuda --seconds ${SECONDS_:-8} --json"
  for mb in ${SCHED_BATCHES:-default 200}; do
    echo "== through the scheduler, 200 sessions, max batch $mb"
    timeout "${SCHED_TIMEOUT:-240}" $B --scheduler --sessions 200 $([ $mb = default ] || echo --max-batch $mb) -o "$R/sched_s200_b$mb.json" \
      >/dev/null
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d.get(k) for k in ('fps','chunk_interval_ms_p50','chunk_interval_ms_p95','mean_batch','max_batch','pipeline_depth','realtime_streams','realtime')})" "$R/sched_s200_b$mb.json"
  done
}
steps() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  echo "== frames: the cut-out draw and compose on CUDA, their default kernels (Triton's), against numpy"
  timeout 120 python3 -m tools.cutout_torch_check --device cuda --streams 16 --avatars "$AVATARS" | tee "$R/check.json"
  if [ "${OPS:-0}" = 1 ]; then
    echo "== the draw alone (draw_boxes_t), 200 streams over 16 avatars"
    timeout 60 python3 -m tools.cutout_torch_ops --device cuda --streams 200 --avatars 16 --kernel triton \
      | tee "$R/ops_s200.json"
  fi
  B="python3 -m avatarcast.realtime.cli bench engine --engine motion --backend torch --device cuda --seconds 8 --json"
  run() {  # name, sessions, options...
    local name=$1 s=$2
    shift 2
    echo "== bench $name, $s streams: $*"
    timeout 75 $B --sessions "$s" "$@" -o "$R/bench_${name}_s$s.json" >/dev/null
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d.get(k) for k in ('fps','chunk_latency_ms','decode_ms','launch_ms','wait_ms','pipeline_depth','host_workers','realtime_streams')})" "$R/bench_${name}_s$s.json"
  }
  # the host's share: one call at a time and planned in this process (as before launch_chunks and the host pool),
  # the host pool alone, then with two calls in flight (the default on CUDA): the same call, so the ratios compare
  run serial 200 --opt pipeline=1 --opt host_workers=0
  [ "$QUICK" = 1 ] || run pooled 200 --opt pipeline=1
  run auto 200  # --motion-draw auto: the cut-out draw, Triton's kernels, pipelined, host workers
  run auto 400
  [ "$QUICK" = 1 ] || run serial 400 --opt pipeline=1 --opt host_workers=0
  # the server's engine loop: 200 sessions through its scheduler, each asking for its next chunk once it has the
  # last, at the engine's batch (8 a call) and at 200 a call
  sched
  [ "$QUICK" = 1 ] && return
  echo "== profile: the cut-out draw, its default kernels, 200 streams"
  timeout 90 python3 -m tools.motion_torch_profile --device cuda --sessions 200 --chunks 4 --draw cutout \
    | tee "$R/prof_cutout_s200.json"
}
what=steps
[ "${SCHED_ONLY:-0}" = 1 ] && what=sched
export SECONDS_=${SECONDS_:-8} SCHED_BATCHES=${SCHED_BATCHES:-default 200}
timeout "${LIMIT:-560}" bash -c "$(declare -f sched steps); $what" > "$R/log.txt" 2>&1
cp "$R/log.txt" "$OUT/log.txt"
tail -c 6000 "$R/log.txt"
(cd "$R" && tar cf "$OUT/results.tar" .)
ls -la "$OUT"
