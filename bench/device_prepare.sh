#!/usr/bin/env bash
# Here, before a lent GPU machine's first call (no device time spent): what bench/device_run.sh
# carries there.
#   .whl      wheels for its Python 3.12 of what clipsearch needs and its image lacks
#             (docs: /work/.library/device/KINDS.md's package list), at the versions this
#             checkout's .venv was tested with
#   .devdata  a copy of ../shared/datasets/caltech101-1200 (the machine has no ../shared)
# Both with the working tree stay under the 64 MiB a call carries, so one call installs and
# runs: `bash bench/device_run.sh gpu` with carry [".whl", ".devdata"].
set -eu
cd "$(git rev-parse --show-toplevel)"
python=${PYTHON:-.venv/bin/python}
# open_clip_torch, faiss-cpu, sqlite-utils (and its own two) and ftfy (and wcwidth) are not in
# the image; platformdirs neither. torch, numpy, onnx, onnxruntime, Pillow, safetensors,
# huggingface_hub, regex, tqdm, click, timm are.
names="open_clip_torch faiss-cpu sqlite-utils sqlite-fts4 click-default-group ftfy wcwidth
platformdirs"
rm -rf .whl && mkdir .whl
for name in $names; do
  version=$("$python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "$name==$version"
done
rm -rf .devdata && mkdir .devdata
cp -r ../shared/datasets/caltech101-1200 .devdata/
# one du over every file: xargs would split a long list into several totals
tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
carried=$(du -sb .whl .devdata | awk '{s += $1} END {print s}')
echo "tree $((tree / 1048576)) MiB + .whl and .devdata $((carried / 1048576)) MiB (limit 64)"
[ $((tree + carried)) -lt $((64 * 1048576)) ] || { echo "over 64 MiB: carry them in two calls"; exit 1; }
