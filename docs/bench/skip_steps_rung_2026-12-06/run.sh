#!/bin/bash
# The motion engine's ladder without its steps rung (EngineCapabilities.fewer_steps_cheaper False), this 2-core Intel
# Xeon, each run under the bench lock. BASE: the code before it (main at e0d884f, `git archive` into a scratch
# folder); the branch's code for the rest. Rounds alternate before / after; the residual draw (which has a cheaper
# decode: rung 2) first, then the default copy draw (which has none: its next rung is cached loops).
cd "$(dirname "$0")/../../.."
out=${OUT:-docs/bench/skip_steps_rung_2026-12-06}
BASE=${BASE:-/tmp/wtB_base}
NEW=$PWD
Q=$PWD/tools/quiet.sh  # each run waits for the machine to be quiet (other sessions' work outside the lock)
export QUIET_MAX_S=${QUIET_MAX_S:-120}
load() {  # file-stem round extra-server-args
  for arm in before after; do
    if [ $arm = before ]; then pp=$BASE; else pp=$NEW; fi
    (cd "$pp" && PYTHONPATH=$pp flock /work/locks/bench.lock $Q python -m avatarcast.realtime.cli bench load --sessions 2 \
      --seconds 60 --server-args "--engine motion $3" --json) > "$out/${1}_${arm}_$2.json" 2> "$out/${1}_${arm}_$2.err"
  done
}
for r in ${ROUNDS:-1 2}; do
  load residual "$r" "--motion-draw residual"
  load copy "$r" ""
done
echo done
