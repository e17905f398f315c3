#!/bin/bash
# alternated: engine bench, load, zh live; motion (copy-only, shipped) vs tiny; this 2-core Intel Xeon
cd /work/main
out=/work/m8/bench
for r in 1 2; do
  for e in tiny motion; do
    flock /work/locks/bench.lock avatarcast bench engine --engine $e --sessions 2 --seconds 10 --threads 2 --json > $out/engine_${e}_$r.json 2>$out/engine_${e}_$r.err
  done
done
for r in 1 2; do
  for e in motion tiny; do
    flock /work/locks/bench.lock avatarcast bench load --sessions 2 --seconds 60 --server-args "--engine $e" --json > $out/load_${e}_$r.json 2>$out/load_${e}_$r.err
  done
done
for r in 1 2; do
  for e in tiny motion; do
    flock /work/locks/bench.lock avatarcast bench latency --clips tests/data/speech/zh --mode stream --sessions 2 --linger 3 --server-args "--engine $e" --json > $out/zh_${e}_$r.json 2>$out/zh_${e}_$r.err
  done
done
echo done
