#!/usr/bin/env bash
# GPU (CUDA fp16) and 2-core CPU runs of the benchmark on a lent accelerator machine.
# Expects, in the repo root: .whl/ (wheels of open_clip_torch, faiss-cpu, sqlite-utils,
# sqlite-fts4, click-default-group, platformdirs, ftfy, wcwidth for the machine's Python)
# and .devdata/caltech101-1200 (a copy of ../shared/datasets/caltech101-1200).
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl || exit 1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p ../shared/datasets && ln -sfn "$PWD/.devdata/caltech101-1200" ../shared/datasets/caltech101-1200
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-200
python3 -m bench --sets caltech,phone --jobs index --skip-baseline --cold-runs 3 \
  --index-args "--device cuda --precision fp16 --batch-size 64 --workers 14" \
  --out "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
OMP_NUM_THREADS=2 taskset -c 0,1 python3 -m bench --sets caltech,phone --jobs index --cold-runs 3 \
  --env OMP_NUM_THREADS=2 --out "$OUT/cpu2.json" 2>&1 | tee "$OUT/cpu2.log"
