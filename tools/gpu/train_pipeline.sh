#!/usr/bin/env bash
# The whole `tiny` training on the GPU device as one background job that outlives a device call
# (a process in its own session runs on while the machine is held), polled by later calls.
#   bash tools/gpu/train_pipeline.sh start [train_tiny args]   # starts it, then waits like `wait 500`
#   bash tools/gpu/train_pipeline.sh wait SECONDS              # waits (while it runs), copies results to $OUT
# Everything resumes from the checkpoint folder ($CKPT): if the machine was lost, carry the last
# results back into it and start again with the stages still to do.
# SEED=DIR (a carried folder, or a kept checkpoint under tools/ckpt) starts a fresh $CKPT from it:
# DIR's ae.pt and, where present, disc.pt (for decft), config.json and den_ema.pt (the denoiser resumes
# from it) are copied in, so `start --stages denoiser,denadv,lowres` trains the rest.
# The denoiser stage trains on the clips as they render (tools/train_tiny.py LatentBuilder).
# MODULE=tools.train_motion runs architecture 3's decoder training instead (same start / wait); its SEED
# folder holds motion_ema.pt (and motion_den.pt), as a kept checkpoint folder does (tools/ckpt/README.md).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
CK=${CKPT:-/tmp/avc/ckpt}  # outside the repo: a later call may replace the tree
mkdir -p "$CK"
MODULE=${MODULE:-tools.train_tiny}
running() { pgrep -f "$MODULE" >/dev/null; }
collect() {
  [ -n "${OUT:-}" ] || return 0
  for f in ae.pt disc.pt den.pt den_ema.pt den_ema_pre.pt lowres.pt motion_ema.pt motion_den.pt; do [ -f "$CK/$f" ] && cp "$CK/$f" "$OUT/"; done
  (cd "$CK" && tar czf "$OUT/logs.tgz" $(ls *.json *.png *.txt 2>/dev/null)) || true
}
wait_for() {
  local end=$((SECONDS + $1))
  while [ $SECONDS -lt $end ] && running; do sleep 5; done
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader || true
  tail -n 25 "$CK/train_log.txt"
  running && echo "STILL RUNNING" || echo "FINISHED"
  collect
}
case "${1:-}" in
  start)
    shift
    if [ -n "${SEED:-}" ] && [ ! -f "$CK/ae.pt" ] && [ ! -f "$CK/motion_ema.pt" ]; then
      for f in ae.pt disc.pt config.json den_ema.pt motion_ema.pt motion_den.pt; do
        [ -f "$SEED/$f" ] && cp "$SEED/$f" "$CK/" && echo "seeded $CK with $SEED/$f"
      done
    fi
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
    if running; then echo "already running"; else
      setsid nohup python3 -m "$MODULE" --work /tmp/avc --ckpt "$CK" "$@" >>"$CK/train_log.txt" 2>&1 </dev/null &
      echo "started $!"
    fi
    sleep 20
    wait_for 520
    ;;
  wait) wait_for "${2:-540}" ;;
  *) echo "usage: $0 start [args] | wait SECONDS" >&2; exit 2 ;;
esac
