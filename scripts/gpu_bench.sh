#!/usr/bin/env bash
# The GPU figures issue #4 asks for, in one prepared run (device tool or any CUDA machine):
# Kronos-small at context 400 / horizon 30, batch 1, 64 and 1024, fp32 and bf16, plus the
# greedy token agreement of bf16 with fp32. Results land in ${OUT:-results}/gpu_*.json.
set -euo pipefail
out=${OUT:-results}
mkdir -p "$out"
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
for dtype in float32 bfloat16; do
  for batch in 1 64 1024; do
    extra=(--no-baseline)
    # the recompute baseline is only affordable at batch 1
    if [ "$batch" = 1 ]; then extra=(--baseline-repeats 1); fi
    PYTHONUNBUFFERED=1 $py -m kronos_core.bench --device cuda --preset Kronos-small --context 400 --horizon 30 \
      --batch "$batch" --dtype "$dtype" --repeats 3 "${extra[@]}" --out "$out/gpu_${dtype}_b${batch}.json"
  done
done
PYTHONUNBUFFERED=1 $py -m kronos_core.bench --device cuda --preset Kronos-small --context 400 --horizon 30 \
  --batch 64 --repeats 1 --no-baseline --compare-dtype bfloat16 --out "$out/gpu_bf16_agreement.json"
