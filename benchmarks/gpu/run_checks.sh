#!/usr/bin/env bash
# One packed GPU session (e.g. through the device tool on an H200): build the extension, run the
# CUDA tests, run the microbenchmarks and the engine overhead, and leave logs + JSON in $OUT
# (default benchmarks/results/gpu-<date>). Assumes torch with CUDA and triton are installed there;
# diffusers (and its deps) may come as wheels: see benchmarks/gpu/README.md.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu-$(date +%Y%m%d)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$OUT/env.txt" 2>&1
python3 -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { echo "build failed"; tail -30 "$OUT/build.log"; exit 1; }
python3 -m lightcache.info >> "$OUT/env.txt" 2>&1
python3 -m pytest -q -x tests/ -k "cuda or CUDA or triton" -rfE > "$OUT/cuda_tests.log" 2>&1; echo "cuda tests rc=$?" >> "$OUT/env.txt"
python3 -m pytest -q tests/ -rfE > "$OUT/all_tests.log" 2>&1; echo "all tests rc=$?" >> "$OUT/env.txt"
python3 -m pytest benchmarks/ --benchmark-only -q --benchmark-json="$OUT/microbench.json" > "$OUT/microbench.log" 2>&1
python3 benchmarks/engine_overhead.py --device cuda --json "$OUT/engine_overhead.json" > "$OUT/engine_overhead.log" 2>&1
tail -3 "$OUT"/*.log
