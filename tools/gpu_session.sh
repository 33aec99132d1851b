#!/usr/bin/env bash
# tools/gpu_session.sh — everything a session with a GPU should run first, in one command:
#   build   configure and build for sm_90 (RESUNETPP_CUDA=ON, RESUNETPP_CUDNN=ON, warnings as
#           errors), using the bundled .vendor/googletest and .vendor/stb when present
#   test    every GPU suite (gpu_test_device, gpu_test_ops_gpu, gpu_test_conv_gpu,
#           gpu_test_bn_relu_conv_gpu, gpu_test_executor_gpu) with RPP_EXPECT_GPU=1 (no device
#           is a failure, not a skip), then the CPU suite without the slow label
#   sanitize  compute-sanitizer memcheck and racecheck on gpu_test_ops_gpu and
#           gpu_test_executor_gpu, with --gtest_filter subsets that finish in minutes
# and prints a compact summary. Full logs go to ${OUT:-/tmp}/gpu_session/.
#
# Usage: bash tools/gpu_session.sh [all|build|test|sanitize]...   (default: all)
# Environment: BUILD (build folder, default build-gpu), JOBS (default nproc), CUDA_ARCHS (default
# 90), STEP_TIMEOUT (seconds per test binary, default 540), OPS_FILTER, EXEC_FILTER,
# RACE_OPS_FILTER, RACE_EXEC_FILTER (gtest filters of the sanitizer runs).
# Exit status: 0 when every stage that ran passed.
# Debugging a failing executor node: RPP_CUDA_DEBUG_SYNC=1 ./build-gpu/gpu_test_executor_gpu
# --gtest_filter=... (eager launches, a synchronisation after each node, errors name the node);
# RPP_CUDA_GRAPHS=0 runs eagerly without the synchronisations (graph capture vs kernel problems).
set -u
cd "$(dirname "$0")/.." || exit 1
root=$PWD
build=${BUILD:-build-gpu}
jobs=${JOBS:-$(nproc 2>/dev/null || echo 4)}
logs=${OUT:-/tmp}/gpu_session
step_timeout=${STEP_TIMEOUT:-540}
mkdir -p "$logs"
summary=$logs/summary.txt
: >"$summary"
status=0
build_ok=1  # set to 0 by a failed configure or build; the later stages then do not run

note() { echo "$*" | tee -a "$summary"; }
fail() { note "FAIL: $*"; status=1; }

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(all)
want() {
  local s
  for s in "${stages[@]}"; do [ "$s" = all ] || [ "$s" = "$1" ] && return 0; done
  return 1
}

# Counts of a gtest log: "P passed, F failed, S skipped".
gtest_counts() {
  local p f s
  p=$(grep -Eo '^\[  PASSED  \] [0-9]+' "$1" | grep -Eo '[0-9]+$' | tail -1)
  f=$(grep -Eo '^\[  FAILED  \] [0-9]+ test' "$1" | grep -Eo '[0-9]+' | tail -1)
  s=$(grep -Eo '^\[  SKIPPED \] [0-9]+ test' "$1" | grep -Eo '[0-9]+' | tail -1)
  echo "${p:-0} passed, ${f:-0} failed, ${s:-0} skipped"
}

note "== gpu_session $(date -u +%Y-%m-%dT%H:%M:%SZ) in $root, logs in $logs"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$summary"
else
  note "gpu: nvidia-smi not found"
fi
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
note "nvcc: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo missing)"

if want build; then
  t0=$(date +%s)
  args=(-DCMAKE_BUILD_TYPE=Release -DRESUNETPP_WERROR=ON -DRESUNETPP_CUDA=ON -DRESUNETPP_CUDNN=ON
        "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-90}")
  [ -f .vendor/googletest/CMakeLists.txt ] && args+=("-DRESUNETPP_GTEST_SOURCE_DIR=$root/.vendor/googletest")
  [ -f .vendor/stb/stb_image.h ] && args+=("-DRESUNETPP_STB_DIR=$root/.vendor/stb")
  gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  if ! cmake -S . -B "$build" ${gen[@]+"${gen[@]}"} "${args[@]}" >"$logs/configure.log" 2>&1; then
    fail "configure (see $logs/configure.log)"; tail -20 "$logs/configure.log"; build_ok=0
  elif ! cmake --build "$build" -j "$jobs" >"$logs/build.log" 2>&1; then
    fail "build (see $logs/build.log)"; grep -E 'error|FAILED' "$logs/build.log" | head -20; build_ok=0
  else
    note "build: ok in $(( $(date +%s) - t0 )) s ($(grep -E 'cuDNN|CUDA backend' "$logs/configure.log" | tr '\n' ' '))"
  fi
fi

