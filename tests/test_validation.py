"""Validation at the edges (issue 10): declared dependencies against what the code imports, the
diffusers floor, hostile field values of every policy and of MemoryPlan, and chunked_ffn's chunking
arguments. Errors must name the field (or argument) and what is allowed."""

import ast
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lightcache.ops  # noqa: F401  (registers torch.ops.lightcache.*)
from lightcache.memory import MemoryPlan
from lightcache.policies import DeepCache, EasyCache, PreciseCache

ROOT = Path(__file__).resolve().parents[1]
INT64_OVER = 2**63  # one past the int64 range every int field is capped at
HUGE_INT = 10**400  # beyond the float range too

# ------------------------------------------------------------------------------------------------
# declared dependencies (defects 1, 14, issue 15)
# ------------------------------------------------------------------------------------------------

# import name -> distribution name, where they differ beyond case and "_" vs "-"
IMPORT_TO_DIST = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "cv2": "opencv-python",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "google": "protobuf",
}
# peers the benchmark runs side by side when installed and reports "not installed" otherwise (the
# tests accept both); never a requirement
OPTIONAL_PEERS = {"cache_dit", "DeepCache"}


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the test extra brings tomli for it
        tomllib = pytest.importorskip("tomli")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()  # PEP 503 name normalisation


def _req_name(req: str) -> str:
    return _norm(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1))


def _names(reqs) -> set:
    return {_req_name(r) for r in reqs}


def _local_modules() -> set:
    """First-party top-level names: the package, and the test/benchmark helper modules (conftest,
    tiny_pipelines, common, ...) imported by plain name from their own folder."""
    names = {"lightcache", "kernels"}
    for folder in ("tests", "benchmarks", "benchmarks/proxy"):
        names |= {p.stem for p in (ROOT / folder).glob("*.py")}
        names |= {p.parent.name for p in (ROOT / folder).glob("*/__init__.py")}  # tests/tiny_families
    return names


def _third_party_imports(*folders: str) -> dict:
    """{top-level module: first file importing it} over every .py file under ``folders``: import
    statements anywhere (lazy ones inside functions too) and pytest.importorskip("name") calls."""
    skip = set(sys.stdlib_module_names) | _local_modules() | OPTIONAL_PEERS
    found = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
                mods = []
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                elif (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "attr", None) == "importorskip"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    mods = [node.args[0].value]
                for m in mods:
                    top = m.split(".")[0]
                    if top not in skip:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _uncovered(imports: dict, declared: set) -> list:
    return sorted(
        f"{mod} (distribution {IMPORT_TO_DIST.get(mod, _norm(mod))}, imported in {where})"
        for mod, where in imports.items()
        if _norm(IMPORT_TO_DIST.get(mod, mod)) not in declared
    )


def test_test_extra_covers_every_import_the_tests_reach():
    """`pip install ".[test]" && pytest` on a clean machine: everything tests/, the package (the
    bench and its plots included) and the Triton kernels import is declared."""
    project = _pyproject()["project"]
    declared = _names(project["dependencies"]) | _names(project["optional-dependencies"]["test"])
    imports = _third_party_imports("tests", "lightcache", "kernels")
    assert {"matplotlib", "imageio", "tqdm", "PIL"} <= set(imports)  # the scan sees the lazy imports
    assert _uncovered(imports, declared) == []


def test_bench_extra_covers_the_bench_and_benchmarks():
    project = _pyproject()["project"]
    declared = _names(project["dependencies"]) | _names(project["optional-dependencies"]["bench"])
    assert _uncovered(_third_party_imports("lightcache", "kernels", "benchmarks"), declared) == []
    assert "tqdm" in declared


def _floor(reqs, dist: str):
    """The >= floor of ``dist`` in ``reqs`` as a tuple of ints, None when it is not listed."""
    for r in reqs:
        if _req_name(r) == dist:
            m = re.search(r">=\s*([0-9][0-9.]*)", r)
            assert m, f"{r!r} must give a >= floor"
            return tuple(int(p) for p in m.group(1).strip(".").split("."))
    return None


