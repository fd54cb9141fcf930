#!/usr/bin/env bash
# The benchmark on a lent GPU machine (Python 3.12 with PyTorch, no network). The wheels the
# machine lacks travel in .whl/ (git-ignored), fetched beforehand on a machine with pip access:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     ultralytics==8.4.190 ultralytics-thop ultralytics-platform lap pydantic pydantic_core \
#     annotated-types typing-inspection polars polars-runtime-32
# Optional first argument "train": retrain the demo model on the GPU first and bench that one.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD EDGE_INSPECTOR_CACHE=/tmp/edge-inspector-cache PYTHONUNBUFFERED=1
out=${OUT:-/tmp}
model=edge_inspector/demo/model/demo-defects.pt
if [ "${1:-}" = train ]; then
  python3 -m edge_inspector.demo.train --device 0 --hours 0.085 --workers 12 --out "$out/demo-defects.pt"
  model=$out/demo-defects.pt
fi
python3 bench/bench_engine.py --device cuda:0 --model "$model" --frames 400 --rounds 3 \
  --json "$out/bench-gpu.json" 2>&1 | tee "$out/bench-gpu.txt"
