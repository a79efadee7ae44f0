#!/usr/bin/env bash
# One packed GPU run of lightcache: every GPU check in one command, in order of value, inside a
# time budget. See benchmarks/gpu/README.md for how to run it on the device machine.
#
#   bash benchmarks/gpu/run.sh                 # on a machine with an NVIDIA GPU
#   DRY_RUN=1 bash benchmarks/gpu/run.sh       # anywhere: CPU stand-ins of every step (CI runs this)
#
# Steps (in this order; each under its own timeout, each only if its minimum fits what is left):
#   env             versions, GPU, driver (env.txt)
#   build           pip install --no-build-isolation . (CUDA ring required), lightcache.info
#   cuda_tests      pytest -k "(cuda or triton) and not large and not opcheck and not e2e" tests/ (xdist
#                   if present)
#   large_opcheck   pytest -k "(cuda or triton) and (large or opcheck) and not e2e" tests/
#   e2e             tests/test_cuda_e2e.py (policy alone vs swap / swap+chunk+sliced decode on CUDA)
#   microbench      pytest benchmarks/ -k cuda --benchmark-only (the issue sizes; microbench.json)
#   wan13_bench     lightcache bench at Wan2.1-1.3B size, reduced (bench-wan13.json)
#   engine_overhead benchmarks/engine_overhead.py --device cuda (engine_overhead.json)
#   plan_vs_alloc   benchmarks/plan_vs_allocator.py: lightcache plan's stage peaks against the CUDA
#                   allocator's, Wan2.1-1.3B 240x416x17 bf16 (plan_vs_allocator.json)
#   ctest           the C++ ring tests (CPU + CUDA engine) built with CMake
#
# Environment:
#   BUDGET_S        seconds for the whole run (default 480; dry run 120). A step runs only if its
#                   minimum fits what is left minus RESERVE_S; its timeout is cut to what is left.
#   RESERVE_S       seconds kept back for the end (default 10; dry run 2)
#   OUT             result folder (default benchmarks/results/gpu-<UTC date-time>); at most 8 files:
#                   summary.txt env.txt logs.txt microbench.json bench-wan13.json engine_overhead.json
#                   plan_vs_allocator.json
#   STEPS           comma-separated subset of the steps above (default: all)
#   PYTHON          interpreter (default python3)
#   DRY_RUN=1       no GPU needed: each step prints its real command and runs a small CPU stand-in
#                   (collect-only test selections, a tiny bench, ...) through the same budget,
#                   timeout, summary and exit-code logic
#   LC_GPU_INJECT   tests only: "step:fail" or "step:hang" replaces that step's command
#   LC_GPU_TIMEOUT_S tests only: caps every step's timeout
# Exit code: 0 every step that ran passed (steps skipped for the budget are listed, not failures);
# 1 a step failed or timed out (its dependants are skipped); 2 no GPU visible, or bad usage.
# summary.txt: one line per step, "<step> rc=<rc> seconds=<s> figure=<the step's figure>", then
# "total rc=<exit code> seconds=<s> figure=...". It is written as the run goes.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 2
export ROOT
export LC_DRY=${DRY_RUN:-0}
case "$LC_DRY" in
  0 | 1) ;;
  *) echo "run.sh: DRY_RUN must be 0 or 1, got '$LC_DRY'" >&2; exit 2 ;;
esac
if [ "$LC_DRY" = 1 ]; then _budget=120; _reserve=2; else _budget=480; _reserve=10; fi
BUDGET_S=${BUDGET_S:-$_budget}
RESERVE_S=${RESERVE_S:-$_reserve}
for _v in BUDGET_S RESERVE_S ${LC_GPU_TIMEOUT_S:+LC_GPU_TIMEOUT_S}; do
  case "${!_v}" in '' | *[!0-9]*) echo "run.sh: $_v must be a whole number of seconds, got '${!_v}'" >&2; exit 2 ;; esac
