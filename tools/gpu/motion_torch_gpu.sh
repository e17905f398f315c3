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
# the bench's own figures (chunk latency p50/p95): it imports realtime/ (settings), which may lack a package there
for s in $STREAMS; do
  timeout 120 python -m avatarcast.realtime.cli bench engine --engine motion --backend torch --device "$DEVICE" \
    --sessions "$s" --seconds 10 --json -o "$OUT/motion_gpu_bench_s${s}.json" >/dev/null \
    || echo "bench engine at $s streams: failed (see above) or over 120 s"
done
ls -la "$OUT"
