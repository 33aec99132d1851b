#!/usr/bin/env bash
# tools/gpu_session.sh — everything a session with a GPU should run first, in one command:
#   build   configure and build for sm_90 (RESUNETPP_CUDA=ON, RESUNETPP_CUDNN=ON, warnings as
#           errors), using the bundled .vendor/googletest and .vendor/stb when present
#   test    every GPU suite (gpu_test_device, gpu_test_ops_gpu, gpu_test_conv_gpu,
#           gpu_test_bn_relu_conv_gpu, gpu_test_bn_relu_conv_bwd_gpu, gpu_test_bn_relu_conv_tc_gpu,
#           gpu_test_bn_relu_conv_bwd_tc_gpu, gpu_test_bf16_gpu, gpu_test_bf16_train_ops_gpu,
#           gpu_test_conv_bn_sum_gpu, gpu_test_conv_sum_bwd_gpu, gpu_test_se_gpu, gpu_test_image_ops_gpu,
#           gpu_test_executor_gpu,
#           rpp_test_capi_gpu) with
#           RPP_EXPECT_GPU=1 (no device
#           is a failure, not a skip), then the CPU suite without the slow label
#   sanitize  compute-sanitizer memcheck and racecheck on gpu_test_ops_gpu, the convolution
#           suites (gpu_test_bn_relu_conv*_gpu, gpu_test_bf16*_gpu, gpu_test_conv_bn_sum_gpu,
#           gpu_test_conv_sum_bwd_gpu),
#           gpu_test_se_gpu and
#           gpu_test_executor_gpu, with --gtest_filter subsets that finish in minutes
#   bench   resunetpp-bench at 256x256 batch 16 (kernel rows verified then timed, the training
#           step timeline, inference batch 1 and 32) in fp32, and the timeline and inference with
#           TF32, with the cuDNN path and with every fused node hand-written, and the training step
#           and inference with bf16 activations (hand-written, then the cuDNN path); then
#           resunetpp-capi-bench (the C API: latency at batch 1, throughput at batch 32, host and
#           device pointers) on the GPU in fp32 and bf16 and on the CPU; JSON to the log folder
#   torch   tools/bench/torch_resunetpp.py on the GPU: logits parity against resunetpp predict
#           for the same checkpoint, then its benchmark (eager fp32, AMP bf16 channels_last,
#           torch.compile), each mode under its own time limit
#   kvasir  the accuracy run, when .vendor/data/kvasir-seg exists (tools/bundle_deps.sh with
#           BUNDLE_DATA): train at 256x256 within KVASIR_SECONDS (default 420) wall seconds: one
#           probe epoch measures an epoch's time, then a run with a cosine schedule over as many
#           epochs as fit in the rest (stopped by Ctrl-C at the limit, keeping checkpoint_best),
#           then eval --split test
# and prints a compact summary. Full logs go to ${OUT:-/tmp}/gpu_session/.
#
# Usage: bash tools/gpu_session.sh [all|build|test|sanitize|bench|torch|kvasir]...
#        (default: all = build test sanitize; bench, torch and kvasir run only when named)
# Environment: BUILD (build folder, default build-gpu), JOBS (default nproc), CUDA_ARCHS (default
# 90), STEP_TIMEOUT (seconds per test binary, default 540), OPS_FILTER, EXEC_FILTER,
# RACE_OPS_FILTER, RACE_EXEC_FILTER (gtest filters of the sanitizer runs), KVASIR_SECONDS,
# KVASIR_FLAGS (extra flags of the accuracy run, default none: fp32 on the cuDNN path; e.g.
# "--precision bf16" or "--allow-tf32 --kernels handwritten"); KVASIR_DATA, KVASIR_SIZE and
# KVASIR_DEVICE (a dry run of the stage on the CPU: a small synthetic set, size 32, device cpu).
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
  for s in "${stages[@]}"; do
    [ "$s" = "$1" ] && return 0
    [ "$s" = all ] && case "$1" in build|test|sanitize) return 0 ;; esac
  done
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
  for t in gpu_test_device gpu_test_ops_gpu gpu_test_conv_gpu gpu_test_bn_relu_conv_gpu \
           gpu_test_bn_relu_conv_bwd_gpu gpu_test_bn_relu_conv_tc_gpu gpu_test_bn_relu_conv_bwd_tc_gpu \
           gpu_test_bf16_gpu gpu_test_bf16_train_ops_gpu gpu_test_conv_bn_sum_gpu gpu_test_conv_sum_bwd_gpu \
           gpu_test_se_gpu gpu_test_image_ops_gpu \
           gpu_test_executor_gpu \
           rpp_test_capi_gpu; do
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
    if grep -q 'no usable CUDA device' "$logs/$t.log"; then fail "$t skipped tests: no usable CUDA device"; fi
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
    exec_filter=${EXEC_FILTER:-'GpuExecutor.SmallNetworkSanitizerSmoke:GpuExecutor.NonFiniteStepIsSkippedOnTheDevice:GpuExecutor.Tf32TensorCoreKernelsAndEpilogueStatistics:GpuExecutor.Bf16InferenceSmoke:GpuExecutor.AsppConvBnSumMatchesCpu:GpuExecutor.Bf16TrainingSmoke:GpuExecutorHost.*'}
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
    run_cs memcheck gpu_test_bn_relu_conv_bwd_gpu "*At64*:*Ragged*:*Dilation*:*NaN*"
    run_cs memcheck gpu_test_bn_relu_conv_tc_gpu "*At64*:*Ragged*:*NaN*:*Statistics*"
    run_cs racecheck gpu_test_ops_gpu "$race_ops_filter"
    run_cs racecheck gpu_test_bn_relu_conv_gpu "*Ragged*"
    run_cs racecheck gpu_test_bn_relu_conv_bwd_gpu "*Ragged*"
    run_cs racecheck gpu_test_bn_relu_conv_tc_gpu "*Ragged*"
    run_cs racecheck gpu_test_bn_relu_conv_bwd_tc_gpu "*Ragged*"
    run_cs memcheck gpu_test_bn_relu_conv_bwd_tc_gpu "*Ragged*:*NaN*"
    run_cs memcheck gpu_test_bf16_gpu "*"
    run_cs memcheck gpu_test_bf16_train_ops_gpu "*"
    run_cs racecheck gpu_test_bf16_train_ops_gpu "*"
    run_cs memcheck gpu_test_bn_relu_conv_bwd_tc_gpu "*Bf16Stored*"
    run_cs racecheck gpu_test_bf16_gpu "Bf16Ops.GlobalAvgPool*:Bf16Ops.BatchNormOfAnUpsampleConcat*:Bf16Conv.*"
    run_cs memcheck gpu_test_conv_bn_sum_gpu "*At64*:*Ragged*:*Exact*:*Bf16*"
    run_cs racecheck gpu_test_conv_bn_sum_gpu "*Ragged*:*Bf16*"
    run_cs memcheck gpu_test_conv_sum_bwd_gpu "*At64*:*Ragged*:*Exact*"
    run_cs racecheck gpu_test_conv_sum_bwd_gpu "*Ragged*"
    run_cs memcheck gpu_test_se_gpu "*"
    run_cs racecheck gpu_test_se_gpu "*"
    run_cs racecheck gpu_test_executor_gpu "$race_exec_filter"
  fi
