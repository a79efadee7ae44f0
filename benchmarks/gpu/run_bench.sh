#!/usr/bin/env bash
# The full Wan2.1-1.3B-sized measurements, for a later device session once benchmarks/gpu/run.sh
# (the packed run, which builds and installs lightcache) has passed on that machine: one PART per
# device call, each well under 10 minutes. Random weights: speed and memory only.
#   PART=wan13   lightcache bench at 480x832, 33 frames, 20 steps, 3 rounds: the uncached reference
#                (always run) against EasyCache / PreciseCache-flash with and without the memory
#                plan, and diffusers' FirstBlockCache
#   PART=memory  per-stage CUDA allocator peaks: uncached vs swap / chunk / sliced decode
# Exit code: the Python program's (a failed bench fails the script). Output: $OUT (at most 3 files).
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%d)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1
unset TRITON_INTERPRET
WORK_DIR=$(mktemp -d)
trap 'rm -rf "$WORK_DIR"' EXIT
python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'run_bench.sh: no GPU visible')" || exit 2
case "${PART:-wan13}" in
  wan13)
    python3 -m lightcache.bench --model wan2.1-1.3b --device cuda --steps 20 --repeats 3 --no-progress \
      --methods easycache,easycache+mem,precise-flash,precise-flash+mem,diffusers-fbc \
      --out "$WORK_DIR/bench" 2>&1 | tee "$OUT/bench-wan2.1-1.3b.log"
    rc=$?
    cp "$WORK_DIR/bench/results.json" "$OUT/bench-wan2.1-1.3b.json" 2>/dev/null
    exit $rc ;;
  memory)
    # per-stage peaks (CUDA allocator) of the uncached pipeline vs chunk + sliced decode to the host
    python3 - "$OUT/memory-wan2.1-1.3b.json" 2>&1 <<'PY' | tee "$OUT/memory-wan2.1-1.3b.log"
import json, sys, time, torch, lightcache
from lightcache import MemoryPlan
from lightcache.bench_models import build

pipe, kw, _, desc = build("wan2.1-1.3b", "cuda", 10)[:4]
pipe.set_progress_bar_config(disable=True)
# every plan meters the allocator's per-stage peaks (MemoryPlan(cuda_peaks=True): off by default)
plans = {
    "uncached": MemoryPlan(swap="off", cuda_peaks=True),
    "easycache": MemoryPlan(swap="off", cuda_peaks=True),
    "easycache+swap": MemoryPlan(swap="on", cuda_peaks=True),
    "chunk+sliced decode": MemoryPlan(chunk_size=4096, decode_slices=1, decode_to_host=True, cuda_peaks=True),
    "easycache+swap+chunk+sliced decode": MemoryPlan(swap="on", chunk_size=4096, decode_slices=1, decode_to_host=True,
                                                     cuda_peaks=True),
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
    rows[name] = dict(seconds=seconds, peak_bytes=dict(r.peak_bytes), cache_bytes=dict(r.cache_bytes),
                      reuse_ratio=r.reuse_ratio)
    print(name, json.dumps(rows[name]), flush=True)
json.dump(dict(model=desc, torch=torch.__version__, gpu=torch.cuda.get_device_name(), rows=rows), open(sys.argv[1], "w"), indent=2)
PY
    exit "${PIPESTATUS[0]}" ;;
  *) echo "run_bench.sh: PART must be wan13 or memory, got '${PART}'" >&2; exit 2 ;;
esac
