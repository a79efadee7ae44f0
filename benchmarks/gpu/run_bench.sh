#!/usr/bin/env bash
# The GPU measurements the issues ask for, one device call each (each under 10 minutes; run after
# run_checks.sh built the extension): the Wan2.1-1.3B-sized configuration (480x832, 33 frames,
# random weights: speed and memory only) uncached, with EasyCache / PreciseCache-flash, each with
# and without the memory plan (swap + chunk), and the whole-pipeline peak with chunk + sliced decode.
# Usage: PART=wan13 bash benchmarks/gpu/run_bench.sh   (PART: wan13 | memory)
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu-$(date +%Y%m%d)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
case "${PART:-wan13}" in
  wan13)
    python3 -m lightcache.bench --model wan2.1-1.3b --device cuda --steps 20 --repeats 3 --no-progress \
      --methods none,easycache,easycache+mem,precise-flash,precise-flash+mem,diffusers-fbc \
      --out "$OUT/bench-wan2.1-1.3b" > "$OUT/bench-wan2.1-1.3b.log" 2>&1 ;;
  memory)
    # per-stage peaks (CUDA allocator) of the uncached pipeline vs chunk + sliced decode to the host
    python3 - "$OUT/memory-wan2.1-1.3b.json" > "$OUT/memory-wan2.1-1.3b.log" 2>&1 <<'PY'
import json, sys, time, torch, lightcache
from lightcache import MemoryPlan
from lightcache.bench_models import build

pipe, kw, _, desc = build("wan2.1-1.3b", "cuda", 10)[:4]
plans = {
    "uncached": MemoryPlan(),
    "easycache": None,
    "easycache+swap": MemoryPlan(swap="on"),
    "chunk+sliced decode": MemoryPlan(chunk_size=4096, decode_slices=1, decode_to_host=True),
    "easycache+swap+chunk+sliced decode": MemoryPlan(swap="on", chunk_size=4096, decode_slices=1, decode_to_host=True),
}
rows = {}
for name, plan in plans.items():
    policy = lightcache.EasyCache(threshold=0.05, warmup_steps=2) if name.startswith("easycache") else None
    for rep in range(2):  # the second run is the measured one (first: warm-up, autotuning)
        lightcache.enable(pipe, policy=policy, memory=plan)
        torch.cuda.synchronize(); t0 = time.perf_counter()
        pipe(**kw, generator=torch.Generator("cpu").manual_seed(0))
        torch.cuda.synchronize(); seconds = time.perf_counter() - t0
        r = lightcache.report(pipe); lightcache.disable(pipe)
    rows[name] = dict(seconds=seconds, peak_bytes=r.peak_bytes, cache_bytes=r.cache_bytes, reuse_ratio=r.reuse_ratio)
    print(name, json.dumps(rows[name]), flush=True)
json.dump(dict(model=desc, torch=torch.__version__, gpu=torch.cuda.get_device_name(), rows=rows), open(sys.argv[1], "w"), indent=2)
PY
    ;;
esac
tail -25 "$OUT"/*.log
