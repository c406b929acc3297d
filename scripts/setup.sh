#!/usr/bin/env bash
# Set up dgnet on a fresh machine: a virtual environment at .venv/, the pinned dependencies
# (requirements*.txt), and the compiled extension dgnet._C (with its CUDA kernels where nvcc
# and a CUDA build of torch exist; see setup.py). Safe to run again: it only adds what is missing.
#
# Under CI (CI=true) or with DGNET_REQUIRE_CUDA=1, a machine with nvcc and a CUDA build of torch must build the
# CUDA kernels: setup.py is told DGNET_BUILD_CUDA=1 (it stops when it cannot use the toolkit) and the run fails
# unless dgnet._C holds them. Without nvcc (a fresh laptop, README's commands) nothing changes: a CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt

require_cuda=0
case "${CI:-}" in true | TRUE | 1 | yes) require_cuda=1 ;; esac
[ "${DGNET_REQUIRE_CUDA:-}" = 1 ] && require_cuda=1
# The toolkit where setup.py looks for it: CUDA_HOME, /usr/local/cuda, or nvcc on PATH.
have_nvcc=0
if [ -x "${CUDA_HOME:-${CUDA_PATH:-/usr/local/cuda}}/bin/nvcc" ] || command -v nvcc >/dev/null; then have_nvcc=1; fi
torch_cuda=$(.venv/bin/python -c "import torch; print(torch.version.cuda or '')")
must_build_cuda=0
if [ "$require_cuda" = 1 ] && [ "$have_nvcc" = 1 ] && [ -n "$torch_cuda" ]; then
  must_build_cuda=1
  export DGNET_BUILD_CUDA=${DGNET_BUILD_CUDA:-1}
fi

MAX_JOBS=${MAX_JOBS:-$(nproc)} .venv/bin/python -m pip install -q --disable-pip-version-check \
  --no-build-isolation --no-deps -e .
built=$(.venv/bin/python -c "import torch, dgnet.ops; print(int(dgnet.ops._lib.cuda_kernels_built()))")
.venv/bin/python -c "import torch; print('dgnet ready: torch', torch.__version__, '| CUDA kernels built:', bool($built))"
if [ "$must_build_cuda" = 1 ] && [ "$built" != 1 ]; then
  echo "scripts/setup.sh: nvcc and a CUDA build of torch ($torch_cuda) are here, but dgnet._C holds no CUDA" \
    "kernels (DGNET_BUILD_CUDA=${DGNET_BUILD_CUDA}); CI requires them" >&2
  exit 1
fi
