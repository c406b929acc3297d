#!/usr/bin/env bash
# Set up dgnet on a fresh machine: a virtual environment at .venv/, the pinned dependencies
# (requirements*.txt), and the compiled extension dgnet._C (with its CUDA kernels where nvcc
# and a CUDA build of torch exist; see setup.py). Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
MAX_JOBS=${MAX_JOBS:-$(nproc)} .venv/bin/python -m pip install -q --disable-pip-version-check \
  --no-build-isolation --no-deps -e .
.venv/bin/python -c "import dgnet.ops, torch; print('dgnet ready: torch', torch.__version__, \
'| CUDA kernels built:', dgnet.ops._lib.cuda_kernels_built())"
