#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine (espeak-ng and sox for test speech, coturn for TURN,
# chromium for the demo-page test, redis-server for the shared-state tests), run the lint, format and type
# checks (tools/lint.sh), then the tests.
# (The README's test command: `bash tools/test.sh`.)
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  need=""
  for p in espeak-ng sox chromium chromium-driver redis-server coturn; do dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"; done
  if [ -n "$need" ]; then apt-get update -qq && apt-get install -y -qq $need >/dev/null; fi
fi
bash tools/install.sh dev
# TypeScript for the browser client's type check (tests/realtime/test_js_client_package.py), pinned by its lock file
if command -v npm >/dev/null; then npm ci --prefix tests/js --no-audit --no-fund --silent; fi
bash tools/lint.sh
python3 -m pytest -q "$@"