fi

# ---- evidence: numbers for docs/performance.md and docs/results/ ----
bin=$build/resunetpp
if want bench && [ $build_ok -eq 1 ]; then
  t0=$(date +%s)
  if timeout "$step_timeout" "$build/resunetpp-bench" --device cuda --size 256 --batch 16 \
      --json "$logs/bench_fp32.json" >"$logs/bench_fp32.log" 2>&1; then
    note "bench fp32: ok in $(( $(date +%s) - t0 )) s"
  else
    fail "bench fp32 (see $logs/bench_fp32.log)"
  fi
  grep -E 'device:|bandwidth|step time|device memory|batch +[0-9]+:|FAILED|verified' "$logs/bench_fp32.log" \
    | head -20 | sed 's/^/  /' | tee -a "$summary"
  t0=$(date +%s)
  if timeout "$step_timeout" "$build/resunetpp-bench" --device cuda --size 256 --batch 16 --tf32 --filter c2.c1.2 \
      --json "$logs/bench_tf32.json" >"$logs/bench_tf32.log" 2>&1; then
    note "bench tf32: ok in $(( $(date +%s) - t0 )) s"
  else
    fail "bench tf32 (see $logs/bench_tf32.log)"
  fi
  grep -E 'step time|device memory|batch +[0-9]+:' "$logs/bench_tf32.log" | sed 's/^/  tf32 /' | tee -a "$summary"
  # The whole step with every fused node hand-written: tensor-core forwards, epilogue statistics.
  t0=$(date +%s)
  if timeout "$step_timeout" "$build/resunetpp-bench" --device cuda --size 256 --batch 16 --tf32 --kernels handwritten \
      --filter c2.c1.2 --json "$logs/bench_tf32_hw.json" >"$logs/bench_tf32_hw.log" 2>&1; then
    note "bench tf32 hand-written: ok in $(( $(date +%s) - t0 )) s"
  else
    fail "bench tf32 hand-written (see $logs/bench_tf32_hw.log)"
  fi
  grep -E 'step time|device memory|batch +[0-9]+:' "$logs/bench_tf32_hw.log" | sed 's/^/  tf32 hand-written /' \
    | tee -a "$summary"
  # bf16: the training step (saved activations bf16, BF16 tensor cores, gradients fp32) and
  # inference (logits checked against fp32's before timing).
  t0=$(date +%s)
  if timeout "$step_timeout" "$build/resunetpp-bench" --device cuda --size 256 --batch 16 --bf16 \
      --filter c2.c1.2 --json "$logs/bench_bf16.json" >"$logs/bench_bf16.log" 2>&1; then
    note "bench bf16 (training step, inference): ok in $(( $(date +%s) - t0 )) s"
  else
    fail "bench bf16 (see $logs/bench_bf16.log)"
  fi
  grep -E 'step time|device memory|batch +[0-9]+:' "$logs/bench_bf16.log" | sed 's/^/  bf16 /' | tee -a "$summary"
  # bf16 on the cuDNN path (each bf16 operand staged in fp32, TF32 cuDNN): the fallback the
  # hand-written bf16 kernels are measured against.
  t0=$(date +%s)
  if timeout "$step_timeout" "$build/resunetpp-bench" --device cuda --size 256 --batch 16 --bf16 --tf32 \
      --kernels cudnn --filter c2.c1.2 --json "$logs/bench_bf16_cudnn.json" >"$logs/bench_bf16_cudnn.log" 2>&1; then
    note "bench bf16 cuDNN path: ok in $(( $(date +%s) - t0 )) s"
  else
    fail "bench bf16 cuDNN path (see $logs/bench_bf16_cudnn.log)"
  fi
  grep -E 'step time|device memory|batch +[0-9]+:' "$logs/bench_bf16_cudnn.log" | sed 's/^/  bf16 cuDNN path /' \
    | tee -a "$summary"
  # The C API as an application calls it (622x530 frames resized to 256x256, outputs at the
  # frame's size): latency at batch 1, throughput at batch 32, host and device pointers, on the
  # GPU in fp32 and bf16, and on the CPU beside them. A default-size checkpoint of one step.
  cw=$logs/capi_bench_work
  rm -rf "$cw" && mkdir -p "$cw"
  "$bin" synth --out "$cw/data" --count 8 --size 64 --seed 1 >"$cw/synth.log" 2>&1
  "$bin" train --data "$cw/data" --out "$cw/run" --size 64 --batch 2 --epochs 1 --max-steps 1 --device cpu \
    >"$cw/train.log" 2>&1
  for cfg in "cuda fp32 --device-pointers" "cuda bf16 --device-pointers --tolerance 1e-3" \
      "cpu fp32 --repeats 5 --batch-repeats 2"; do
    set -- $cfg
    name=capi_bench_$1_$2
    t0=$(date +%s)
    if timeout "$step_timeout" "$build/resunetpp-capi-bench" --checkpoint "$cw/run/checkpoint_last.safetensors" \
        --size 256 --device "$1" --precision "$2" "${@:3}" --json "$logs/$name.json" >"$logs/$name.log" 2>&1; then
      note "capi bench $1 $2: ok in $(( $(date +%s) - t0 )) s"
    else
      fail "capi bench $1 $2 (see $logs/$name.log)"
    fi
    grep -E 'verified|images/s' "$logs/$name.log" | sed "s/^/  capi $1 $2 /" | tee -a "$summary"
  done
