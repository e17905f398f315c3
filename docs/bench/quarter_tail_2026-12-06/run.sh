#!/bin/bash
# the three folders alternated, 2 sessions, 2 threads, 3 rounds, each run under the bench lock (Q4SM: the exported
# small_q4sm folder, kept outside the tree)
cd "$(dirname "$0")/../../.."
out=${OUT:-docs/bench/quarter_tail_2026-12-06}
for r in 1 2 3; do
  for c in residual=engines/tiny/weights/motion_residual copy=engines/tiny/weights/motion q4sm=${Q4SM:?}; do
    name=${c%%=*}; dir=${c#*=}
    flock /work/locks/bench.lock python -m avatarcast.realtime.cli bench engine --engine motion --weights "$dir" \
      --sessions 2 --threads 2 --seconds 10 --json -o "$out/engine_${name}_s2_r$r.json" > /dev/null
  done
done
