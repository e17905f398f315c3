#!/usr/bin/env bash
# Install avatarcast from this checkout: `bash tools/install.sh` (serving) or `bash tools/install.sh dev` (+ tests).
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-}
python3 -m pip install -q -e ".${extra:+[$extra]}"
