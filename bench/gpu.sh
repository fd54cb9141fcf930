#!/usr/bin/env bash
# The benchmark on a lent GPU machine (Python 3.12 with PyTorch, no network): the project's
# missing wheels travel in .whl/ (see README, Development). Writes its output to $OUT.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD EDGE_INSPECTOR_CACHE=/tmp/edge-inspector-cache PYTHONUNBUFFERED=1
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu-info.txt"
python3 bench/bench_engine.py --device cuda:0 --frames 400 --rounds 3 --json "$out/bench-gpu.json" 2>&1 | tee "$out/bench-gpu.txt"
python3 bench/bench_engine.py --device cuda:0 --imgsz 640 --frames 400 --rounds 3 --json "$out/bench-gpu-640.json" 2>&1 | tee "$out/bench-gpu-640.txt"