fi

if want torch && [ $build_ok -eq 1 ]; then
  py=${PYTHON:-python3}
  if ! "$py" -c 'import torch' 2>/dev/null; then
    fail "torch: $py cannot import torch"
  else
    w=$logs/torch_work
    rm -rf "$w" && mkdir -p "$w"
    # One checkpoint for both engines: a resunetpp run of one step on synthetic 256x256 data.
    "$bin" synth --out "$w/data" --count 8 --size 256 --seed 1 >"$w/synth.log" 2>&1
    "$bin" train --data "$w/data" --out "$w/run" --size 256 --batch 2 --epochs 1 --max-steps 1 --device cpu \
      >"$w/train.log" 2>&1
    ck=$w/run/checkpoint_last.safetensors
    for dev in cpu cuda; do
      "$bin" predict --checkpoint "$ck" --input "$w/data/images" --out "$w/pred_$dev" --logits --device "$dev" \
        >"$w/pred_$dev.log" 2>&1
      if "$py" tools/bench/torch_resunetpp.py parity --checkpoint "$ck" --images "$w/data/images" --max-images 4 \
          --logits "$w/pred_$dev/logits" --json "$logs/torch_parity_$dev.json" >"$logs/torch_parity_$dev.log" 2>&1; then
        note "torch parity (resunetpp $dev logits vs PyTorch fp64): ok"
      else
        fail "torch parity, resunetpp on $dev (see $logs/torch_parity_$dev.log)"
      fi
    done
    # bf16 inference (activations in bf16, every convolution on bf16 tensor cores, the fused ASPP)
    # against PyTorch fp64: a gross-error gate, 5e-2 of the largest logit (bf16 operands).
    "$bin" predict --checkpoint "$ck" --input "$w/data/images" --out "$w/pred_bf16" --logits --device cuda \
      --precision bf16 >"$w/pred_bf16.log" 2>&1
    if "$py" tools/bench/torch_resunetpp.py parity --checkpoint "$ck" --images "$w/data/images" --max-images 4 \
        --logits "$w/pred_bf16/logits" --tol 5e-2 --json "$logs/torch_parity_bf16.json" \
        >"$logs/torch_parity_bf16.log" 2>&1; then
      note "torch parity (resunetpp cuda bf16 logits vs PyTorch fp64, tol 5e-2): ok"
    else
      fail "torch parity, resunetpp cuda bf16 (see $logs/torch_parity_bf16.log)"
    fi
    grep -E 'max abs|mask pixels' "$logs/torch_parity_bf16.log" | sed 's/^/  bf16 /' | tee -a "$summary"
    for mode in eager_fp32 amp_bf16_cl compile_fp32 compile_bf16_cl; do
      t0=$(date +%s)
      timeout "${TORCH_MODE_SECONDS:-420}" "$py" tools/bench/torch_resunetpp.py bench --device cuda --size 256 \
        --batch 16 --infer-batch 32 --iters 20 --modes "$mode" --weights "$ck" --json "$logs/torch_$mode.json" \
        >"$logs/torch_$mode.log" 2>&1
      note "torch $mode: rc $? in $(( $(date +%s) - t0 )) s: $(grep -E '^  (train|skipped)' "$logs/torch_$mode.log" | head -1)"
    done
  fi
