#!/usr/bin/env bash
# Build the C++ tests (csrc/test/test_ops.cpp) and dgnet's CPU kernels with AddressSanitizer and
# UndefinedBehaviorSanitizer, and run them: an out-of-bounds access, a use after free or undefined behaviour
# in dgnet's code (the extreme-scale, all-equal and tiny-N re-ranking cases, and fused AdaIN's odd row lengths
# in every dtype among them) fails the run.
# Same CMake build as scripts/ctest.sh (same environment variables), in build/sanitize, without CUDA (the tests
# run only CPU kernels, and scripts/ctest.sh has compiled the CUDA sources already).
# libtorch itself is not instrumented; leak checking is off because its static allocations outlive main.
set -euo pipefail
cd "$(dirname "$0")/.."
san="-fsanitize=address,undefined"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
WITH_CUDA=OFF DGNET_CMAKE_BUILD_DIR=${DGNET_CMAKE_BUILD_DIR:-build/sanitize} bash scripts/ctest.sh \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="$san -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
  -DCMAKE_EXE_LINKER_FLAGS="$san" -DCMAKE_SHARED_LINKER_FLAGS="$san"
