#!/usr/bin/env bash
# Where a start's seconds go, cold then warm, on one GPU: `bench engine --engine wan` with the graphs
# serve captures (--server-buckets: 1 and 5), fp8, 12-frame chunks, the transformer compiled
# (MODE=full|regional) and the VAE compiled (VAE=jit: torch.compile, as serve | aot: AOTInductor
# packages, engines/wan/vae_aot.py). WARMUP=background: ready before the VAE's graphs, which compile
# on a thread (serve --wan-vae-warmup background; the report adds full_speed_s). Reports ready_s and
# warm_s (fp8, VAE, transformer per bucket). SECS=N: the warm start then runs 10 sessions through the
# server's scheduler, pipelined, for N s (fps, chunk interval p95, cue). PROFILE=1: a cProfile of
# one more warm start. HEUR=0: eager VAE frames time cuDNN's algorithms (bench --cudnn-heuristics 0).
# DEPTHS: with SECS, the pipeline depths (2: pipelined, as serve; 2,1 adds calls in turn). TAG: a file-name suffix.
# FP8=0: the transformer blocks in bf16 (serve without --wan-fp8 1). MEMTRACE=1: with SECS, the largest blocks live at the scheduled runs' memory peak, and where from. VAEB: most streams per VAE call (1, as serve's --wan-vae-batch: one static
# graph; 5: graphs for batch 1, 2 and 3+, as before). PHASES="cold warm" (the default), or one of them.
# Usage: [MODE=regional] [VAE=jit] [VAEB=1] [WARMUP=start] [SECS=0] [PHASES="cold warm"] [PROFILE=0] bash tools/gpu/wan_warm_start.sh
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor} TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1
# bytecode for sources whose install has none (the device's torch venv, wheels installed --no-compile):
# a pip-installed server has it, so a warm restart here should too
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-$PWD/.cache/pycache}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; MODE=${MODE:-regional}; VAE=${VAE:-jit}; SECS=${SECS:-0}; WARMUP=${WARMUP:-start}
vae="--compile-vae --vae-channels-last"; [ "$VAE" = aot ] && vae="$vae --vae-aot $PWD/.cache/aoti"
args="--random-weights --chunk-frames 3 --vae-batch ${VAEB:-1} --batch 5 --sessions 10 --server-buckets --compile --compile-mode $MODE
  $vae --vae-warmup $WARMUP --steps 4 $([ "${FP8:-1}" = 1 ] && echo --fp8) --cudnn-heuristics ${HEUR:-1} --depths ${DEPTHS:-2}"
[ "${MEMTRACE:-0}" = 1 ] && args="$args --memory-trace"
show() { grep -E "ready in|^N=|^peak of|^  +[0-9]+ x |^(ready_s|full_speed_s|load_s|graph_capture_s|warm_s|vae_aot|memory_gb|memory_ready_gb):|Error|Traceback" | tail -24; }
tag="${MODE}_vae-${VAE}-b${VAEB:-1}_${WARMUP}${TAG:-}"
if [[ " ${PHASES:-cold warm} " == *" cold "* ]]; then
  echo "== $tag cold"
  timeout ${COLD_LIMIT:-330} python3 -m avatarcast.realtime.bench.wan $args --ready-only -o "$OUT/ready_${tag}_cold.json" 2>&1 \
    | tee "$OUT/ready_${tag}_cold.log" | show
fi
if [[ " ${PHASES:-cold warm} " == *" warm "* ]]; then
  echo "== $tag warm"
  if [ "$SECS" != 0 ]; then
    timeout ${WARM_LIMIT:-240} python3 -m avatarcast.realtime.bench.wan $args --scheduler --seconds "$SECS" \
      -o "$OUT/ready_${tag}_warm.json" 2>&1 | tee "$OUT/ready_${tag}_warm.log" | show
  else
    timeout ${WARM_LIMIT:-240} python3 -m avatarcast.realtime.bench.wan $args --ready-only -o "$OUT/ready_${tag}_warm.json" 2>&1 \
      | tee "$OUT/ready_${tag}_warm.log" | show
  fi
fi
if [ "${PROFILE:-0}" = 1 ]; then
  echo "== $tag warm, profiled"
  timeout 240 python3 -m cProfile -o /tmp/warm.prof -m avatarcast.realtime.bench.wan $args --ready-only 2>&1 | show
  python3 - <<'PY' > "$OUT/ready_${tag}_warm_profile.txt"
import pstats
s = pstats.Stats("/tmp/warm.prof")
s.sort_stats("cumulative").print_stats(70)
s.sort_stats("tottime").print_stats(40)
PY
fi
nvidia-smi --query-gpu=name --format=csv,noheader
