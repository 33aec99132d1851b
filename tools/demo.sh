#!/usr/bin/env bash
# tools/demo.sh — the README's main job: build resunetpp, write a synthetic polyp dataset, train
# ResUNet++ on it and evaluate the best checkpoint on the held-out test split.
# Installs what the build needs if it is missing (tools/install_deps.sh).
# The CUDA backend has not been verified on a GPU yet, so the demo trains on the CPU (all cores).
# Environment overrides: DEMO_SIZE (48), DEMO_COUNT (600), DEMO_EPOCHS (16), DEMO_OUT (runs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh

size=${DEMO_SIZE:-48}
count=${DEMO_COUNT:-600}
epochs=${DEMO_EPOCHS:-16}
out=${DEMO_OUT:-runs/demo}
data=data/synth-$size

start=$(date +%s)
echo "== build =="
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target resunetpp -j "$(nproc 2>/dev/null || echo 2)"

echo "== synthetic dataset: $count images at ${size}x${size} in $data =="
./build/resunetpp synth --out "$data" --count "$count" --size "$size" --seed 1

echo "== train (cpu) =="
./build/resunetpp train --data "$data" --out "$out" --size "$size" --batch 8 --epochs "$epochs" \
  --lr 2e-3 --schedule cosine --seed 1 --device cpu --overwrite

echo "== evaluate the best checkpoint on the test split =="
./build/resunetpp eval --checkpoint "$out/checkpoint_best.safetensors" --data "$data" --split test \
  --out "$out/eval_test.json"
echo "demo finished in $(( $(date +%s) - start )) s; run folder: $out"
