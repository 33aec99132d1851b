#!/usr/bin/env bash
# tools/demo.sh — the README's main job: build resunetpp, write a synthetic polyp dataset, train
# ResUNet++ on it and evaluate the best checkpoint on the held-out test split.
# Installs what the build needs if it is missing (tools/install_deps.sh).
# It trains on the GPU when the build has CUDA and cuDNN and a GPU is visible (--device auto), else
# on the CPU (all cores). The CUDA path has not been verified on a GPU yet: DEMO_DEVICE=cpu forces
# the CPU. Environment overrides: DEMO_SIZE (48), DEMO_COUNT (600), DEMO_EPOCHS (16),
# DEMO_OUT (runs/demo), DEMO_DEVICE (auto).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh

size=${DEMO_SIZE:-48}
count=${DEMO_COUNT:-600}
epochs=${DEMO_EPOCHS:-16}
out=${DEMO_OUT:-runs/demo}
device=${DEMO_DEVICE:-auto}
data=data/synth-$size

start=$(date +%s)
echo "== build =="
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target resunetpp -j "$(nproc 2>/dev/null || echo 2)"

echo "== synthetic dataset: $count images at ${size}x${size} in $data =="
./build/resunetpp synth --out "$data" --count "$count" --size "$size" --seed 1

echo "== train (device $device) =="
./build/resunetpp train --data "$data" --out "$out" --size "$size" --batch 8 --epochs "$epochs" \
  --lr 2e-3 --schedule cosine --seed 1 --device "$device" --overwrite

echo "== evaluate the best checkpoint on the test split =="
./build/resunetpp eval --checkpoint "$out/checkpoint_best.safetensors" --data "$data" --split test \
  --device "$device" --out "$out/eval_test.json"
echo "demo finished in $(( $(date +%s) - start )) s; run folder: $out"
