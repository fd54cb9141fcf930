#!/usr/bin/env bash
# The benchmarks on a lent GPU machine (Python 3.12 with PyTorch, no network). The wheels the
# machine lacks travel in .whl/ (git-ignored), fetched beforehand on a machine with pip access:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     ultralytics==8.4.190 ultralytics-thop ultralytics-platform lap pydantic pydantic_core \
#     annotated-types typing-inspection ollama==0.5.1 httpx httpcore h11 anyio sniffio idna \
#     certifi pypdf prometheus-client
# (add polars and polars-runtime-32 for "train": they are large, and only training needs them)
# Optional first argument "train": retrain the demo model on the GPU first and bench that one;
# "service": only the service-versus-in-process latency bench.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD EDGE_INSPECTOR_CACHE=/tmp/edge-inspector-cache PYTHONUNBUFFERED=1
out=${OUT:-/tmp}
model=edge_inspector/demo/model/demo-defects.pt
if [ "${1:-}" = train ]; then
  python3 -m edge_inspector.demo.train --device 0 --hours 0.085 --workers 12 --out "$out/demo-defects.pt"
  model=$out/demo-defects.pt
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
if [ "${1:-}" = service ]; then
  python3 bench/bench_service.py --device cuda:0 --model "$model" --frames 300 --fps 20 \
    --rounds 2 --json "$out/bench-service-gpu.json" 2>"$out/bench-service-gpu.err" |
    tee "$out/bench-service-gpu.txt"
  exit 0
fi
python3 bench/bench_engine.py --device cuda:0 --model "$model" --frames 400 --rounds 3 \
  --json "$out/bench-gpu.json" 2>&1 | tee "$out/bench-gpu.txt"
python3 bench/bench_vlm.py --device cuda:0 --model "$model" --frames 600 --rounds 3 \
  --json "$out/bench-vlm-gpu.json" 2>"$out/bench-vlm-gpu.err" | tee "$out/bench-vlm-gpu.txt"
python3 bench/bench_service.py --device cuda:0 --model "$model" --frames 300 --fps 20 --rounds 2 \
  --json "$out/bench-service-gpu.json" 2>"$out/bench-service-gpu.err" | tee "$out/bench-service-gpu.txt"
