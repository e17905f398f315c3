#!/bin/bash
# Copy each load run's ladder lines ("degradation level A -> B") from its bench server's log (named in the run's .err)
# to ladder_<run>.log beside it: summarize.py reads the time on each rung from them.
cd "$(dirname "$0")"
for e in *_[0-9].err; do
  log=$(grep -o "(log [^)]*)" "$e" | head -1 | sed 's/^(log //; s/)$//')
  [ -n "$log" ] && [ -f "$log" ] && grep "degradation level" "$log" > "ladder_${e%.err}.log"
done
ls ladder_*.log
