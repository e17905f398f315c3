#!/bin/bash
# cut-out draw speed, old (f03455b, before effects by particle) vs new (main), alternated, 2 streams and 1 stream
cd /work/keep/bench_part
for r in 1 2; do
  for which in new old; do
    if [ $which = old ]; then T=/work/wt_old; else T=/work/main; fi
    (cd $T && PYTHONPATH=$T avatarcast bench engine --engine motion --sessions 2 --threads 2 --seconds 10 --opt draw=cutout --json -o /work/keep/bench_part/${which}_s2_r$r.json > /dev/null 2>&1)
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1], d['fps'], d.get('decode_ms_per_frame'), d.get('host_cpu_busy_other'))" /work/keep/bench_part/${which}_s2_r$r.json
  done
done