fi

if want kvasir && [ $build_ok -eq 1 ]; then
  data=${KVASIR_DATA:-.vendor/data/kvasir-seg}
  dev=${KVASIR_DEVICE:-cuda}
  budget=${KVASIR_SECONDS:-420}
  if [ ! -d "$data/images" ]; then
    fail "kvasir: no $data (run BUNDLE_DATA=path/to/kvasir-seg bash tools/bundle_deps.sh before the session)"
  else
    # The cosine schedule has to end when the time does, so one probe epoch first measures an
    # epoch's wall time (training and validation; start-up and the first steps' warm-up make it
    # an overestimate), and the run then gets as many epochs as fit in what is left of the budget.
    train_flags=(--data "$data" --split-dir "$data/splits" --size "${KVASIR_SIZE:-256}" --batch 16 --lr 1e-3
      --schedule cosine --augment light --device "$dev")
    probe=$logs/kvasir_probe
    t0=$(date +%s)
    timeout -k 60 -s INT "$budget" "$bin" train "${train_flags[@]}" --epochs 1 --out "$probe" ${KVASIR_FLAGS:-} \
      --overwrite >"$logs/kvasir_probe.log" 2>&1
    rc=$?
    probe_s=$(( $(date +%s) - t0 ))
    epoch_s=$(awk -F, 'NR == 2 { print $8 }' "$probe/log.csv" 2>/dev/null)
    if [ $rc -ne 0 ] || [ -z "$epoch_s" ]; then
      fail "kvasir probe epoch: rc $rc in $probe_s s; $(tail -1 "$logs/kvasir_probe.log")"
    else
      left=$(( budget - probe_s ))
      # Epochs that fit after the run's own start-up (the probe's time outside its epoch), with a
      # tenth kept in reserve for epochs slower than the probe's.
      epochs=$(awk -v left="$left" -v probe="$probe_s" -v e="$epoch_s" \
        'BEGIN { n = int(0.9 * (left - (probe - e)) / e); print n < 1 ? 1 : (n > 300 ? 300 : n) }')
      note "kvasir probe: one epoch in $epoch_s s ($probe_s s with start-up); $epochs epochs fit in the $left s left"
      run=$logs/kvasir_run
      t0=$(date +%s)
      timeout -k 60 -s INT "$left" "$bin" train "${train_flags[@]}" --epochs "$epochs" --early-stop 15 --out "$run" \
        ${KVASIR_FLAGS:-} --overwrite >"$logs/kvasir_train.log" 2>&1
      rc=$?
      note "kvasir train: rc $rc (124: stopped at the time limit) in $(( $(date +%s) - t0 )) s" \
        "($(( $(date +%s) - t0 + probe_s )) s with the probe); $(tail -1 "$logs/kvasir_train.log")"
      if [ -f "$run/checkpoint_best.safetensors" ]; then
        "$bin" eval --checkpoint "$run/checkpoint_best.safetensors" --data "$data" --split-dir "$data/splits" \
          --split test --device "$dev" --out "$run/eval_test.json" >"$logs/kvasir_eval.log" 2>&1
        note "kvasir eval (test split): rc $? $(grep -iE 'dice' "$logs/kvasir_eval.log" | head -2 | tr '\n' ' ')"
      else
        fail "kvasir: no checkpoint_best"
      fi
    fi
  fi
fi

note "== gpu_session: $([ $status -eq 0 ] && echo ALL PASSED || echo FAILURES) (summary: $summary)"
exit $status
