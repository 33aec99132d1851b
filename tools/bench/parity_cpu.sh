#!/usr/bin/env bash
# tools/bench/parity_cpu.sh — resunetpp against an independent PyTorch ResUNet++ on the CPU, end to end:
#   1. a synthetic 64x64 dataset (resunetpp synth);
#   2. a short training run, so that the weights and the BatchNorm running statistics are not the defaults;
#   3. logits parity: resunetpp predict --logits on 4 images vs PyTorch eval mode in fp64 and fp32;
#   4. the other direction: a PyTorch-written state_dict (no metadata, random BN statistics) run by resunetpp;
#   5. one SGD step (momentum 0) of resunetpp train vs the same step in PyTorch fp64: implied gradients
#      per tensor, BN running statistics, num_batches_tracked and the loss;
#   6. a smoke run of the PyTorch benchmark (tiny settings; eager modes unless BENCH_MODES says otherwise).
#
# usage: tools/bench/parity_cpu.sh [PATH/TO/resunetpp]      (or RESUNETPP=... in the environment)
# environment:
#   PYTHON        the Python with torch, safetensors and numpy (default python3)
#   OUT_JSON_DIR  copy the JSON results here (default: none; the temp folder is removed)
#   KEEP=1        keep the temp folder
#   BENCH_MODES   modes of the benchmark smoke run (default eager_fp32,amp_bf16_cl; "none" skips it;
#                 the torch.compile modes take minutes to compile on a small CPU)
#   TORCH_THREADS PyTorch's CPU threads (default 1); RESUNETPP_THREADS is passed through to resunetpp.
# exit: 0 pass, 1 a check failed, 2 usage error, 77 skipped (no torch / safetensors / numpy).
# About 1 minute on 2 cores.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${1:-${RESUNETPP:-}}"
py="${PYTHON:-python3}"
if [[ -z "$bin" ]]; then
  echo "usage: $0 PATH/TO/resunetpp (or set RESUNETPP)" >&2
  exit 2
fi
if [[ ! -x "$bin" ]]; then
  echo "$bin: not an executable" >&2
  exit 2
fi
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
if ! "$py" -c "import torch, safetensors, numpy" >/dev/null 2>&1; then
  echo "SKIP: $py cannot import torch, safetensors and numpy" >&2
  exit 77
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/rpp-parity.XXXXXX")"
cleanup() { if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$work"; else echo "kept $work"; fi; }
trap cleanup EXIT
# PyTorch on one thread by default: with 2 cores shared (other tests, a compiler), its OpenMP
# threads spin and a pass can become 10x slower than on one thread.
tool=(env OMP_NUM_THREADS="${TORCH_THREADS:-1}" "$py" "$here/torch_resunetpp.py")
status=0
t0=$SECONDS

echo "== resunetpp: $bin"
echo "== python: $("$py" -c 'import sys, torch, safetensors; print(sys.version.split()[0], "torch", torch.__version__, "safetensors", safetensors.__version__)')"
echo "== work folder: $work"

echo "== 1. synthetic data"
"$bin" synth --out "$work/data" --count 40 --size 64 --seed 3

echo "== 2. a short training run (Adam, 4 epochs)"
"$bin" train --data "$work/data" --out "$work/run" --size 64 --batch 4 --epochs 4 --lr 3e-3 --seed 5 \
  --overwrite | grep -E '^(epoch|done)' || true
ckpt="$work/run/checkpoint_last.safetensors"
test -s "$ckpt"

echo "== 3. logits parity (resunetpp checkpoint)"
mkdir -p "$work/images"
for i in 00000 00001 00002 00003; do cp "$work/data/images/synth_$i.png" "$work/images/"; done
"$bin" predict --checkpoint "$ckpt" --input "$work/images" --out "$work/pred" --logits | tail -n 1
"${tool[@]}" parity --checkpoint "$ckpt" --images "$work/images" --logits "$work/pred/logits" \
  --json "$work/parity_trained.json" || status=1

echo "== 4. logits parity (PyTorch-written state_dict, random BN statistics)"
"${tool[@]}" summary --save "$work/torch_init.safetensors" --randomize 11 || status=1
"$bin" predict --checkpoint "$work/torch_init.safetensors" --size 64 --input "$work/images" \
  --out "$work/pred_torch" --logits | tail -n 1
"${tool[@]}" parity --checkpoint "$work/torch_init.safetensors" --size 64 --images "$work/images" \
  --logits "$work/pred_torch/logits" --json "$work/parity_torch_written.json" || status=1

echo "== 5. one SGD step: gradients and BN statistics"
"${tool[@]}" train-step --resunetpp "$bin" --data "$work/data" --weights "$ckpt" --work "$work/step" \
  --size 64 --batch 2 --json "$work/train_step.json" || status=1

modes="${BENCH_MODES:-eager_fp32,amp_bf16_cl}"
if [[ "$modes" != none ]]; then
  echo "== 6. benchmark smoke run ($modes)"
  "${tool[@]}" bench --device cpu --size 64 --batch 2 --infer-batch 8 --iters 3 --warmup 1 --modes "$modes" \
    --json "$work/bench_smoke.json" || status=1
fi

if [[ -n "${OUT_JSON_DIR:-}" ]]; then
  mkdir -p "$OUT_JSON_DIR"
  cp "$work"/*.json "$OUT_JSON_DIR/"
  echo "JSON results copied to $OUT_JSON_DIR"
fi
echo "== $([[ $status == 0 ]] && echo PASS || echo FAIL) in $((SECONDS - t0)) s"
exit $status
