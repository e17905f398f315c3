#!/bin/bash
# `avatarcast bench engine` of the draws adaptive switches between, 2 streams, alternated, each under the bench lock
# after quiet.sh: the residual folder at full quality, the same at its cheaper rung (the copy draw), the copy folder.
cd "$(dirname "$0")/../../.."
out=docs/bench/adaptive_draw_2026-12-06
Q=$PWD/$out/quiet.sh
res=engines/tiny/weights/motion_residual copy=engines/tiny/weights/motion
eng() {  # name round args...
  local n=$1 r=$2; shift 2
  PYTHONPATH=$PWD flock /work/locks/bench.lock "$Q" python -m avatarcast.realtime.cli bench engine --engine motion \
    --sessions 2 --threads 2 --seconds 10 --json "$@" > "$out/engine_${n}_s2_r$r.json" 2>>"$out/quiet.log"
}
for r in 1 2 3; do
  eng residual "$r" --weights $res
  eng residual_cheaper "$r" --weights $res --cheaper-decode
  eng copy "$r" --weights $copy
done
echo done
