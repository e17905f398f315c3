# Sourced by the GPU scripts from the checkout's root (`. tools/gpu/env.sh`): the environment every run there wants,
# and the wheels in .whl/ (carried: the bench imports realtime/settings, whose pydantic, pydantic-settings and
# python-dotenv the device image lacks; `pip download --python-version 3.12 --only-binary=:all: ...` here) on
# PYTHONPATH. REPO: where .whl is, if not here (a tree staged beside the checkout). Sets ROOT and OUT.
ROOT=$PWD
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=$ROOT
if ls "${REPO:-$ROOT}"/.whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/whl "${REPO:-$ROOT}"/.whl/*.whl \
    && export PYTHONPATH=$ROOT:/tmp/whl
fi
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