def test_declared_floors_and_no_torch_in_extras():
    from lightcache._compat import DIFFUSERS_MIN

    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    listing = {name: reqs for name, reqs in extras.items() if _floor(reqs, "diffusers") is not None}
    assert {"test", "bench", "diffusers"} <= set(listing)
    # HookRegistry.invalidate_child_registries_cache (lightcache.engine) is new in diffusers 0.42
    assert DIFFUSERS_MIN == (0, 42)
    assert {name: _floor(reqs, "diffusers") for name, reqs in listing.items()} == {n: DIFFUSERS_MIN for n in listing}
    # the Triton interpreter of 3.6 fails the kernel tests under numpy >= 2.4 (3.7.0 passes them)
    assert _floor(extras["test"], "triton") >= (3, 7)
    assert "peft" in _names(extras["test"])
    # torch comes from the user's own install: an extra naming it could pull CUDA wheels
    for name, reqs in extras.items():
        assert not _names(reqs) & {"torch", "torchvision", "torchaudio"}, name
    (torch_req,) = [r for r in project["dependencies"] if _req_name(r) == "torch"]
    assert "==" not in torch_req and "<" not in torch_req


# ------------------------------------------------------------------------------------------------
# the diffusers floor at import time (defect 14)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.35.2", "0.41.9", "0.9.0", "unknown", ""])
def test_require_diffusers_refuses_older(monkeypatch, version):
    import diffusers

    from lightcache._compat import require_diffusers

    monkeypatch.setattr(diffusers, "__version__", version)
    with pytest.raises(ImportError, match=re.escape(f"lightcache needs diffusers>=0.42 (found {version!r})")):
        require_diffusers()


@pytest.mark.parametrize("version", ["0.42.0", "0.42.1", "0.43.0.dev0", "0.100.0", "1.0", "0.42rc1"])
def test_require_diffusers_accepts_newer(monkeypatch, version):
    import diffusers

    from lightcache._compat import require_diffusers

    monkeypatch.setattr(diffusers, "__version__", version)
    require_diffusers()


