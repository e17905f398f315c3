#!/bin/bash
# healthy session's frames while a client asks for a new random avatar every second; motion engine; old (engine lane) vs new (prep engine)
cd /work/main
for r in 1 2; do
  for arm in old new; do
    if [ $arm = old ]; then pp=/work/wtold; else pp=/work/main; fi
    (cd $pp && PYTHONPATH=$pp flock /work/locks/bench.lock python -m tools.bench_attack --attacks avatars --seconds 60 --settle 5 --server-args "--admission 0 --ws-idle-s 10 --engine motion") > /work/m8/attack/${arm}_$r.txt 2>&1
  done
done
echo done > /work/m8/attack/done
