#!/usr/bin/env bash
# The motion engine on CUDA (torch, the shipped folders' graphs read into torch: engines/tiny/motion_graph_weights.py):
# fps at 50, 100 and 200 streams, and where a chunk's time goes (denoiser, decoder, host-side numpy), for the copy
# draw and the residual draw. Results: $OUT/motion_gpu_<draw>_s<streams>.json (tools.motion_torch_profile), and
# $OUT/motion_gpu_bench_s<streams>.json (`avatarcast bench engine`, where the image has its imports).
#
# The device image (KINDS.md) has torch 2.11 + CUDA 13, onnx, onnxruntime, numpy and pillow: all the profile needs.
# One call, under 10 minutes (each run is a few chunks after a warm-up; 200 streams prepare 8 avatars):
#   run(command="bash tools/gpu/motion_torch_gpu.sh", timeout_s=600)
# The CPU side in the same terms: bash tools/gpu/motion_torch_gpu.sh cpu (2 streams, CPU torch).
#
# Environment: STREAMS, DRAWS, VARIANTS (fp32,bf16,cl,bf16+cl,padN), SEPARATE=1, CHUNKS, TRACE=1, COMPARE=1, HOSTCOMPOSE=0, BENCH=0,
# TAG (below). The JSON results come back in motion_gpu_results$TAG.tar, the traces in motion_gpu_trace$TAG.tar.
# Frames before and after a change, on the same machine: python tools/motion_gpu_same.py save|check FILE.
#
# The last calls, one H100 (docs/bench/motion_gpu_graphs_2026-12-06, old and new in one call): launches a chunk of 200
# streams 17,736 -> 12,262; fps 1,539 -> 1,864 at 200 streams (2,320 with VARIANTS=pad32), 1,964 -> 2,100 at 400
# (2,263 pad64). What the next call must show: pad32's frames (motion_gpu_same.py check --pad-rows 32) and `bench
# engine` with it, and CUDA graphs per (rows, h, w) replayed once the padded shapes repeat.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tools/gpu/env.sh  # ROOT, OUT, PYTHONPATH (+ .whl)
DEVICE=cuda
STREAMS=${STREAMS:-"50 100 200"}
DRAWS=${DRAWS:-"copy residual"}
VARIANTS=${VARIANTS:-fp32}   # tools.motion_torch_profile --variants: fp32, bf16, cl, bf16+cl (one process, built once)
CHUNKS=${CHUNKS:-4}
HOSTCOMPOSE=${HOSTCOMPOSE:-1}  # the numpy compose row at 200 streams
BENCH=${BENCH:-1}              # avatarcast bench engine at each $STREAMS
TRACE=${TRACE:-0}              # one chunk a variant under torch.profiler (tables in motion_gpu_trace.tar)
COMPARE=${COMPARE:-0}          # bf16 variants: one chunk's frames against float32's
TAG=${TAG:-}                   # in the tars' names: several runs of this script in one call keep theirs
if [ "${1:-}" = cpu ]; then DEVICE=cpu STREAMS=2; fi
python -c "import torch, onnx, PIL; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p /tmp/trace
# SEPARATE=1: each variant in a process of its own (cuDNN's plans, kept per process, then do not carry from one
# variant to the next: a padded variant's row counts are often an earlier variant's)
if [ "${SEPARATE:-0}" = 1 ]; then GROUPS_=$(echo "$VARIANTS" | tr , ' '); else GROUPS_=$VARIANTS; fi
for draw in $DRAWS; do
  for s in $STREAMS; do
    for vs in $GROUPS_; do
      echo "== $draw, $s streams ($DEVICE), variants $vs"
      opts=()
      [ "$TRACE" = 1 ] && opts+=(--trace "/tmp/trace/${draw}_s${s}")
      [ "$COMPARE" = 1 ] && opts+=(--compare)
      timeout 300 python -m tools.motion_torch_profile --device "$DEVICE" --sessions "$s" --chunks "$CHUNKS" \
        --draw "$draw" --variants "$vs" "${opts[@]}" | tee -a "$OUT/motion_gpu_${draw}_s${s}.json" \
        || echo "  (failed or over 300 s)"
    done
  done
done
# the host compose on the same machine, for comparison (the numpy _compose after a device draw)
if [ "$HOSTCOMPOSE" = 1 ]; then
  timeout 170 python -m tools.motion_torch_profile --device "$DEVICE" --sessions 200 --chunks 2 --draw copy \
    --compose host | tee "$OUT/motion_gpu_copy_s200_hostcompose.json" || echo "  (host compose: failed or over 170 s)"
fi
# the bench's own figures (chunk latency p50/p95): it imports realtime/ (settings), which may lack a package there
if [ "$BENCH" = 1 ]; then
  for s in $STREAMS; do
    timeout 120 python -m avatarcast.realtime.cli bench engine --engine motion --backend torch --device "$DEVICE" \
      --sessions "$s" --seconds 10 --json -o "$OUT/motion_gpu_bench_s${s}.json" >/dev/null \
      || echo "bench engine at $s streams: failed (see above) or over 120 s"
  done
fi
# the device tool brings back at most 8 files: the JSON results in one tar, the traces in another
(cd "$OUT" && tar cf "/tmp/motion_gpu_results$TAG.tar" ./*.json 2>/dev/null && rm -f ./*.json \
  && mv "/tmp/motion_gpu_results$TAG.tar" .)
[ "$TRACE" = 1 ] && (cd /tmp/trace && tar cf "$OUT/motion_gpu_trace$TAG.tar" .)
ls -la "$OUT"
