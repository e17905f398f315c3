# the whole call: stages under one time limit, then everything packed into one tar (the tool brings back a few files)
mkdir -p /tmp/o
timeout ${LIMIT:-540} bash .gpu_hA/stages.sh /tmp/o > /tmp/o/log.txt 2>&1
tail -c 6000 /tmp/o/log.txt
(cd /tmp/o && tar cf "$OUT/hA_results.tar" .)
ls -la "$OUT"
