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
# What the next GPU call must show (branch hG: the frames composed on the device, motion_compose.py; each stream's
# own box grown to a 32-pixel bucket, a bucket's streams in one decoder call). The last call (before hG), one H100:
# copy 121/120/112 fps, residual 126/115/126 at 50/100/200 streams; host-side numpy 75-79% of a chunk, decoder
# 21-24%; bench engine 128 fps at 200 streams, decode 7.8 ms a frame. Now:
#   1. motion_gpu_<draw>_s<N>.json: "compose_device": "cuda", "batch_streams": true; share.host (now only the one
#      uint8 copy of the frames to the host, 0.92 MB a frame) and share.compose small beside share.decode_net; if
#      compose_s is large, the effects' placements (Python per frame on the host, inside compose_s) are next.
#   2. fps: the decoder's time per frame is what is left. Its bound: >= 8,000 fps at 200+ streams wants <= 0.125 ms
#      a frame in all; 1.7 ms a frame of decoder (the common box) would not reach it even with host time at zero, so
#      decode_net_s / frames after the buckets is the number to read (the buckets drew 13% fewer pixels than the
#      common box for 4 avatars on the CPU; 16 avatars spread wider).
#   3. the host-compose row (--compose host, last lines below) at 200 streams: the same figures as before hG, so
#      the gain is the compose's and not the machine's.
# If the decoder still dominates, next: bf16 autocast / channels_last / CUDA graphs for draw_streams_t per bucket.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$PWD
# the bench imports realtime/settings (pydantic, pydantic-settings, python-dotenv), which the device image lacks:
# wheels put in .whl/ here (pip download --python-version 3.12 --only-binary=:all: ...) travel with the checkout
if ls .whl/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-deps --target /tmp/whl .whl/*.whl && export PYTHONPATH=$PWD:/tmp/whl
fi
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
DEVICE=cuda
STREAMS=${STREAMS:-"50 100 200"}
if [ "${1:-}" = cpu ]; then DEVICE=cpu STREAMS=2; fi
python -c "import torch, onnx, PIL; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for draw in copy residual; do
  for s in $STREAMS; do
    echo "== $draw, $s streams ($DEVICE)"
    timeout 170 python -m tools.motion_torch_profile --device "$DEVICE" --sessions "$s" --chunks 4 --draw "$draw" \
      | tee "$OUT/motion_gpu_${draw}_s${s}.json" || echo "  (failed or over 170 s)"
  done
done
# the host compose on the same machine, for comparison (the numpy _compose after a device draw)
timeout 170 python -m tools.motion_torch_profile --device "$DEVICE" --sessions 200 --chunks 2 --draw copy \
  --compose host | tee "$OUT/motion_gpu_copy_s200_hostcompose.json" || echo "  (host compose: failed or over 170 s)"
# the bench's own figures (chunk latency p50/p95): it imports realtime/ (settings), which may lack a package there
for s in $STREAMS; do
  timeout 120 python -m avatarcast.realtime.cli bench engine --engine motion --backend torch --device "$DEVICE" \
    --sessions "$s" --seconds 10 --json -o "$OUT/motion_gpu_bench_s${s}.json" >/dev/null \
    || echo "bench engine at $s streams: failed (see above) or over 120 s"
done
ls -la "$OUT"
