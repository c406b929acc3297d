#!/usr/bin/env bash
# Build the LibTorch (CMake) form of the extension and run its C++ tests with ctest.
# WITH_CUDA=ON|OFF|auto (default auto: ON where nvcc and a CUDA build of torch exist, the rule setup.py follows).
# With CUDA the .cu files are compiled and linked (no GPU is needed: the tests call the CPU kernels), so a CUDA
# compile error in the CMake build fails here as it fails setup.py.
# DGNET_VENV: the virtual environment with torch, cmake and ninja (default .venv);
# DGNET_CMAKE_BUILD_DIR: the build folder (default build/cmake). Arguments are passed on to CMake's configure
# step (scripts/sanitize.sh passes its compiler flags this way).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(cd "${DGNET_VENV:-.venv}" && pwd)
build=${DGNET_CMAKE_BUILD_DIR:-build/cmake}
prefix=$("$venv/bin/python" -c "import torch; print(torch.utils.cmake_prefix_path)")
# torch's CMake config wants CUDA's nvrtc even for a CPU build; a compiler-only toolkit lacks it,
# torch's pip-installed nvidia wheels have it.
nvrtc=$("$venv/bin/python" -c "import glob, nvidia; print((glob.glob(nvidia.__path__[0] + '/cu*/lib/libnvrtc.so.*') + [''])[0])" 2>/dev/null || true)
extra=()
[ -n "$nvrtc" ] && [ ! -e "${CUDA_HOME:-/usr/local/cuda}/lib64/libnvrtc.so" ] && extra+=(-DCUDA_nvrtc_LIBRARY="$nvrtc")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0}
with_cuda=${WITH_CUDA:-auto}
if [ "$with_cuda" = auto ]; then
  with_cuda=OFF
  if { [ -x "${CUDA_HOME:-${CUDA_PATH:-/usr/local/cuda}}/bin/nvcc" ] || command -v nvcc >/dev/null; } &&
    [ -n "$("$venv/bin/python" -c "import torch; print(torch.version.cuda or '')")" ]; then
    with_cuda=ON
  fi
fi
echo "scripts/ctest.sh: WITH_CUDA=$with_cuda, build folder $build"
cmake=$venv/bin/cmake
[ -x "$cmake" ] || cmake=cmake
"$cmake" -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_MAKE_PROGRAM="$venv/bin/ninja" -DWITH_CUDA="$with_cuda" \
  -DCUDAToolkit_ROOT="${CUDA_HOME:-/usr/local/cuda}" -DCUDA_TOOLKIT_ROOT_DIR="${CUDA_HOME:-/usr/local/cuda}" -DPython3_EXECUTABLE="$venv/bin/python" "${extra[@]}" "$@"
"$cmake" --build "$build" -j "$(nproc)"
# One run: the ctest beside the cmake used (the venv's), else the one on PATH. A failure fails this script.
ctest=$(dirname "$cmake")/ctest
[ -x "$ctest" ] || ctest=ctest
(cd "$build" && "$ctest" --output-on-failure)
