#!/bin/bash
# alternated: motion --motion-draw copy (the shipped default) vs residual; this 2-core Intel Xeon, each run under
# the bench lock. The engine bench ran first on the same graphs (its JSON: engine_*.json).
cd "$(dirname "$0")/../../.."
out=${OUT:-docs/bench/motion_residual_2026-12-05}
for r in 1 2; do
  for d in copy residual; do
    flock /work/locks/bench.lock avatarcast bench load --sessions 2 --seconds 60 --server-args "--engine motion --motion-draw $d" --json > $out/load_${d}_$r.json 2>$out/load_${d}_$r.err
  done
done
for r in 1 2; do
  for d in residual copy; do
    flock /work/locks/bench.lock avatarcast bench latency --clips tests/data/speech/zh --mode stream --sessions 2 --linger 3 --server-args "--engine motion --motion-draw $d --rate-sessions-per-min 0" --json > $out/zh_${d}_$r.json 2>$out/zh_${d}_$r.err
  done
done
echo done
