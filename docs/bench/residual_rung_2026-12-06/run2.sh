#!/bin/bash
# A third round of the load bench (round 1 ran beside another session's work outside the lock: other_cores 1.05 and
# 0.31), and a second round with admission off; as run.sh.
cd "$(dirname "$0")/../../.."
out=${OUT:-docs/bench/residual_rung_2026-12-06}
BASE=${BASE:-/tmp/wtB_base}
NEW=$PWD
Q=$PWD/tools/quiet.sh
load() {  # file-stem extra-server-args
  for arm in before after; do
    if [ $arm = before ]; then pp=$BASE; else pp=$NEW; fi
    (cd "$pp" && PYTHONPATH=$pp flock /work/locks/bench.lock $Q python -m avatarcast.realtime.cli bench load --sessions 2 \
      --seconds 60 --server-args "--engine motion --motion-draw residual $2" --json) \
      > "$out/${1/ARM/$arm}.json" 2> "$out/${1/ARM/$arm}.err"
  done
}
load load_ARM_3 ""
load load_noadm_ARM_2 "--admission 0"
echo done
