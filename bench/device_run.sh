#!/usr/bin/env bash
# The benchmark on a lent accelerator machine. First, here (no device time):
#   bash bench/device_prepare.sh       (.whl: wheels of what its Python lacks; .devdata: a
#                                       copy of caltech101-1200; together under 64 MiB)
# then one call there, carry [".whl", ".devdata"]:
#   bash bench/device_run.sh gpu       (the index job with the tower on CUDA fp16, judged on
#                                       the limit of its cores and its card)
#   bash bench/device_run.sh bench     (two of its cores, the CPU's jobs)
#   bash bench/device_run.sh install   (the wheels alone, and what the machine has)
# Each call installs the carried wheels first, into /tmp/site (its Python's own folders are
# not ours to change), so no call depends on an earlier one: a machine goes back after 30 s
# idle, and its /tmp with it.
set -x
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
python3 -c "import torch, onnxruntime, onnx, faiss, open_clip, sqlite_utils; print(torch.__version__, onnxruntime.__version__, onnx.__version__, faiss.__version__)" || exit 1
# the caltech copy where the bench looks for it, and the phone set generated outside the timing
image_sets() {
  mkdir -p ../shared/datasets && ln -sfn "$PWD/.devdata/caltech101-1200" ../shared/datasets/caltech101-1200
  python3 -m bench.images phone || exit 1
}
case "$1" in
install)
  lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-400
  ;;
bench)
  image_sets
  # Two cores of this machine, clipsearch's jobs, then the baseline on the phone set (its
  # cold queries would take minutes here; see docs/benchmarks.md for the same-machine run).
  # --device cpu: the GPU beside these cores must not be used ("auto" would pick it).
  OMP_NUM_THREADS=2 taskset -c 0,1 python3 -m bench --sets caltech,phone --jobs index \
    --skip-baseline --cold-runs 3 --env OMP_NUM_THREADS=2 --env CUDA_VISIBLE_DEVICES= \
    --index-args "--device cpu" --out "$OUT/cpu2.json" 2>&1 | tee "$OUT/cpu2.log"
  [ "$2" = "no-baseline" ] && exit 0
  start=$(date +%s%N)
  OMP_NUM_THREADS=2 taskset -c 0,1 python3 -m bench.baseline index bench/.cache/sets/phone-200 \
    /tmp/baseline-phone.npy 2>&1 | tail -2 | tee "$OUT/baseline-phone.log"
  echo "baseline phone-200 wall ms: $(( ($(date +%s%N) - start) / 1000000 ))" \
    | tee -a "$OUT/baseline-phone.log"
  ;;
gpu)
  image_sets
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu-card.txt"
  # bench.limit sees --device cuda in the index arguments: the limit is the slower of the
  # cores (decode and prepare) and the card (the tower in fp16, batches of 64).
  python3 -m bench --sets caltech,phone --jobs index --skip-baseline --cold-runs 3 \
    --index-args "--device cuda --precision fp16 --batch-size 64 --workers 14" \
    --out "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
  ;;
esac
