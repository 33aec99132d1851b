#!/usr/bin/env bash
# tools/run_tests.sh — the project's test command (the README's second command; CI runs it).
#  1. Release build with warnings as errors (and every CUDA file compiled when nvcc is present),
#     then the whole CTest suite (GPU suites skip without a device).
#  2. AddressSanitizer + UndefinedBehaviorSanitizer build of the CPU code, CTest again; the
#     long training test is left to step 1 (label "slow").
# Usage: bash tools/run_tests.sh [--no-sanitizers]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh

jobs=$(nproc 2>/dev/null || echo 2)
start=$(date +%s)

echo "== release build =="
# CUDA (when nvcc is present): SASS for sm_90 and PTX for sm_80 checks that every .cu file compiles
# for both targets at half the ptxas time of two full SASS builds.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DRESUNETPP_WERROR=ON \
  "-DCMAKE_CUDA_ARCHITECTURES=${RESUNETPP_TEST_CUDA_ARCHS:-80-virtual;90}" >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"

if [ "${1:-}" != "--no-sanitizers" ]; then
  echo "== address + undefined-behaviour sanitizer build (CPU) =="
  # The kernel libraries (CPU reference, emulated CUDA and cuDNN) at -O2, the rest at -O1: the
  # emulated CUDA suites that dominate this pass then run 1.6-1.7x faster, with the same
  # instrumentation (2-core machine, 2026-11-22; docs/design.md, "Running the CUDA code without a
  # GPU"). All at -O2 ran no faster and built slower.
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-O1 \
    -DCMAKE_C_FLAGS_DEBUG=-O1 -DRESUNETPP_KERNEL_OPT=-O2 -DRESUNETPP_WERROR=ON \
    -DRESUNETPP_CUDA=OFF -DRESUNETPP_SANITIZE=address,undefined >/dev/null
  cmake --build build-asan -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs" -LE slow
fi
echo "tests finished in $(( $(date +%s) - start )) s"
