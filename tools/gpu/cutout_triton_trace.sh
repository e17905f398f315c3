#!/usr/bin/env bash
# One traced chunk of the cut-out draw with the Triton kernels at 200 streams (tools.motion_torch_profile --trace:
# the ops by GPU and host time, and the host's Python functions by cumulative time), where a chunk's time goes.
#   run(command="bash tools/gpu/cutout_triton_trace.sh", timeout_s=200)
set -uo pipefail
cd "$(dirname "$0")/../.."
. tools/gpu/env.sh  # ROOT, OUT, PYTHONPATH (+ .whl)
timeout 170 python3 -m tools.motion_torch_profile --device cuda --sessions 200 --chunks 2 --draw cutout \
  --kernel triton --compose-kernel triton --trace "$OUT/trace_cutout_triton_s200" | tee "$OUT/prof_traced.json"
head -c 9000 "$OUT/trace_cutout_triton_s200_fp32_host.txt"
