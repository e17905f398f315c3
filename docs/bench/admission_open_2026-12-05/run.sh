#!/bin/bash
# Live Mandarin, motion engine, 2 sessions, DEFAULT admission (only the per-client session rate limit off: the bench
# opens a session per clip from one address), as docs/bench/admission_2026-12-05/run.sh. Arms alternated: main at
# 05dadae (exported to /tmp/baseB) and branch hB (closed sessions' shares of busy not counted).
# Usage: run.sh ROUND...   e.g. run.sh 1 2
out=/work/wtB/docs/bench/admission_open_2026-12-05
bench() {  # $1 arm name, $2 tree, $3 round
  (cd "$2" && PYTHONPATH="$2" flock /work/locks/bench.lock python -m avatarcast.realtime.cli bench latency \
    --clips tests/data/speech/zh --mode stream --sessions 2 --linger 3 \
    --server-args "--engine motion --rate-sessions-per-min 0" --json \
    > "$out/zh_motion_s2_$1_$3.json" 2> "/tmp/admission_open_bench_$1_$3.err")
}
for r in "$@"; do
  if [ $((r % 2)) -eq 1 ]; then
    bench before /tmp/baseB "$r"; bench after /work/wtB "$r"
  else
    bench after /work/wtB "$r"; bench before /tmp/baseB "$r"
  fi
done
echo done