def test_require_diffusers_without_diffusers(monkeypatch):
    from lightcache._compat import require_diffusers

    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` raise ImportError
    with pytest.raises(ImportError, match=re.escape("lightcache needs diffusers>=0.42 (not installed)")):
        require_diffusers()


# ------------------------------------------------------------------------------------------------
# hostile field values (defect 3): (class, extra valid kwargs, field, value, exception, allowed)
# ------------------------------------------------------------------------------------------------

_FLOAT_GE0 = "must be a finite number >= 0.0"
_UNIT = "must be a finite number in [0.0, 1.0]"
_OPEN_UNIT = "must be a finite number in (0.0, 1.0]"
_POS = "must be a finite number > 0.0"


def _int(lo):
    return f"must be an int in [{lo}, 2**63 - 1]"


_MODES = "must be one of ['base', 'turbo', 'flash']"
_DS = "must be a tuple of 3 ints (time, height, width)"

POLICY_CASES = [
    # EasyCache.threshold: inf would mean "never compute", NaN never compares
    (EasyCache, {}, "threshold", math.inf, ValueError, _FLOAT_GE0),
    (EasyCache, {}, "threshold", -math.inf, ValueError, _FLOAT_GE0),
    (EasyCache, {}, "threshold", math.nan, ValueError, _FLOAT_GE0),
    (EasyCache, {}, "threshold", np.float64("nan"), ValueError, _FLOAT_GE0),
    (EasyCache, {}, "threshold", -0.1, ValueError, _FLOAT_GE0),
    (EasyCache, {}, "threshold", HUGE_INT, ValueError, _FLOAT_GE0),
    (EasyCache, {}, "threshold", "0.05", TypeError, _FLOAT_GE0),
    (EasyCache, {}, "threshold", [0.05], TypeError, _FLOAT_GE0),
    (EasyCache, {}, "threshold", True, TypeError, _FLOAT_GE0),
    (EasyCache, {}, "threshold", None, TypeError, _FLOAT_GE0),
    (EasyCache, {}, "threshold", torch.tensor(0.05), TypeError, _FLOAT_GE0),
    (EasyCache, {}, "warmup_steps", 3.0, TypeError, _int(0)),
    (EasyCache, {}, "warmup_steps", math.nan, TypeError, _int(0)),
    (EasyCache, {}, "warmup_steps", True, TypeError, _int(0)),
    (EasyCache, {}, "warmup_steps", np.bool_(True), TypeError, _int(0)),
    (EasyCache, {}, "warmup_steps", [10], TypeError, _int(0)),
    (EasyCache, {}, "warmup_steps", -1, ValueError, _int(0)),
    (EasyCache, {}, "warmup_steps", np.int64(-1), ValueError, _int(0)),
    (EasyCache, {}, "warmup_steps", INT64_OVER, ValueError, _int(0)),
    # PreciseCache
    (PreciseCache, {}, "mode", ["flash"], ValueError, _MODES),
    (PreciseCache, {}, "mode", "fast", ValueError, _MODES),
    (PreciseCache, {}, "mode", None, ValueError, _MODES),
    (PreciseCache, {}, "signal", ["input"], ValueError, "must be one of ['trial', 'input']"),
    (PreciseCache, {}, "signal", ("input",), ValueError, "must be one of ['trial', 'input']"),
    (PreciseCache, {}, "alpha", math.inf, ValueError, _UNIT),
    (PreciseCache, {}, "alpha", math.nan, ValueError, _UNIT),
    (PreciseCache, {}, "alpha", 1.5, ValueError, _UNIT),
    (PreciseCache, {}, "alpha", "0.5", TypeError, _UNIT),
    (PreciseCache, {}, "block_ratio", 0.0, ValueError, _OPEN_UNIT),
    (PreciseCache, {}, "block_ratio", math.nan, ValueError, _OPEN_UNIT),
    (PreciseCache, {}, "block_ratio", math.inf, ValueError, _OPEN_UNIT),
    (PreciseCache, {}, "block_ratio", [0.4], TypeError, _OPEN_UNIT),
    (PreciseCache, {}, "warmup_ratio", math.nan, ValueError, _UNIT),
    (PreciseCache, {}, "warmup_ratio", math.inf, ValueError, _UNIT),
    (PreciseCache, {}, "warmup_ratio", -0.1, ValueError, _UNIT),
    (PreciseCache, {}, "radius_ratio", math.inf, ValueError, _POS),
    (PreciseCache, {}, "radius_ratio", math.nan, ValueError, _POS),
    (PreciseCache, {}, "radius_ratio", 0, ValueError, _POS),
    (PreciseCache, {}, "radius_ratio", HUGE_INT, ValueError, _POS),
    (PreciseCache, {}, "radius_ratio", "0.2", TypeError, _POS),
    (PreciseCache, {}, "refresh_steps", 0, ValueError, _int(1)),
    (PreciseCache, {}, "refresh_steps", 3.0, TypeError, _int(1)),
    (PreciseCache, {}, "refresh_steps", True, TypeError, _int(1)),
    (PreciseCache, {}, "refresh_steps", INT64_OVER, ValueError, _int(1)),
    (PreciseCache, {}, "compute_last", 1, TypeError, "must be a bool (True or False)"),
    (PreciseCache, {}, "compute_last", np.bool_(True), TypeError, "must be a bool (True or False)"),
    (PreciseCache, {}, "compute_last", None, TypeError, "must be a bool (True or False)"),
    # a list would make the frozen policy unhashable: refused, with the tuple to write instead
    (PreciseCache, {}, "trial_downsample", [2, 4, 4], TypeError, "got the list [2, 4, 4]: write it as a tuple, e.g. (2, 4, 4)"),
    (PreciseCache, {}, "trial_downsample", "244", TypeError, _DS),
    (PreciseCache, {}, "trial_downsample", None, TypeError, _DS),
    (PreciseCache, {}, "trial_downsample", (2, 4), ValueError, _DS),
    (PreciseCache, {}, "trial_downsample", (True, 4, 4), TypeError, "[0] " + _int(1)),
    (PreciseCache, {}, "trial_downsample", (2, 4.0, 4), TypeError, "[1] " + _int(1)),
    (PreciseCache, {}, "trial_downsample", (2, 4, 0), ValueError, "[2] " + _int(1)),
    (PreciseCache, {}, "trial_downsample", (2, 4, INT64_OVER), ValueError, "[2] " + _int(1)),
    # DeepCache
    (DeepCache, {}, "interval", 3.0, TypeError, _int(1)),
    (DeepCache, {}, "interval", math.inf, TypeError, _int(1)),
    (DeepCache, {}, "interval", True, TypeError, _int(1)),
    (DeepCache, {}, "interval", "3", TypeError, _int(1)),
    (DeepCache, {}, "interval", 0, ValueError, _int(1)),
    (DeepCache, {}, "interval", -3, ValueError, _int(1)),
    (DeepCache, {}, "interval", INT64_OVER, ValueError, _int(1)),
    (DeepCache, {}, "interval", HUGE_INT, ValueError, _int(1)),
    (DeepCache, {}, "branch", -1, ValueError, _int(0)),
    (DeepCache, {}, "branch", 1.0, TypeError, _int(0)),
    (DeepCache, {}, "branch", INT64_OVER, ValueError, _int(0)),
]


def _plan_int(lo, unit):
    return f"must be None or an int >= {lo} ({unit}) below 2**63"


PLAN_CASES = [
    (MemoryPlan, {}, "swap", ["on"], ValueError, "must be one of ['off', 'on', 'auto'] or a bool"),
    (MemoryPlan, {}, "swap", 1, ValueError, "must be one of ['off', 'on', 'auto'] or a bool"),
    (MemoryPlan, {}, "swap", np.bool_(True), ValueError, "must be one of ['off', 'on', 'auto'] or a bool"),
    (MemoryPlan, {}, "cache_dtype", ["bf16"], ValueError, "must be one of None, 'bf16', 'fp8'"),
    (MemoryPlan, {}, "cache_dtype", torch.bfloat16, ValueError, "must be one of None, 'bf16', 'fp8'"),
    (MemoryPlan, {}, "pinned", ["off"], ValueError, "must be 'prefer', 'require' or 'off'"),
    (MemoryPlan, {}, "pinned", None, ValueError, "must be 'prefer', 'require' or 'off'"),
    (MemoryPlan, {}, "device_cache_budget", -1, ValueError, _plan_int(0, "bytes")),
    (MemoryPlan, {}, "device_cache_budget", 1.5, ValueError, _plan_int(0, "bytes")),
    (MemoryPlan, {}, "device_cache_budget", math.inf, ValueError, _plan_int(0, "bytes")),
    (MemoryPlan, {}, "device_cache_budget", math.nan, ValueError, _plan_int(0, "bytes")),
    (MemoryPlan, {}, "device_cache_budget", True, ValueError, _plan_int(0, "bytes")),
    (MemoryPlan, {}, "device_cache_budget", "1GB", ValueError, _plan_int(0, "bytes")),
    (MemoryPlan, {}, "device_cache_budget", INT64_OVER, ValueError, _plan_int(0, "bytes")),
    (MemoryPlan, {}, "host_cache_budget", INT64_OVER, ValueError, _plan_int(0, "bytes")),
    (MemoryPlan, {}, "host_cache_budget", [1 << 20], ValueError, _plan_int(0, "bytes")),
    (MemoryPlan, {}, "chunk_size", 0, ValueError, "must be None, 'auto' or an int >= 1 (rows) below 2**63"),
    (MemoryPlan, {}, "chunk_size", INT64_OVER, ValueError, "must be None, 'auto' or an int >= 1 (rows) below 2**63"),
    (MemoryPlan, {}, "chunk_size", math.nan, ValueError, "must be None, 'auto' or an int >= 1 (rows) below 2**63"),
    (MemoryPlan, {}, "chunk_size", ["auto"], ValueError, "must be None, 'auto' or an int >= 1 (rows) below 2**63"),
    (MemoryPlan, dict(chunk_size="auto"), "chunk_budget", 0, ValueError, _plan_int(1, "bytes")),
    (MemoryPlan, dict(chunk_size="auto"), "chunk_budget", INT64_OVER, ValueError, _plan_int(1, "bytes")),
    (MemoryPlan, dict(chunk_size="auto"), "chunk_budget", math.inf, ValueError, _plan_int(1, "bytes")),
    (MemoryPlan, {}, "decode_slices", 0, ValueError, _plan_int(1, "frames")),
    (MemoryPlan, {}, "decode_slices", 2.0, ValueError, _plan_int(1, "frames")),
    (MemoryPlan, {}, "decode_slices", INT64_OVER, ValueError, _plan_int(1, "frames")),
    (MemoryPlan, {}, "decode_budget", INT64_OVER, ValueError, _plan_int(1, "bytes")),
    (MemoryPlan, dict(decode_slices=1), "decode_overlap", -1, ValueError, _plan_int(0, "latent frames")),
    (MemoryPlan, dict(decode_slices=1), "decode_overlap", INT64_OVER, ValueError, _plan_int(0, "latent frames")),
    (MemoryPlan, {}, "fit_bytes", INT64_OVER, ValueError, _plan_int(8, "bytes")),
    (MemoryPlan, {}, "fit_bytes", math.nan, ValueError, _plan_int(8, "bytes")),
    (MemoryPlan, {}, "fit_bytes", 1e9, ValueError, _plan_int(8, "bytes")),
    (MemoryPlan, {}, "sync_store", "yes", ValueError, "must be a bool"),
    (MemoryPlan, {}, "cpu_tracker", 1, TypeError, "must be a bool"),
    (MemoryPlan, {}, "decode_to_host", ["x"], TypeError, "must be a bool"),
]


def _case_id(case):
    cls, _, name, value, _, _ = case
    kind = type(value).__name__ if type(value).__module__ == "builtins" else f"{type(value).__module__}.{type(value).__name__}"
    return f"{cls.__name__}.{name}={kind}:{str(value)[:12]}"


@pytest.mark.parametrize("case", POLICY_CASES + PLAN_CASES, ids=_case_id)
def test_hostile_field_is_refused_naming_it(case):
    cls, base, name, value, exc, allowed = case
    with pytest.raises(Exception) as info:
        cls(**base, **{name: value})
    assert type(info.value) is exc, f"{type(info.value).__name__}: {info.value}"
    msg = str(info.value)
    assert f"{cls.__name__}.{name}" in msg and allowed in msg, msg
    assert len(msg) < 300, msg  # a huge int is summarised, not printed in full


def test_numbers_are_normalised_to_plain_python_values():
    """numpy scalars and ints for float fields are accepted and stored as plain int/float: the
    frozen policy then equals (and hashes like) the one written with literals."""
    e = EasyCache(threshold=np.float32(0.5), warmup_steps=np.int64(4))
    assert (type(e.threshold), type(e.warmup_steps)) == (float, int) and e == EasyCache(0.5, 4)
    assert type(EasyCache(threshold=0).threshold) is float
    p = PreciseCache(trial_downsample=(np.int64(2), np.int32(4), 4), refresh_steps=np.uint8(2), radius_ratio=1)
    assert p.trial_downsample == (2, 4, 4) and all(type(v) is int for v in p.trial_downsample)
    assert type(p.refresh_steps) is int and type(p.radius_ratio) is float
    assert hash(p) == hash(PreciseCache(refresh_steps=2, radius_ratio=1.0))
    d = DeepCache(interval=np.int16(3), branch=np.int64(1))
    assert d == DeepCache(3, 1) and (type(d.interval), type(d.branch)) == (int, int)
    # huge but finite values keep their documented meaning (τ = 1e300: only forced steps compute;
    # a radius beyond the spectrum keeps every frequency)
    assert EasyCache(threshold=1e300).threshold == 1e300
    assert PreciseCache(radius_ratio=1e300).radius_ratio == 1e300
    assert DeepCache(interval=2**63 - 1).interval == 2**63 - 1


def test_plan_numbers_are_normalised():
    plan = MemoryPlan(fit_bytes=np.int64(1 << 30), host_cache_budget=np.int32(1 << 20), decode_overlap=None)
    assert (type(plan.fit_bytes), type(plan.host_cache_budget)) == (int, int)
    # the budgets derived from fit_bytes are plain ints too
    assert all(type(v) is int for v in (plan.device_cache_budget, plan.chunk_budget, plan.decode_budget))
    assert plan == MemoryPlan(fit_bytes=1 << 30, host_cache_budget=1 << 20)
    assert MemoryPlan(chunk_size=np.int64(64)).chunk_size == 64
    assert type(MemoryPlan(chunk_size=np.int64(64)).chunk_size) is int
    assert MemoryPlan(device_cache_budget=2**63 - 1).device_cache_budget == 2**63 - 1
    assert MemoryPlan(swap=True).swap == "on" and MemoryPlan(cache_dtype="bf16").cache_dtype == "bf16"


# ------------------------------------------------------------------------------------------------
# chunked_ffn's chunking arguments (defect 3)
# ------------------------------------------------------------------------------------------------

OP = torch.ops.lightcache.chunked_ffn
D, HID, OUT = 8, 16, 6


def _weights():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(HID, D, generator=g), torch.randn(HID, generator=g),
            torch.randn(OUT, HID, generator=g), torch.randn(OUT, generator=g))


def _eager(x, w1, b1, w2, b2):
    return F.linear(F.gelu(F.linear(x, w1, b1), approximate="tanh"), w2, b2)


@pytest.mark.parametrize("shape", [(0, D), (2, 0, D), (0, 5, D), (0, 0, D)])
def test_chunked_ffn_empty_sequence(shape):
    """No tokens: an empty output of the output shape (as eager and the Triton launcher give), not
    a 0-token chunk (which was a `range() arg 3 must not be zero`)."""
    w1, b1, w2, b2 = _weights()
    x = torch.randn(shape)
    out = OP(x, w1, b1, w2, b2, 4)
    assert out.shape == shape[:-1] + (OUT,) and torch.equal(out, _eager(x, w1, b1, w2, b2))
    gate, residual = torch.randn(OUT), torch.randn(shape[:-1] + (OUT,))
    assert OP(x, w1, b1, w2, b2, 4, gate, residual).shape == shape[:-1] + (OUT,)


@pytest.mark.parametrize("chunk", [0, -1, -(2**40)])
def test_chunked_ffn_chunk_below_one(chunk):
    w1, b1, w2, b2 = _weights()
    for x in (torch.randn(2, 5, D), torch.randn(0, D)):  # checked before anything is run
        with pytest.raises(ValueError, match=re.escape(f"chunk_size must be >= 1, got {chunk}")):
            OP(x, w1, b1, w2, b2, chunk)


def test_chunked_ffn_chunk_above_length_is_one_chunk():
    w1, b1, w2, b2 = _weights()
    x = torch.randn(2, 5, D)
    torch.testing.assert_close(OP(x, w1, b1, w2, b2, 2**40), _eager(x, w1, b1, w2, b2), rtol=1e-5, atol=1e-5)
