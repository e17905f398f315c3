#!/bin/bash
# After febd689's fix (the warm two-way measurement replaces the start-up calibration chunk's cost): live Mandarin
# rounds 2-3 (adaptive, copy, adaptive) and one round of `bench engine`, 2 streams, each under the bench lock after
# quiet.sh. (run.sh's round 2 and its one-session runs were cut for time; its round 1 ran before the fix.)
cd "$(dirname "$0")/../../.."
out=docs/bench/adaptive_draw_2026-12-06
Q=$PWD/tools/quiet.sh
res=engines/tiny/weights/motion_residual copy=engines/tiny/weights/motion
zh() {  # draw round
  PYTHONPATH=$PWD flock /work/locks/bench.lock "$Q" python -m avatarcast.realtime.cli bench latency \
    --clips tests/data/speech/zh --mode stream --sessions 2 --linger 3 \
    --server-args "--engine motion --motion-draw $1 --rate-sessions-per-min 0" --json \
    > "$out/zh_$1_$2.json" 2> "$out/zh_$1_$2.err"
}
eng() {  # name args...
  local n=$1; shift
  PYTHONPATH=$PWD flock /work/locks/bench.lock "$Q" python -m avatarcast.realtime.cli bench engine --engine motion \
    --sessions 2 --threads 2 --seconds 10 --json "$@" > "$out/engine_${n}_s2_r1.json" 2>>"$out/quiet.log"
}
zh adaptive 2
zh copy 2
eng residual --weights $res
eng residual_cheaper --weights $res --cheaper-decode
eng copy --weights $copy
zh adaptive 3
echo done
