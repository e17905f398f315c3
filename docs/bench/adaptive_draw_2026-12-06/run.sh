#!/bin/bash
# --motion-draw adaptive (the residual draw with room, the copy draw under load, admission priced at the copy draw)
# against copy (today's default) and residual, this 2-core Intel Xeon, one tree, each run under the bench lock and
# started once the rest of the machine is quiet (quiet.sh). Usage: run.sh ROUND...   e.g. run.sh 1 2
cd "$(dirname "$0")/../../.."
out=docs/bench/adaptive_draw_2026-12-06
Q=$PWD/tools/quiet.sh
cli() { PYTHONPATH=$PWD flock /work/locks/bench.lock "$Q" python -m avatarcast.realtime.cli "$@"; }
load() {  # name draw sessions round
  cli bench load --sessions "$3" --seconds 60 --server-args "--engine motion --motion-draw $2" --json \
    > "$out/load_$1_s$3_$4.json" 2> "$out/load_$1_s$3_$4.err"
}
zh() {  # name draw round: live Mandarin, a new session per clip, two clients, default admission
  cli bench latency --clips tests/data/speech/zh --mode stream --sessions 2 --linger 3 \
    --server-args "--engine motion --motion-draw $2 --rate-sessions-per-min 0" --json \
    > "$out/zh_$1_$3.json" 2> "$out/zh_$1_$3.err"
}
for r in "$@"; do
  if [ $((r % 2)) -eq 1 ]; then arms="copy adaptive"; else arms="adaptive copy"; fi
  for a in $arms; do load "$a" "$a" 2 "$r"; done
  for a in $arms; do zh "$a" "$a" "$r"; done
done
load residual residual 2 1
for a in adaptive copy; do load "$a" "$a" 1 1; done
echo done
