#!/bin/bash
# usage: run.sh <tree> <burners> <out>  -- one bench_attack avatars run with N CPU burners beside it (inside the lock)
tree=$1; n=$2; out=$3
cd "$tree"
pids=()
for ((i=0;i<n;i++)); do python3 -c "while 1: pass" & pids+=($!); done
PYTHONPATH="$tree" timeout 400 python -m tools.bench_attack --attacks avatars --seconds 60 --settle 2 > "$out.json" 2> "$out.err"
for p in "${pids[@]}"; do kill "$p"; done
python3 -c "
import json;d=json.load(open('$out.json'));h=d['healthy'];
print('$out', d['during']['loop_lag_ms'], 'fps', h['fps'], 'p99 int', h['interval_ms']['p99'], 'max', h['interval_ms']['max'], d['attackers_got'], 'other', d['host_cpu']['other_cores'], 'server', d['host_cpu']['server_cores'], 'rss', d['during']['rss_mb'])"
