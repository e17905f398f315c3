#!/bin/bash
# Round 3, after 5b4c0de's fix (the warm two-way measurement replaces the start-up calibration chunk's cost):
# live Mandarin, adaptive then copy.
cd "$(dirname "$0")/../../.."
out=docs/bench/adaptive_draw_2026-12-06
Q=$PWD/$out/quiet.sh
for a in adaptive copy; do
  PYTHONPATH=$PWD flock /work/locks/bench.lock "$Q" python -m avatarcast.realtime.cli bench latency \
    --clips tests/data/speech/zh --mode stream --sessions 2 --linger 3 \
    --server-args "--engine motion --motion-draw $a --rate-sessions-per-min 0" --json \
    > "$out/zh_${a}_3.json" 2> "$out/zh_${a}_3.err"
done
echo done
