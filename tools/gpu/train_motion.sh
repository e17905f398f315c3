#!/usr/bin/env bash
# Architecture 3's two trainings on the GPU device at once, as background jobs that outlive a device call
# (processes in their own session run on while the machine is held), polled by later calls:
# the decoder (tools.train_motion: frames rendered once by the CPUs, then held on the GPU) and the
# denoiser (tools.train_motion_den: motion vectors only). Each resumes from its folder.
#   SEED=DIR bash tools/gpu/train_motion.sh start "DECODER ARGS" "DENOISER ARGS" ["DECODER 2 ARGS"]
#                                                   # starts them, waits 500 s ("none": no denoiser)
#   bash tools/gpu/train_motion.sh wait SECONDS    # waits, copies to $OUT
# SEED's motion_ema.pt (a kept decoder: tools/ckpt/README.md) starts the decoder's folder; SEED2's the
# second decoder's (an optional third job: the GPU has room for two decoders' pools, about 32 GB each).
# $OUT gets the decoders' motion_ema.pt (the second's as motion_ema_2.pt), the denoiser's EMA weights
# (final and best by rollout score) in half precision, split in parts under the device's 16 MB per file
# (join: cat X.part* > X), and every run's logs and reports in one logs.tgz (8 files at most come back).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
DEC=${DEC:-/tmp/avc/m1} DEN=${DEN:-/tmp/avc/d1} DEC2=${DEC2:-/tmp/avc/m2}  # outside the repo: a later call may replace the tree
mkdir -p "$DEC" "$DEN" "$DEC2"
running() { pgrep -f "tools.train_motion" >/dev/null; }  # either module
collect() {
  [ -n "${OUT:-}" ] || return 0
  [ -f "$DEC/motion_ema.pt" ] && cp "$DEC/motion_ema.pt" "$OUT/"
  [ -f "$DEC2/motion_ema.pt" ] && cp "$DEC2/motion_ema.pt" "$OUT/motion_ema_2.pt"
  for f in motion_den motion_den_best; do
    [ -f "$DEN/$f.pt" ] || continue
    python3 - "$DEN/$f.pt" "/tmp/avc/${f}_half.pt" <<'PY'
import sys, torch
st = torch.load(sys.argv[1], map_location="cpu")
keep = {k: st[k] for k in ("arch", "mean", "std", "step") if k in st}
torch.save({**keep, "ema": {k: v.half() for k, v in st["ema"].items()}}, sys.argv[2])
PY
    split -b 15M -d "/tmp/avc/${f}_half.pt" "$OUT/${f}_half.pt.part"
  done
  (cd /tmp/avc && tar czf "$OUT/logs.tgz" $(for d in "$DEC" "$DEN" "$DEC2"; do
    ls "$d"/*.json "$d"/*.png "$d"/*.txt 2>/dev/null; done | sed 's|^/tmp/avc/||')) || true
}
wait_for() {
  local end=$((SECONDS + $1))
  while [ $SECONDS -lt $end ] && running; do sleep 5; done
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader || true
  tail -n 12 "$DEC/train_log.txt" "$DEN/train_log.txt" "$DEC2/train_log.txt" 2>/dev/null
  running && echo "STILL RUNNING" || echo "FINISHED"
  collect
}
case "${1:-}" in
  start)
    if [ -n "${SEED:-}" ] && [ ! -f "$DEC/motion.pt" ] && [ ! -f "$DEC/motion_ema.pt" ]; then
      cp "$SEED/motion_ema.pt" "$DEC/" && echo "seeded $DEC with $SEED/motion_ema.pt"
    fi
    if [ -n "${SEED2:-}" ] && [ ! -f "$DEC2/motion.pt" ] && [ ! -f "$DEC2/motion_ema.pt" ]; then
      cp "$SEED2/motion_ema.pt" "$DEC2/" && echo "seeded $DEC2 with $SEED2/motion_ema.pt"
    fi
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
    if running; then echo "already running"; else
      # shellcheck disable=SC2086  # the argument strings are word lists
      setsid nohup python3 -m tools.train_motion --work /tmp/avc --ckpt "$DEC" ${2:-} >>"$DEC/train_log.txt" 2>&1 </dev/null &
      if [ "${3:-}" != none ]; then  # "none": the decoder alone has the GPU
        # shellcheck disable=SC2086
        setsid nohup python3 -m tools.train_motion_den --work /tmp/avc --ckpt "$DEN" ${3:-} >>"$DEN/train_log.txt" 2>&1 </dev/null &
      fi
      if [ -n "${4:-}" ]; then
        # shellcheck disable=SC2086
        setsid nohup python3 -m tools.train_motion --work /tmp/avc --ckpt "$DEC2" $4 >>"$DEC2/train_log.txt" 2>&1 </dev/null &
      fi
      echo "started"
    fi
    sleep 20
    wait_for 500
    ;;
  wait) wait_for "${2:-540}" ;;
  *) echo "usage: $0 start \"DECODER ARGS\" \"DENOISER ARGS\" [\"DECODER 2 ARGS\"] | wait SECONDS" >&2; exit 2 ;;
esac
