#!/bin/bash
# tools/quiet.sh CMD...: wait (up to QUIET_MAX_S, 300 s) until other processes use under 0.25 of a core over 3 s, then
# run CMD. Run it inside the bench lock: work outside the lock (an eval another session started) spoils CPU figures.
# The bench folders' scripts (docs/bench/*/run*.sh) call this one copy.
max=${QUIET_MAX_S:-300}
t0=$(date +%s)
busy() {
  read -r _ a b c d e f g _ < /proc/stat; local u1=$((a + b + c + e + f + g)) t1=$((a + b + c + d + e + f + g))
  sleep 3
  read -r _ a b c d e f g _ < /proc/stat; local u2=$((a + b + c + e + f + g)) t2=$((a + b + c + d + e + f + g))
  echo $(( (u2 - u1) * 100 * $(nproc) / (t2 - t1) ))  # hundredths of a core
}
while b=$(busy); [ "$b" -ge 25 ] && [ $(( $(date +%s) - t0 )) -lt "$max" ]; do
  sleep 7
done
echo "quiet.sh: other load ${b}/100 cores after $(( $(date +%s) - t0 )) s: $*" >&2
exec "$@"
