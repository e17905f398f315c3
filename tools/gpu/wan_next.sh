#!/usr/bin/env bash
# The open questions of issue 5 in two device calls on one H100 (each under 600 s; the second must
# follow the first while the machine is warm, so that inductor's cache is filled):
#   bash tools/gpu/wan_next.sh 1   does any AOTInductor package load here (a two-layer model)? the
#                                  pipeline check's noise floor; a cold start, VAE compiled in the background
#   bash tools/gpu/wan_next.sh 2   warm starts: background (ready_s, full_speed_s, then 10 sessions
#                                  through the server's scheduler for 20 s) and start (the cuDNN change)
#   bash tools/gpu/wan_next.sh 3   one stream per VAE call (--wan-vae-batch 1: one static graph): a cold
#                                  start, a warm start then 10 sessions for 20 s, one more warm start
#   bash tools/gpu/wan_next.sh 4   a cold start (one stream per VAE call); warm starts with 10 sessions for 30 s,
#                                  peak memory per phase, with and without cuDNN heuristics for eager frames;
#                                  the pipeline check
#   bash tools/gpu/wan_next.sh 5   after 4: the same with 5 streams per VAE call (its graphs compile first),
#                                  then one stream per call again
#   bash tools/gpu/wan_next.sh 6   one stream per VAE call: a cold start; where the scheduled run's memory
#                                  peak comes from; 10 sessions for 60 s pipelined
#   bash tools/gpu/wan_next.sh 7|8 7: a cold start and where the memory peak comes from; 8: the same
#                                  and then 10 sessions for 60 s, pipelined and in turn
#   bash tools/gpu/wan_next.sh 9   the server's engine start (tools/gpu/wan_engine_start.py): a random 5B
#                                  checkpoint saved, then cold, warm and warm with the VAE in the background
# Everything lands in $OUT (logs and JSON); the wheels in .whl are installed first by the caller.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONPYCACHEPREFIX=$PWD/.cache/pycache
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
case "${1:-1}" in
1)
  echo "== AOTInductor, a two-layer model"
  timeout 90 python3 -X faulthandler -m tools.gpu.wan_vae_aot_check .cache/aoti-tiny --tiny > "$OUT/aoti_tiny.log" 2>&1
  echo "rc=$?"; grep -E "tiny|Error|Segmentation" "$OUT/aoti_tiny.log" | tail -4
  echo "== pipeline check with the in-turn noise floor"
  timeout 150 python3 -m tools.wan_pipeline_check > "$OUT/wan_pipeline_check.json" 2> "$OUT/wan_pipeline_check.log"
  echo "rc=$?"; tail -c 600 "$OUT/wan_pipeline_check.json"
  echo "== cold start, VAE in the background"
  PHASES=cold COLD_LIMIT=300 WARMUP=background bash tools/gpu/wan_warm_start.sh
  ;;
2)
  echo "== warm, VAE in the background, then 10 sessions"
  PHASES=warm WARMUP=background SECS=20 WARM_LIMIT=200 bash tools/gpu/wan_warm_start.sh
  echo "== warm, VAE compiled before ready"
  PHASES=warm WARMUP=start WARM_LIMIT=150 bash tools/gpu/wan_warm_start.sh
  ;;
3)
  PHASES=cold COLD_LIMIT=250 VAEB=1 bash tools/gpu/wan_warm_start.sh
  PHASES=warm SECS=20 WARM_LIMIT=200 VAEB=1 bash tools/gpu/wan_warm_start.sh
  OUT=$OUT/again PHASES=warm WARM_LIMIT=100 VAEB=1 bash tools/gpu/wan_warm_start.sh
  ;;
4)
  PHASES=cold COLD_LIMIT=150 VAEB=1 bash tools/gpu/wan_warm_start.sh
  PHASES=warm SECS=30 WARM_LIMIT=140 VAEB=1 bash tools/gpu/wan_warm_start.sh
  PHASES=warm SECS=30 WARM_LIMIT=140 VAEB=1 HEUR=0 TAG=_heur0 bash tools/gpu/wan_warm_start.sh
  echo "== pipeline check with the in-turn noise floor"
  timeout 120 python3 -m tools.wan_pipeline_check > "$OUT/wan_pipeline_check.json" 2> "$OUT/wan_pipeline_check.log"
  echo "rc=$?"; tail -c 600 "$OUT/wan_pipeline_check.json"
  ;;
5)
  [ "${2:-}" = b1 ] && PHASES=warm SECS=30 WARM_LIMIT=140 VAEB=1 bash tools/gpu/wan_warm_start.sh
  PHASES=warm SECS=30 WARM_LIMIT=300 VAEB=5 bash tools/gpu/wan_warm_start.sh  # cold for batch 5's VAE graphs
  PHASES=warm SECS=30 WARM_LIMIT=140 VAEB=1 TAG=_again bash tools/gpu/wan_warm_start.sh
  ;;
6)
  PHASES=cold COLD_LIMIT=150 VAEB=1 bash tools/gpu/wan_warm_start.sh
  PHASES=warm SECS=8 DEPTHS=1 MEMTRACE=1 WARM_LIMIT=120 VAEB=1 TAG=_memtrace bash tools/gpu/wan_warm_start.sh
  PHASES=warm SECS=60 WARM_LIMIT=170 VAEB=1 TAG=_60s bash tools/gpu/wan_warm_start.sh
  ;;
7)
  PHASES=cold COLD_LIMIT=150 VAEB=1 bash tools/gpu/wan_warm_start.sh
  PHASES=warm SECS=6 DEPTHS=1 MEMTRACE=1 WARM_LIMIT=120 VAEB=1 TAG=_memtrace bash tools/gpu/wan_warm_start.sh
  ;;
8)
  PHASES=cold COLD_LIMIT=150 VAEB=1 bash tools/gpu/wan_warm_start.sh
  PHASES=warm SECS=6 DEPTHS=1 MEMTRACE=1 WARM_LIMIT=100 VAEB=1 TAG=_memtrace bash tools/gpu/wan_warm_start.sh
  PHASES=warm SECS=60 DEPTHS=2,1 WARM_LIMIT=240 VAEB=1 TAG=_60s bash tools/gpu/wan_warm_start.sh
  ;;
9)
  echo "== the server's engine start (load_engine from serve flags): cold, warm, warm with the VAE in the background"
  timeout 150 python3 -m tools.gpu.wan_engine_start --save-random /tmp/wan5b 2>&1 | tail -3
  flags="--checkpoint /tmp/wan5b --cache-dir $PWD/.cache/serve --engine wan --wan-compile 1 --wan-fp8 1 --wan-chunk-latents 3
    --wan-prompt-embeds random"
  for run in cold warm; do
    timeout 200 python3 -m tools.gpu.wan_engine_start $flags > "$OUT/wan_engine_start_$run.json" 2> "$OUT/wan_engine_start_$run.log"
    echo "$run rc=$?"; grep -v '^  *"-\|^  *"[0-9a-z/]*",\?$' "$OUT/wan_engine_start_$run.json" | tr -d '\n'; echo
  done
  timeout 100 python3 -m tools.gpu.wan_engine_start $flags --wan-vae-warmup background > "$OUT/wan_engine_start_warm_background.json" \
    2> "$OUT/wan_engine_start_warm_background.log"
  echo "background rc=$?"; tr -d '\n' < "$OUT/wan_engine_start_warm_background.json"; echo
  tail -3 "$OUT"/wan_engine_start_*.log
  ;;
esac
