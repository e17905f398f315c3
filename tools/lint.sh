#!/usr/bin/env bash
# Lint, format and type checks (settings in pyproject.toml): ruff on the whole tree, mypy on the shipped packages.
# CI runs it before the tests (tools/test.sh). `bash tools/lint.sh --fix` applies ruff's fixes and formatting first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fix" ]; then
  python3 -m ruff check --fix .
  python3 -m ruff format .
fi
python3 -m ruff check .
python3 -m ruff format --check .

# mypy reads the shipped packages as the installed `avatarcast` package. pyproject's package-dir maps top-level
# folders into it, which mypy cannot follow, so a tree of links in build/ stands in for the installed layout.
stage=build/typecheck
rm -rf "$stage" && mkdir -p "$stage/avatarcast"
for f in avatarcast/*; do [ "$(basename "$f")" = __pycache__ ] || ln -s "$PWD/$f" "$stage/avatarcast/"; done
mapped=$(python3 -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"]
print(" ".join(k.split(".", 1)[1] + "=" + v for k, v in d.items() if k.startswith("avatarcast.")))')
paths=(-e "s#^$stage/##")  # the report names the repository's own files
for m in $mapped; do
  ln -s "$PWD/${m#*=}" "$stage/avatarcast/${m%%=*}"
  paths=(-e "s#^$stage/avatarcast/${m%%=*}/#${m#*=}/#" "${paths[@]}")
done
MYPYPATH="$stage" python3 -m mypy -p avatarcast </dev/null 2>&1 | sed "${paths[@]}"
