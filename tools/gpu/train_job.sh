#!/usr/bin/env bash
# One time-boxed training chunk on the GPU device (see README "Training").
#   bash tools/gpu/train_job.sh STAGES MINUTES [extra train_tiny args]
# Resumes from out/ckpt (carried in), writes the checkpoint back under $OUT.
set -uo pipefail
stages=${1:-ae,denoiser}; minutes=${2:-8}; shift 2 || true
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p out/ckpt
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
python3 -m tools.train_tiny --work /tmp/avc --ckpt out/ckpt --stages "$stages" --minutes "$minutes" "$@" 2>&1 | tee out/ckpt/train_log.txt
rc=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then
  for f in ae.pt den.pt den_ema.pt config.json train_log.txt; do [ -f out/ckpt/$f ] && cp out/ckpt/$f "$OUT/"; done
  (cd out/ckpt && tar czf "$OUT/logs.tgz" $(ls *.json *.png 2>/dev/null | grep -v config.json)) || true
fi
exit $rc
