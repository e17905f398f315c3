#!/bin/bash
# The residual draw's cheaper rung (the copy draw), this 2-core Intel Xeon, each run under the bench lock.
# BASE: the code before it (main at df3b119, `git archive` into a scratch folder); the branch's code for the rest.
cd "$(dirname "$0")/../../.."
out=${OUT:-docs/bench/residual_rung_2026-12-06}
BASE=${BASE:-/tmp/wtB_base}
NEW=$PWD
res=engines/tiny/weights/motion_residual copy=engines/tiny/weights/motion
Q=$PWD/tools/quiet.sh  # each run waits for the machine to be quiet (other sessions' work outside the lock)
eng() {  # name sessions args...
  local n=$1 s=$2; shift 2
  PYTHONPATH=$NEW flock /work/locks/bench.lock $Q python -m avatarcast.realtime.cli bench engine --engine motion \
    --sessions "$s" --threads 2 --seconds 10 --json "$@" > "$out/engine_${n}_s${s}_r$r.json" 2>>"$out/quiet.log"
}
for r in 1 2; do
  for s in 1 2; do
    eng residual "$s" --weights $res
    eng residual_cheaper "$s" --weights $res --cheaper-decode
    eng copy "$s" --weights $copy
  done
done
PYTHONPATH=$NEW flock /work/locks/bench.lock $Q python "$out/prep_cost.py" > "$out/prep_cost.json" 2>>"$out/quiet.log"
for r in 1 2; do
  for arm in before after; do
    if [ $arm = before ]; then pp=$BASE; else pp=$NEW; fi
    (cd "$pp" && PYTHONPATH=$pp flock /work/locks/bench.lock $Q python -m avatarcast.realtime.cli bench load --sessions 2 \
      --seconds 60 --server-args "--engine motion --motion-draw residual" --json) \
      > "$out/load_${arm}_$r.json" 2> "$out/load_${arm}_$r.err"
  done
done
# both sessions held (admission off): what the ladder does once two reactions overlap
for arm in before after; do
  if [ $arm = before ]; then pp=$BASE; else pp=$NEW; fi
  (cd "$pp" && PYTHONPATH=$pp flock /work/locks/bench.lock $Q python -m avatarcast.realtime.cli bench load --sessions 2 \
    --seconds 60 --server-args "--engine motion --motion-draw residual --admission 0" --json) \
    > "$out/load_noadm_${arm}_1.json" 2> "$out/load_noadm_${arm}_1.err"
done
echo done