if want test && [ $build_ok -eq 1 ]; then
  export RPP_EXPECT_GPU=1  # a missing or unusable device fails the GPU tests instead of skipping them
  for t in gpu_test_device gpu_test_ops_gpu gpu_test_conv_gpu gpu_test_bn_relu_conv_gpu gpu_test_executor_gpu; do
    exe=$build/$t
    if [ ! -x "$exe" ]; then fail "$t not built"; continue; fi
    t0=$(date +%s)
    timeout "$step_timeout" "$exe" >"$logs/$t.log" 2>&1
    rc=$?
    line="$t: $(gtest_counts "$logs/$t.log") in $(( $(date +%s) - t0 )) s"
    [ $rc -eq 124 ] && line="$line (TIMEOUT after $step_timeout s)"
    if [ $rc -ne 0 ]; then
      fail "$line"
      grep -E '^\[  FAILED  \] [A-Za-z]' "$logs/$t.log" | sort -u | head -20 | tee -a "$summary"
    else
      note "$line"
    fi
    if grep -q 'no CUDA device present' "$logs/$t.log"; then fail "$t skipped tests: no CUDA device visible"; fi
  done
  # The numbers the executor tests print (errors against the CPU, memory).
  grep -E 'device:|loss cpu|scaled error|relative|worst|MiB|^cuda:' "$logs/gpu_test_executor_gpu.log" 2>/dev/null \
    | head -60 | sed 's/^/  /' | tee -a "$summary"
  t0=$(date +%s)
  if ctest --test-dir "$build" -j "$jobs" -LE 'slow|gpu' >"$logs/ctest_cpu.log" 2>&1; then
    note "ctest (CPU, -LE slow|gpu): $(grep -E 'tests passed' "$logs/ctest_cpu.log") in $(( $(date +%s) - t0 )) s"
  else
    fail "ctest (CPU): $(grep -E 'tests passed|tests failed' "$logs/ctest_cpu.log")"
    grep -E '\*\*\*Failed|Failed  ' "$logs/ctest_cpu.log" | head -20 | tee -a "$summary"
  fi
fi

# Runs after failing tests too: memcheck's report is what explains most of them.
if want sanitize && [ $build_ok -eq 1 ]; then
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  if [ ! -x "$cs" ]; then
    fail "compute-sanitizer not found"
  else
    # Reductions and shared-memory kernels for racecheck; everything for memcheck.
    ops_filter=${OPS_FILTER:-'GpuBatchNorm.*:GpuElementwise.*:GpuLoss.*:GpuOptim.*'}
    exec_filter=${EXEC_FILTER:-'GpuExecutor.SmallNetworkSanitizerSmoke:GpuExecutorHost.*'}
    race_ops_filter=${RACE_OPS_FILTER:-'GpuBatchNorm.TrainForwardMatchesCpu:GpuBatchNorm.BackwardMatchesCpu:GpuElementwise.ScaleChannelsForwardBackward:GpuElementwise.GlobalAvgPoolForwardBackward:GpuElementwise.LinearForwardBackward:GpuLoss.*:GpuOptim.SumSquaresClipFactorAndScale'}
    race_exec_filter=${RACE_EXEC_FILTER:-'GpuExecutor.SmallNetworkSanitizerSmoke'}
    run_cs() {  # tool binary filter
      local tool=$1 t=$2 filter=$3 log="$logs/${1}_${2}.log" t0 rc errs line
      t0=$(date +%s)
      timeout "$step_timeout" "$cs" --tool "$tool" --error-exitcode 99 --print-limit 50 \
        "$build/$t" "--gtest_filter=$filter" >"$log" 2>&1
      rc=$?
      errs=$(grep -Eo 'ERROR SUMMARY: [0-9]+ error' "$log" | tail -1)
      line="$tool $t: ${errs:-no summary}, gtest $(gtest_counts "$log"), rc $rc in $(( $(date +%s) - t0 )) s"
      [ $rc -eq 124 ] && line="$line (TIMEOUT after $step_timeout s; narrow the filter)"
      if [ $rc -ne 0 ]; then
        fail "$line"
        grep -E '^=========.*(Invalid|Race|hazard|Error|error)' "$log" | sort | uniq -c | sort -rn | head -10 | tee -a "$summary"
      else
        note "$line"
      fi
    }
    run_cs memcheck gpu_test_ops_gpu "$ops_filter"
    run_cs memcheck gpu_test_executor_gpu "$exec_filter"
    run_cs memcheck gpu_test_bn_relu_conv_gpu "*At64*:*Ragged*:*NaN*"
    run_cs racecheck gpu_test_ops_gpu "$race_ops_filter"
    run_cs racecheck gpu_test_bn_relu_conv_gpu "*Ragged*"
    run_cs racecheck gpu_test_executor_gpu "$race_exec_filter"
  fi
fi

note "== gpu_session: $([ $status -eq 0 ] && echo ALL PASSED || echo FAILURES) (summary: $summary)"
exit $status
