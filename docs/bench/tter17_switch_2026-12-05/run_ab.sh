#!/bin/bash
# A/B: base = main at cafcc64 (/work/wt17base), switch = branch h17 (/work/wt17); both with the switch tracer.
TRACE=/work/wt17/docs/bench/tter17_switch_2026-12-05/trace
OUT=/tmp/swtrace/ab
for spec in "$@"; do
  arm=${spec%%:*}; r=${spec##*:}
  if [ "$arm" = base ]; then tree=/work/wt17base; else tree=/work/wt17; fi
  echo "arm=$arm-r$r tree=$tree queued $(date +%T) $(uptime)" >> $OUT/runs.log
  flock /work/locks/bench.lock bash -c "echo \"lock taken \$(date +%T) \$(uptime)\" >> $OUT/runs.log; cd $tree && PYTHONPATH=$tree:$TRACE SWITCH_TRACE=$OUT/trace_${arm}_r$r avatarcast bench latency --clips tests/data/speech/zh --mode stream --sessions 2 --linger 3 --server-args '--rate-sessions-per-min 0 --admission 0' --json > $OUT/ab_${arm}_r$r.json 2> $OUT/ab_${arm}_r$r.err"
  echo "done $(date +%T) $(uptime)" >> $OUT/runs.log
  python - "$OUT/ab_${arm}_r$r.json" "$arm-r$r" >> $OUT/runs.log <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); s = d["summary"]
print(f"  {sys.argv[2]}: TTER p50 {s['tter_ms']['p50']} p95 {s['tter_ms']['p95']} max {s['tter_ms']['max']} right {s['accuracy']['correct']} "
      f"early {s['first_decided_by']} frames p99 {s['frame_interval_ms']['overall']['p99']} max {s['frame_interval_ms']['overall']['max']} "
      f"over160 {s['frame_interval_ms']['overall']['over_160ms']} late {s['frames_late']} other_cores {d['host_cpu']}")
PY
done
