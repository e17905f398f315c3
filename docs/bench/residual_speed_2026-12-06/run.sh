#!/bin/bash
# alternated: the shipped residual folder against candidate folders (CANDIDATES: name=DIR ...), 2 sessions, 2 threads,
# each run under the bench lock; JSON per run in this folder.
cd "$(dirname "$0")/../../.."
out=${OUT:-docs/bench/residual_speed_2026-12-06}
for r in ${ROUNDS:-1 2}; do
  for c in shipped=engines/tiny/weights/motion_residual $CANDIDATES; do
    name=${c%%=*}; dir=${c#*=}
    flock /work/locks/bench.lock python -m avatarcast.realtime.cli bench engine --engine motion --weights "$dir" \
      --sessions 2 --threads 2 --seconds 10 --json -o "$out/engine_${name}_s2_r$r.json" > /dev/null
    echo "$name r$r $(python -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get('fps_total', d.get('fps')), d.get('host_cpu_busy_other'))" "$out/engine_${name}_s2_r$r.json")"
  done
done