done
export PY=${PYTHON:-python3}
export OUT=${OUT:-$ROOT/benchmarks/results/gpu-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lightcache-gpu.XXXXXX") || exit 2
export WORK
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1
SUMMARY=$OUT/summary.txt
LOGS=$OUT/logs.txt
: >"$SUMMARY"
: >"$LOGS"
now_ms() { # wall clock in milliseconds (bash 5's EPOCHREALTIME, else date)
  if [ -n "${EPOCHREALTIME:-}" ]; then
    local t=${EPOCHREALTIME/[.,]/}
    echo $((10#$t / 1000))
  else
    date +%s%3N
  fi
}
T0=$(now_ms)
elapsed_s() { echo $((($(now_ms) - T0) / 1000)); }

STEP_NAMES=(env build cuda_tests large_opcheck e2e microbench wan13_bench engine_overhead plan_vs_alloc ctest)
# name -> "min timeout" in seconds, real run and dry run; and what each step needs to have passed
declare -A REAL=([env]="5 60" [build]="45 240" [cuda_tests]="60 180" [large_opcheck]="20 90" [e2e]="30 150"
                 [microbench]="30 120" [wan13_bench]="90 210" [engine_overhead]="20 60" [plan_vs_alloc]="40 180"
                 [ctest]="30 120")
declare -A DRY=([env]="1 30" [build]="1 30" [cuda_tests]="2 60" [large_opcheck]="2 60" [e2e]="2 60"
                [microbench]="2 60" [wan13_bench]="3 90" [engine_overhead]="2 60" [plan_vs_alloc]="2 60"
                [ctest]="1 30")
declare -A NEEDS=([cuda_tests]=build [large_opcheck]=build [e2e]=build [microbench]=build [wan13_bench]=build
                  [engine_overhead]=build [plan_vs_alloc]=build)

if [ -n "${STEPS:-}" ]; then
  IFS=',' read -r -a _sel <<<"$STEPS"
  for _s in "${_sel[@]}"; do
    [ -n "${REAL[$_s]:-}" ] || { echo "run.sh: unknown step '$_s' in STEPS (steps: ${STEP_NAMES[*]})" >&2; exit 2; }
  done
fi
if ! command -v timeout >/dev/null 2>&1; then
  echo "run.sh: needs coreutils' timeout" >&2
  exit 2
fi

summary() { # name rc seconds figure
  local fig=${4//$'\n'/ }
  fig=${fig//$'\t'/ }
  printf '%s rc=%s seconds=%s figure=%s\n' "$1" "$2" "$3" "${fig:0:300}" | tee -a "$SUMMARY"
}

# ---- no GPU: stop at once -------------------------------------------------------------------
nogpu() {
  local msg="run.sh: no GPU visible ($1). Nothing was run; this script needs an NVIDIA GPU (DRY_RUN=1 runs its CPU stand-ins)."
  echo "$msg" >&2
  summary gpu 2 "$(elapsed_s)" "$msg"
  summary total 2 "$(elapsed_s)" "no GPU"
  exit 2
}
if [ "$LC_DRY" = 0 ]; then
  unset TRITON_INTERPRET  # never fall back to the Triton interpreter on a GPU run
  if ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /dev/nvidia0 ]; then
    nogpu "no NVIDIA driver: no nvidia-smi on PATH and no /dev/nvidia0"
  fi
  _why=$(timeout 90 "$PY" - 2>&1 <<'PY'
import os, sys
try:
    import torch
except Exception as exc:  # noqa: BLE001
    sys.exit(f"torch does not import: {exc}")
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device; "
             f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}")
PY
  ) || nogpu "$(printf '%s' "$_why" | tail -n 1)"
  export PYTHONSAFEPATH=1  # test the installed package, not the source tree (cwd stays off sys.path)
fi

# ---- wheels the image lacks (diffusers): .whl/*.whl -> $SITE on PYTHONPATH -------------------
SITE=${LC_SITE:-/tmp/lightcache-site}
if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  if [ "$LC_DRY" = 1 ]; then
    echo "dry run: would install $(ls "$ROOT"/.whl/*.whl | wc -l) wheels from .whl/ into $SITE"
  else
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$ROOT"/.whl/*.whl >>"$LOGS" 2>&1 || echo "run.sh: installing .whl/*.whl failed (see logs.txt)" >&2
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  fi
fi

# ---- the steps: real command, CPU stand-in, figure --------------------------------------------
have_xdist() { "$PY" -c "import xdist" >/dev/null 2>&1; }
pytest_args() { # common pytest flags on the GPU: parallel workers when xdist is there, a per-test limit
  local a="-q -p no:cacheprovider -rfE"
  if have_xdist; then a="$a -n ${LC_XDIST_WORKERS:-8}"; fi
  if "$PY" -c "import pytest_timeout" >/dev/null 2>&1; then a="$a --timeout=${LC_TEST_TIMEOUT_S:-120}"; fi
  echo "$a"
}
CUDA_SEL="(cuda or triton) and not large and not opcheck and not e2e"
LARGE_SEL="(cuda or triton) and (large or opcheck) and not e2e"
BENCH_METHODS=easycache,easycache+mem,precise-flash,precise-flash+mem
export CUDA_SEL LARGE_SEL BENCH_METHODS

step_env() {
  if [ "$LC_DRY" = 0 ]; then
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  fi
  "$PY" - <<'PY'
import importlib.metadata as md, platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"sm_{p.major}{p.minor}", f"{p.total_memory / 2**30:.1f} GiB", f"{p.multi_processor_count} SMs")
for name in ("triton", "diffusers", "transformers", "accelerate", "numpy", "pytest", "pytest-xdist", "pytest-benchmark", "cmake", "ninja", "pybind11"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "missing")
PY
  if [ "$LC_DRY" = 0 ]; then command -v nvcc >/dev/null && nvcc --version | tail -n 2; fi
  return 0
}
fig_env() {
  local gpu torch triton diffusers
  gpu=$(grep -m1 '^gpu ' "$1" | cut -d' ' -f2-)
  torch=$(grep -m1 '^torch ' "$1" | cut -d' ' -f2-)
  triton=$(grep -m1 '^triton ' "$1" | cut -d' ' -f2)
  diffusers=$(grep -m1 '^diffusers ' "$1" | cut -d' ' -f2)
  echo "${gpu:-no GPU (dry run)}; torch $torch; triton $triton; diffusers $diffusers"
}

step_build() {
  if [ "$LC_DRY" = 1 ]; then
    echo "dry run: would run: LIGHTCACHE_CUDA=1 $PY -m pip install --no-build-isolation --no-deps --no-index ."
    "$PY" -m pip --version && "$PY" -c "import setuptools; print('setuptools', setuptools.__version__)"
    return
  fi
  LIGHTCACHE_CUDA=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$PY" -m pip install --no-build-isolation --no-deps \
    --no-index --root-user-action=ignore -q . || return
  "$PY" -m lightcache.info | tee -a "$OUT/env.txt"
  "$PY" -c "
import lightcache._C as C, lightcache.kernels, lightcache.ops
assert C.cuda_compiled, 'lightcache._C has no CUDA engine: ' + C.build_note
print('build ok: lightcache._C with CUDA, lightcache.kernels imports')"
}
fig_build() {
  if [ "$LC_DRY" = 1 ]; then grep -m1 '^pip ' "$1" | cut -d' ' -f1-2; return; fi
  if grep -q '^build ok' "$1"; then grep -m1 'ring buffer (CUDA)' "$1" || echo "build ok"; else tail -n 1 "$1"; fi
}

pytest_figure() { # the pytest summary line, then the first failing test
  local line failed
  line=$(grep -E '[0-9]+ (passed|failed|skipped|error|errors|deselected|selected|collected|tests? collected)' "$1" | tail -n 1 | tr -d '=' | sed 's/^ *//;s/ *$//')
  failed=$(grep -m1 -E '^(FAILED|ERROR) ' "$1" | cut -c1-120)
  echo "${line:-no pytest summary}${failed:+; first: $failed}"
}

step_cuda_tests() {
  if [ "$LC_DRY" = 1 ]; then
    echo "dry run: would run: $PY -m pytest $(pytest_args) -k \"$CUDA_SEL\" tests/"
    "$PY" -m pytest -q -p no:cacheprovider --collect-only -k "$CUDA_SEL" tests/test_op_*.py tests/test_ring_ops.py
    return
  fi
  # shellcheck disable=SC2046
  "$PY" -m pytest $(pytest_args) -k "$CUDA_SEL" tests/
}
fig_cuda_tests() { pytest_figure "$1"; }

step_large_opcheck() {
  if [ "$LC_DRY" = 1 ]; then
    echo "dry run: would run: $PY -m pytest $(pytest_args) -k \"$LARGE_SEL\" tests/"
    "$PY" -m pytest -q -p no:cacheprovider --collect-only -k "$LARGE_SEL" tests/test_op_*.py tests/test_ring_ops.py
    return
  fi
  # shellcheck disable=SC2046
  "$PY" -m pytest $(pytest_args) -k "$LARGE_SEL" tests/
}
fig_large_opcheck() { pytest_figure "$1"; }

step_e2e() {
  # here the tests skip (no CUDA): the dry run checks that the file collects and skips cleanly
  [ "$LC_DRY" = 1 ] && echo "dry run: runs the file; its tests skip without CUDA"
  # shellcheck disable=SC2046
  "$PY" -m pytest $( [ "$LC_DRY" = 1 ] && echo "-q -p no:cacheprovider -rs" || pytest_args) tests/test_cuda_e2e.py
}
fig_e2e() { pytest_figure "$1"; }

step_microbench() {
  local json=$OUT/microbench.json
  if [ "$LC_DRY" = 1 ]; then
    echo "dry run: would run: $PY -m pytest benchmarks/ -k cuda --benchmark-only --benchmark-json=$json"
    "$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_op_rel_l1.py -k cpu --benchmark-only \
      --benchmark-max-time=0.02 --benchmark-min-rounds=2 --benchmark-warmup=off --benchmark-json="$json"
    return
  fi
  "$PY" -m pytest -q -p no:cacheprovider -rfE benchmarks/ -k cuda --benchmark-only --benchmark-max-time=0.5 \
    --benchmark-min-rounds=5 --benchmark-warmup=on --benchmark-json="$json"
}
fig_microbench() {
  local json=$OUT/microbench.json
  [ -s "$json" ] || { pytest_figure "$1"; return; }
  "$PY" - "$json" <<'PY'
import json, sys
from collections import defaultdict
bs = json.load(open(sys.argv[1]))["benchmarks"]
groups = defaultdict(dict)  # (test, params but impl) -> impl -> benchmark
for b in bs:
    params = dict(b.get("params") or {})
    impl = params.pop("impl", "-")
    key = (b["name"].split("[")[0].replace("test_bench_", "").replace("test_", ""),
           "-".join(str(v) for k, v in sorted(params.items()) if k not in ("bench_device", "device")))
    groups[key][impl] = b
parts = []
for (name, rest), impls in groups.items():
    ours = impls.get("lightcache") or impls.get("chunked_op") or next(iter(impls.values()))
    med = ours["stats"]["median"]
    extra = ours.get("extra_info", {})
    rate = ""
    if extra.get("bytes") and med > 0:
        rate = f" {extra['bytes'] / med / 1e9:.3g}GB/s"
    elif extra.get("flops") and med > 0:
        rate = f" {extra['flops'] / med / 1e12:.3g}TF/s"
    vs = f" {impls['eager']['stats']['median'] / med:.2f}x eager" if "eager" in impls and med > 0 else ""
    parts.append(f"{name}{'[' + rest + ']' if rest else ''} {med * 1e3:.3g}ms{rate}{vs}")
print(f"{len(bs)} benchmarks: " + "; ".join(parts))
PY
}

step_wan13_bench() {
  local out=$WORK/bench
  if [ "$LC_DRY" = 1 ]; then
    echo "dry run: would run: $PY -m lightcache.bench --model wan2.1-1.3b --device cuda --steps 10 --repeats 2 --methods $BENCH_METHODS"
    "$PY" -m lightcache.bench --model wan2.1-1.3b --scale tiny --device cpu --steps 2 --repeats 1 \
      --methods easycache+mem --no-progress --out "$out" || return
  else
    # the published 1.3B denoiser and VAE at 480x832, 33 frames; 10 steps, 2 timed rounds
    "$PY" -m lightcache.bench --model wan2.1-1.3b --device cuda --steps 10 --repeats 2 \
      --methods "$BENCH_METHODS" --no-progress --out "$out" || return
  fi
  cp "$out/results.json" "$OUT/bench-wan13.json" || return
  # the bench records a method that raised as a row and goes on: here that fails the step
  "$PY" - "$OUT/bench-wan13.json" <<'PY'
import json, sys
bad = [f"{r['method']}: {r['status']}" for r in json.load(open(sys.argv[1]))["rows"] if str(r.get("status")).startswith("failed")]
sys.exit("bench rows failed: " + "; ".join(bad) if bad else 0)
PY
}
fig_wan13_bench() {
  local json=$OUT/bench-wan13.json
  [ -s "$json" ] || { tail -n 1 "$1"; return; }
  "$PY" - "$json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
parts = []
for r in d["rows"]:
    if r.get("status") != "ok":
        parts.append(f"{r['method']}: {r.get('status')}")
        continue
    peak = (r.get("peak_bytes") or {}).get("denoise")
    size = "" if not peak else f" {peak / 2**30:.2f}GiB" if peak >= 2**30 else f" {peak / 2**20:.2f}MiB"
    parts.append(f"{r['method'].replace(' (reference)', '')} {r.get('speedup') or 0:.2f}x{' denoise peak' + size if size else ''}")
print(f"{d.get('device')}: " + "; ".join(parts))
PY
}

step_engine_overhead() {
  local json=$OUT/engine_overhead.json
  if [ "$LC_DRY" = 1 ]; then
    echo "dry run: would run: $PY benchmarks/engine_overhead.py --device cuda --repeats 7 --json $json"
    # the script's own main() on a shrunken clip (its CPU size takes ~10 s a run here)
    "$PY" - "$json" <<'PY'
import sys
sys.path.insert(0, "benchmarks")
import engine_overhead as eo
full = eo.make_pipe
def small(device):
    pipe, kw = full(device)
    kw.update(height=32, width=32, num_frames=5, num_inference_steps=2)
    return pipe, kw
eo.make_pipe = small
eo.main(["--device", "cpu", "--repeats", "1", "--json", sys.argv[1]])
PY
    return
  fi
  "$PY" benchmarks/engine_overhead.py --device cuda --repeats 7 --json "$json"
}
fig_engine_overhead() { grep -m1 'engine overhead' "$1" || tail -n 1 "$1"; }

step_plan_vs_alloc() {
  local json=$OUT/plan_vs_allocator.json
  if [ "$LC_DRY" = 1 ]; then
    echo "dry run: would run: $PY benchmarks/plan_vs_allocator.py --device cuda --json $json"
    # the CPU tracker stands in for the allocator, at the tiny scale on a small clip
    "$PY" benchmarks/plan_vs_allocator.py --device cpu --scale tiny --height 64 --width 64 --frames 5 --json "$json"
    return
  fi
  "$PY" benchmarks/plan_vs_allocator.py --device cuda --json "$json"
}
fig_plan_vs_alloc() { grep -m1 '/simulated .* over' "$1" || tail -n 1 "$1"; }

step_ctest() {
  local b=$WORK/cmake
  if [ "$LC_DRY" = 1 ]; then
    echo "dry run: would run: cmake -S . -B $b -G Ninja -DLIGHTCACHE_CUDA=ON -DLIGHTCACHE_BUILD_PYTHON=OFF && cmake --build $b && ctest --test-dir $b"
    if command -v cmake >/dev/null 2>&1; then cmake --version | head -n 1; else echo "cmake: not on PATH here (the GPU image has it)"; fi
    return 0
  fi
  local gen=()
  command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
  cmake -S . -B "$b" "${gen[@]}" -DLIGHTCACHE_CUDA=ON -DLIGHTCACHE_BUILD_PYTHON=OFF -DLIGHTCACHE_BUILD_TESTS=ON \
    -DCMAKE_BUILD_TYPE=Release >/dev/null || return
  cmake --build "$b" -j "$(nproc)" >/dev/null || return
  ctest --test-dir "$b" --output-on-failure --timeout 60
}
fig_ctest() {
  if [ "$LC_DRY" = 1 ]; then tail -n 1 "$1"; return; fi
  grep -m1 -E 'tests passed|tests failed' "$1" || tail -n 1 "$1"
}

export -f have_xdist pytest_args step_env step_build step_cuda_tests step_large_opcheck step_e2e step_microbench \
  step_wan13_bench step_engine_overhead step_plan_vs_alloc step_ctest

# ---- the runner ---------------------------------------------------------------------------------
declare -A RC=()
FAILED=0
PASSED=0
SKIPPED=0
RAN=0

selected() {
  [ -z "${STEPS:-}" ] && return 0
  case ",$STEPS," in *",$1,"*) return 0 ;; esac
  return 1
}

run_step() {
  local name=$1 min timeout left t rc start secs fig log=$WORK/$1.log need=${NEEDS[$1]:-}
  if [ "$LC_DRY" = 1 ]; then read -r min timeout <<<"${DRY[$name]}"; else read -r min timeout <<<"${REAL[$name]}"; fi
  if [ -n "$need" ] && [ -n "${RC[$need]:-}" ] && [ "${RC[$need]}" != 0 ]; then
    RC[$name]=dep
    SKIPPED=$((SKIPPED + 1))
    summary "$name" skip 0 "skipped: needs $need, which did not pass (rc=${RC[$need]})"
    return
  fi
  left=$(((BUDGET_S * 1000 - ($(now_ms) - T0) - RESERVE_S * 1000) / 1000))  # whole seconds, rounded down
  [ "$left" -lt 0 ] && left=0
  if [ "$min" -gt "$left" ]; then
    RC[$name]=budget
    SKIPPED=$((SKIPPED + 1))
    summary "$name" skip 0 "skipped: needs at least ${min} s, ${left} s left of the ${BUDGET_S} s budget"
    return
  fi
  t=$timeout
  [ "$t" -gt "$left" ] && t=$left
  [ -n "${LC_GPU_TIMEOUT_S:-}" ] && [ "$t" -gt "$LC_GPU_TIMEOUT_S" ] && t=$LC_GPU_TIMEOUT_S
  local cmd="step_$name"
  case "${LC_GPU_INJECT:-}" in
    "$name:fail") cmd="echo 'injected failure (LC_GPU_INJECT)'; exit 3" ;;
    "$name:hang") cmd="echo 'injected hang (LC_GPU_INJECT)'; sleep 600" ;;
  esac
  echo "== $name (timeout ${t} s, ${left} s left) ==" | tee -a "$LOGS"
  start=$(now_ms)
  timeout -k 10 "$t" bash -c "$cmd" >"$log" 2>&1 </dev/null
  rc=$?
  secs=$(((($(now_ms) - start) + 500) / 1000))
  if [ "$(wc -c <"$log")" -gt $((4 << 20)) ]; then  # the device tool returns files of at most 16 MiB
    { head -c $((1 << 20)) "$log"; printf '\n[... %s bytes cut ...]\n' "$(($(wc -c <"$log") - (4 << 20)))"
      tail -c $((3 << 20)) "$log"; } >>"$LOGS"
  else
    cat "$log" >>"$LOGS"
  fi
  tail -n 8 "$log"
  fig=$("fig_$name" "$log" 2>/dev/null)
  RAN=$((RAN + 1))
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    fig="TIMEOUT after ${t} s; ${fig}"
  fi
  RC[$name]=$rc
  if [ "$rc" = 0 ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
  summary "$name" "$rc" "$secs" "${fig:-n/a}"
}

{
  echo "lightcache GPU run: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), budget ${BUDGET_S} s, dry run ${LC_DRY}, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} | tee "$OUT/env.txt"
for name in "${STEP_NAMES[@]}"; do
  selected "$name" || continue
  run_step "$name"
  [ "$name" = env ] && [ -f "$WORK/env.log" ] && cat "$WORK/env.log" >>"$OUT/env.txt"
done

total_rc=0
[ "$FAILED" -gt 0 ] && total_rc=1
summary total "$total_rc" "$(elapsed_s)" "$PASSED passed, $FAILED failed, $SKIPPED skipped of $((PASSED + FAILED + SKIPPED)) steps; budget ${BUDGET_S} s$([ "$LC_DRY" = 1 ] && echo ' (dry run)')"
echo "results in $OUT:"
ls -1 "$OUT"
exit "$total_rc"
