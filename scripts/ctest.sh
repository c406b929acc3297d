#!/usr/bin/env bash
# Build the LibTorch (CMake) form of the extension and run its C++ tests with ctest.
# WITH_CUDA=ON|OFF (default OFF: CI already compiles the CUDA sources through setup.py).
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
cmake=$venv/bin/cmake
[ -x "$cmake" ] || cmake=cmake
"$cmake" -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_MAKE_PROGRAM="$venv/bin/ninja" -DWITH_CUDA="${WITH_CUDA:-OFF}" \
  -DCUDAToolkit_ROOT="${CUDA_HOME:-/usr/local/cuda}" -DCUDA_TOOLKIT_ROOT_DIR="${CUDA_HOME:-/usr/local/cuda}" -DPython3_EXECUTABLE="$venv/bin/python" "${extra[@]}" "$@"
"$cmake" --build "$build" -j "$(nproc)"
(cd "$build" && "$(dirname "$cmake")/ctest" --output-on-failure 2>/dev/null || ctest --output-on-failure)
