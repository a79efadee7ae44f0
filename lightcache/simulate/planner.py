"""``lightcache.plan(...)``: per-stage device memory at real model sizes, and the memory plan that
fits a cap.

Scenarios, each one simulated pipeline call (lightcache.simulate.pipeline.run):

* ``uncached``: no policy, no memory plan;
* ``<policy>``: the policy at its worst-case residency (lightcache.simulate.worst), cached features
  on the device (``MemoryPlan(swap="off")``);
* ``<policy> + plan``: the same with the memory plan: ``memory=`` if given, else the plan ``fit=``
  chose, else ``MemoryPlan(swap="on")``.

``fit`` (a cap in bytes or a size string; several caps: a list or ``"80GB,48GB"``) searches the
MemoryPlan settings in order of expected cost and keeps the first whose pipeline peak (weights +
inputs + live bytes, every phase) fits. Two passes, the first with exact plans only:

1. denoise: no plan; ``swap="on"``; feature chunk without swap (skipped where the device cache
   alone with the weights exceeds the cap), then with swap: the largest chunk whose denoise fits
   among those that cut a DiT's tokens into equal pieces (ceil(tokens / k), k = 1, 2, ...: the
   fewest pieces that fit, no small last piece; :func:`chunk_sizes`; k = 1 splits no single-item
   call, yet its plain GELU feed-forwards run the fused op in one piece, their GELU in place: on
   the Wan proxy that alone is the 0.47 MiB the 8.1MB cap needed; UNets: 16384, 8192, ..., 256
   rows): the largest first, then galloping and bisection (the denoise peak falls as the chunk
   shrinks; the small chunks, slowest to simulate, only when the larger ones do not fit), as
   fewer, larger pieces cost less (below). A UNet's modules differ in width, so for UNets the
   same search first runs over per-operation byte budgets (``chunk_size="auto"``,
   :func:`chunk_budgets`), which split only the operations wider than the budget (often just the
   top-resolution feed-forwards), and over row chunks only when no budget fits: a row chunk
   splits every module with more rows, and a small one takes minutes to simulate on a
   high-resolution UNet (SVD 576x1024, 256 rows: 222 s; its budgets 1-9 s); simulations are
   shared by the offload modes and the caps;
2. decode (for the first denoise setting that fits): no plan; then ``decode_slices`` with
   ``decode_to_host=True`` among the slice sizes lightcache decodes exactly for this VAE (the same
   check ``enable`` warns with): the smallest first (if it does not fit, none does), then the
   largest ones;
3. every offload mode: none, diffusers' model CPU offload (one model on the device per stage),
   block-level group offload of the denoiser (the line to add is printed); a mode whose resident
   weights alone exceed the cap is skipped, and a cap below the weights alone is said so, with what
   each offload mode leaves. Offload changes only the resident weights, never the live bytes, so no
   plan is simulated twice;
4. second pass, plans that change the output: ``cache_dtype="fp8"`` with the chunks, and the decode
   by lightcache's own planner with ``decode_budget`` = what the cap leaves the decode (cap minus
   weights, inputs and what is alive when the decode starts): the largest temporal slice that fits,
   spatial tiles only when one slice does not (an untiled choice is written as the
   ``decode_slices`` it picked; three tries, the budget lowered by each overshoot). The verdict says
   the output differs and quotes lightcache's warning.

The cost order is a statement of expected run-time cost, not a measurement: swapping overlaps its
copies with compute; chunking costs Python and kernel launches per piece; fp8 and tiles change the
output; model offload moves each model once per call, group offload every block at every step.

The cost model of a chosen plan (``fit["expected_cost"]``, printed under the verdict): counted in
the plan's own simulated call (:func:`lightcache.memory.chunk_spec.counting`), per denoiser call,

    expected slowdown = extra pieces x piece_overhead  (+ the piece copies, bytes, stated)

where an extra piece is one more pass of a chunked module (a block over a sequence piece: key and
query pass; a UNet module over a frame/pixel chunk; a FeedForward or attention call over a row
chunk) than the unchunked call runs, the copies are the rows written piece by piece into
preallocated outputs and key/value buffers, and ``piece_overhead`` is what one extra piece costs as
a share of a denoiser call without a plan. That share depends on the device and model size (its
Python and kernel launches against the piece's compute), so the planner does not assume one:
given ``piece_overhead=`` (benchmarks/chunk_overhead.py measures it, the ``piece_overhead`` of its
JSON) the cost is also stated in percent; swapping's copies to host memory are stated in bytes
(overlapped with compute on CUDA). The search order follows the model: no plan, swap, then the
chunk with the fewest pieces (the largest; for a UNet the largest byte budget) that fits, without
swap before with it.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import platform
import re
import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from lightcache.simulate.pipeline import OFFLOADS, PHASES, Figures, build, run
from lightcache.simulate.worst import ASSUMPTION, steps_for

POLICIES = ("none", "easycache", "forecast", "precise-base", "precise-turbo", "precise-flash", "deepcache")
CHUNKS = (16384, 8192, 4096, 2048, 1024, 512, 256)  # descending: fewest pieces first
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
GiB = 2**30


def parse_size(value, what: str = "size") -> int:
    """Bytes from an int or a string: ``"24GB"`` (10**9), ``"24 GiB"`` (2**30), ``"24e9"``,
    ``"25769803776"``; KB/MB/GB/TB and KiB/MiB/GiB/TiB, any case, space optional."""
    formats = "bytes (an int), or a number with a unit: KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB " \
              "(powers of 1024), e.g. '24GB', '24 GiB', '25769803776'"
    if isinstance(value, bool):
        raise ValueError(f"{what} must be {formats}; got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{what} must be a positive size: {formats}; got {value}")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS:
            n = float(m.group(1)) * _UNITS[m.group(2).lower()]
            if n >= 1 and math.isfinite(n):
                return int(n)
    raise ValueError(f"{what} must be {formats}; got {value!r}")


def make_policy(policy):
    """A policy object from a name (:data:`POLICIES`), a policy, or None."""
    from lightcache import DeepCache, EasyCache, ForecastCache, PreciseCache
    from lightcache.policies.base import CachePolicy

    if policy is None or isinstance(policy, CachePolicy):
        return policy
    if not isinstance(policy, str) or policy not in POLICIES:
        raise ValueError(f"policy must be one of {list(POLICIES)} or a lightcache policy, got {policy!r}")
    if policy == "none":
        return None
    if policy == "easycache":
        return EasyCache()
    if policy == "forecast":
        return ForecastCache()
    if policy == "deepcache":
        return DeepCache()
    return PreciseCache(mode=policy.split("-")[1])


def policy_name(policy) -> str:
    if policy is None:
        return "none"
    from lightcache import DeepCache, EasyCache, ForecastCache

    if isinstance(policy, EasyCache):
        return "easycache"
    if isinstance(policy, ForecastCache):
        return "forecast"
    if isinstance(policy, DeepCache):
        return "deepcache"
    return f"precise-{policy.mode}"


_PLAN_FIELDS = None


def parse_memory(spec):
    """A MemoryPlan from a MemoryPlan, None, a dict, or ``"swap=on,chunk_size=4096"`` (fields of
    MemoryPlan; sizes for the ``*_budget``/``fit_bytes`` fields accept the formats of
    :func:`parse_size`; ``none`` is None)."""
    from lightcache.memory import MemoryPlan

    if spec is None or isinstance(spec, MemoryPlan):
        return spec
    names = {f.name for f in dataclasses.fields(MemoryPlan)} - {"cpu_tracker", "cuda_peaks"}
    if isinstance(spec, str):
        items = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            if "=" not in part:
                raise ValueError(f"memory: expected name=value items separated by commas (fields: {sorted(names)}), "
                                 f"got {part!r}")
            k, v = (s.strip() for s in part.split("=", 1))
            items[k] = v
        spec = items
    if not isinstance(spec, dict):
        raise TypeError(f"memory must be a MemoryPlan, a dict or a 'name=value,...' string, got {type(spec).__name__}")
    values = {}
    for k, v in spec.items():
        if k not in names:
            raise ValueError(f"memory: unknown MemoryPlan field {k!r}; fields: {sorted(names)}")
        values[k] = _field_value(k, v)
    return MemoryPlan(**values)


def _field_value(name, v):
    if not isinstance(v, str):
        return v
    low = v.lower()
    if low in ("none", "null"):
        return None
    if name in ("sync_store", "decode_to_host"):
        if low in ("true", "on", "1", "yes"):
            return True
        if low in ("false", "off", "0", "no"):
            return False
        raise ValueError(f"memory: {name} must be true or false, got {v!r}")
    if name.endswith("_budget") or name == "fit_bytes":
        return parse_size(v, f"memory: {name}")
    if name in ("chunk_size", "decode_slices", "decode_overlap"):
        if low == "auto":
            return "auto"
        try:
            return int(v)
        except ValueError:
            raise ValueError(f"memory: {name} must be an int, got {v!r}") from None
    return v


def enable_line(policy, memory, offload: str = "none") -> str:
    """The ``lightcache.enable(...)`` call for ``policy`` and ``memory`` (plus the offload call)."""
    from lightcache.memory import MemoryPlan

    pol = "None"
    if policy is not None:
        fields = []
        for f in dataclasses.fields(policy):
            v = getattr(policy, f.name)
            if f.name == "mode" or (f.default is not dataclasses.MISSING and v != _default_of(policy, f.name)):
                fields.append(f"{f.name}={v!r}")
        base = next(c for c in type(policy).__mro__ if c.__module__.startswith("lightcache.policies"))
        pol = f"{base.__name__}({', '.join(fields)})"
    mem = "None"
    if memory is not None:
        default = MemoryPlan()
        parts = [f"{f.name}={getattr(memory, f.name)!r}" for f in dataclasses.fields(MemoryPlan)
                 if f.name not in ("cpu_tracker",) and getattr(memory, f.name) != getattr(default, f.name)]
        mem = f"MemoryPlan({', '.join(parts)})"
    line = f"lightcache.enable(pipe, policy={pol}, memory={mem})"
    if offload == "model":
        line = "pipe.enable_model_cpu_offload()\n" + line
    elif offload == "group":
        line = ("pipe.transformer.enable_group_offload(onload_device=torch.device('cuda'), offload_type='block_level', "
                "num_blocks_per_group=1, use_stream=True)\n" + line)
    return line


def _default_of(policy, name):
    base = next(c for c in type(policy).__mro__ if c.__module__.startswith("lightcache.policies"))
    if name == "mode":
        return None
    kw = {"mode": policy.mode} if hasattr(policy, "mode") else {}
    return getattr(base(**kw), name)


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    policy: str
    memory: Optional[str]
    offload: str
    figures: Figures
    decode_plan: Optional[dict] = None

    def as_dict(self) -> dict:
        return dict(name=self.name, policy=self.policy, memory=self.memory, offload=self.offload,
                    decode_plan=self.decode_plan, **self.figures.as_dict())


@dataclass
class PlanResult:
    model: str
    label: str
    height: int
    width: int
    frames: int
    dtype: str
    steps: int
    attention: str
    scenarios: List[Scenario]
    caps: List[int] = field(default_factory=list)
    fits: List[dict] = field(default_factory=list)  # one search result per cap (verdict, memory, line, tried)
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def cap(self) -> Optional[int]:
        return self.caps[0] if self.caps else None

    @property
    def fit(self) -> Optional[dict]:
        """The search result of the first (usually only) cap."""
        return self.fits[0] if self.fits else None

    def scenario(self, name) -> Scenario:
        return next(s for s in self.scenarios if s.name == name)

    def as_dict(self) -> dict:
        import diffusers
        import torch

        return dict(
            model=self.model, label=self.label, height=self.height, width=self.width, frames=self.frames,
            dtype=self.dtype, steps=self.steps, attention=self.attention, caps=self.caps,
            fits=self.fits, notes=self.notes, seconds=self.seconds,
            scenarios=[s.as_dict() for s in self.scenarios],
            environment=dict(date=datetime.datetime.now().isoformat(timespec="seconds"), torch=torch.__version__,
                             diffusers=diffusers.__version__, python=platform.python_version(),
                             machine=f"{platform.machine()} {platform.system()} {platform.release()}",
                             processor=platform.processor() or None),
        )

    def table(self) -> str:
        top = max(s.figures.pipeline_peak for s in self.scenarios)
        unit, div = next((u, d) for u, d in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10), ("B", 1)) if top >= d or d == 1)
        g = lambda n: f"{n / div:9.2f}"  # noqa: E731
        lines = [f"lightcache plan: {self.label}, {self.height}x{self.width}, {self.frames} frames, {self.dtype}, "
                 f"{self.steps} steps (simulated: 3 to 5, the policy's worst-case patterns; later steps repeat them), "
                 f"attention {self.attention}"]
        first = self.scenarios[0].figures
        comps = ", ".join(f"{k} {v / div:.2f}" for k, v in first.components.items())
        lines.append(f"weights ({unit}): {comps}")
        lines.append("")
        head = f"{'scenario':34s} {'stage':8s} {'weights':>9s} {'inputs':>9s} {'activ.':>9s} {'cache':>9s} {'peak':>9s}  {unit}"
        lines.append(head)
        lines.append("-" * len(head))
        for s in self.scenarios:
            f = s.figures
            for i, p in enumerate(PHASES):
                name = s.name if i == 0 else ""
                lines.append(f"{name[:34]:34s} {p:8s} {g(f.weights[p])} {g(f.inputs)} {g(f.activations[p])} "
                             f"{g(f.cache_at_peak[p])} {g(f.peak[p])}")
            lines.append(f"{'':34s} {'pipeline':8s} {'':9s} {'':9s} {'':9s} {'':9s} {g(f.pipeline_peak)}"
                         f"   (cache high-water: {f.cache_device / div:.2f} device, {f.cache_host / div:.2f} host)")
            if s.memory:
                lines.append(f"{'':34s} memory: {s.memory}")
        for cap, fit in zip(self.caps, self.fits):
            lines.append("")
            lines.append(f"--fit {cap / GiB:.2f} GiB ({cap} bytes): {fit['verdict']}")
            for n in fit.get("notes", []):
                lines.append(f"  {n}")
            if fit.get("expected_cost"):
                lines.append(f"  {fit['expected_cost']['text']}")
            if fit.get("line"):
                lines.append(fit["line"])
        for n in self.notes:
            lines.append(f"note: {n}")
        return "\n".join(lines)

    def plot(self, path) -> None:
        """Stacked bars (weights, inputs, activations, cache) per stage and scenario."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        parts = (("weights", "tab:gray"), ("inputs", "tab:olive"), ("activations", "tab:blue"), ("cache", "tab:red"))
        fig, axes = plt.subplots(1, len(self.scenarios), figsize=(3.2 * len(self.scenarios), 4), sharey=True,
                                 squeeze=False)
        for ax, s in zip(axes[0], self.scenarios):
            f = s.figures
            bottom = [0.0] * len(PHASES)
            values = {"weights": [f.weights[p] for p in PHASES], "inputs": [f.inputs] * 3,
                      "activations": [f.activations[p] for p in PHASES], "cache": [f.cache_at_peak[p] for p in PHASES]}
            for name, colour in parts:
                v = [x / GiB for x in values[name]]
                ax.bar(PHASES, v, bottom=bottom, color=colour, label=name)
                bottom = [b + x for b, x in zip(bottom, v)]
            for cap in self.caps:
                ax.axhline(cap / GiB, color="k", ls="--", lw=0.8)
            ax.set_title(s.name, fontsize=8)
        axes[0][0].set_ylabel("GiB on the device")
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(f"{self.label} {self.height}x{self.width}x{self.frames} {self.dtype}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


# ------------------------------------------------------------------------------------------------
# the planner
# ------------------------------------------------------------------------------------------------


def _memory_text(memory) -> Optional[str]:
    if memory is None:
        return None
    line = enable_line(None, memory)
    return line[line.index("memory=") + len("memory="):-1]


class _Sim:
    """One built pipeline and the simulations run on it."""

    def __init__(self, built, attention, steps, progress=None):
        self.built = built
        self.attention = attention
        self.steps = steps
        self.progress = progress  # None, or called with one line per finished simulation
        self.started = time.perf_counter()
        self.runs = 0
        self.memo = {}
        self.counts = {}  # memo key -> PieceCount of that simulation
        self.exact_slices = None

    def cached(self, policy, memory: dict, latent_only=False) -> Figures:
        """The simulation of ``MemoryPlan(**memory)`` (offload "none"), run once per setting."""
        from lightcache.memory import MemoryPlan

        key = (tuple(sorted(memory.items())), latent_only)
        if key not in self.memo:
            self.memo[key] = self(policy, MemoryPlan(**memory), "none", latent_only)
            self.counts[key] = self.last_count
        return self.memo[key]

    def pieces(self, memory: dict, latent_only=True):
        """The :class:`~lightcache.memory.chunk_spec.PieceCount` of the simulation of ``memory``
        (None if it was not run)."""
        return self.counts.get((tuple(sorted(memory.items())), latent_only))

    def __call__(self, policy, memory, offload="none", latent_only=False) -> Figures:
        kw = dict(self.built.kwargs)
        if latent_only:
            kw["output_type"] = "latent"
        self.runs += 1
        from lightcache.memory.chunk_spec import counting

        t0 = time.perf_counter()
        with counting() as c:
            f = run(self.built.pipe, kw, policy=policy, memory=memory, attention=self.attention,
                    steps=min(self.steps, steps_for(policy)), offload=offload)
        self.last_count = c
        if self.progress is not None:
            now = time.perf_counter()
            self.progress(f"simulation {self.runs}: {policy_name(policy)}, {_memory_text(memory) or 'no plan'}"
                          f"{' (to the latents)' if latent_only else ''}: {now - t0:.1f} s ({now - self.started:.0f} s "
                          "in all)")
        return f


def plan(model, *, height=None, width=None, frames=None, steps: int = 50, dtype="bf16", policy=None,
         memory=None, fit=None, attention: str = "auto", offload: str = "none", scale: str = "full",
         guidance=None, peers: bool = False, piece_overhead: Optional[float] = None, progress=None) -> PlanResult:
    """Simulate ``model`` (a realistic configuration name, lightcache.bench_models.REALISTIC, or a
    local diffusers pipeline folder) on the meta device and return the :class:`PlanResult`
    (``.table()``, ``.as_dict()``, ``.plot(path)``). ``policy``: a name of :data:`POLICIES` or a
    policy (default: precise-flash for DiTs, deepcache for UNets); ``memory``: a MemoryPlan or
    ``"swap=on,chunk_size=4096"``; ``fit``: a device-memory cap (bytes or ``"24GB"``/``"24 GiB"``)
    to search a plan for; ``attention``: the SDPA backend (lightcache.simulate.attention);
    ``offload``: ``"none"``, ``"model"`` or ``"group"`` (which weights stay on the device);
    ``peers``: add diffusers' FirstBlockCache, MagCache and TaylorSeer, computed from the uncached
    call's shapes (lightcache.simulate.peers); ``piece_overhead``: the share of a denoiser call one
    extra chunk piece costs, for the expected cost in percent (the module docstring's cost model);
    ``progress``: None or a callable given one line per finished simulation (what it simulated, its
    seconds: a ``--fit`` runs several, minutes in all on a large UNet). ``model`` may also be a
    :class:`lightcache.simulate.pipeline.Built` (a pipeline already on the meta device with its
    call kwargs)."""
    from lightcache.memory import MemoryPlan
    from lightcache.simulate.attention import BACKENDS

    t0 = time.perf_counter()
    if attention not in BACKENDS:
        raise ValueError(f"attention must be one of {list(BACKENDS)}, got {attention!r}")
    if offload not in OFFLOADS:
        raise ValueError(f"offload must be one of {list(OFFLOADS)}, got {offload!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if fit is None:
        caps = []
    elif isinstance(fit, (list, tuple)):
        caps = [parse_size(c, "fit") for c in fit]
    elif isinstance(fit, str) and "," in fit:
        caps = [parse_size(c.strip(), "fit") for c in fit.split(",")]
    else:
        caps = [parse_size(fit, "fit")]
    if piece_overhead is not None and (isinstance(piece_overhead, bool) or not isinstance(piece_overhead, (int, float))
                                       or not 0 <= piece_overhead < 1):
        raise ValueError(f"piece_overhead must be a number in [0, 1) (a share of a denoiser call), got {piece_overhead!r}")
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be None or a callable taking one str, got {type(progress).__name__}")
    mem = parse_memory(memory)
    from lightcache.simulate.pipeline import Built

    built = model if isinstance(model, Built) else build(model, scale=scale, dtype=dtype, height=height, width=width,
                                                         frames=frames)
    if guidance is not None:
        key = "max_guidance_scale" if "max_guidance_scale" in built.kwargs else "guidance_scale"
        built.kwargs[key] = float(guidance)
    pol = make_policy(policy) if policy is not None else make_policy("deepcache" if built.family == "unet"
                                                                       else "precise-flash")
    pname = policy_name(pol)
    sim = _Sim(built, attention, steps, progress)
    notes = []
    from lightcache.simulate import peers as _peers

    with _peers.record(built.pipe) as rec:
        uncached = sim(None, MemoryPlan(swap="off"), offload)
    scenarios = [Scenario("uncached", "none", None, offload, uncached)]
    if pol is not None:
        nop = MemoryPlan(swap="off")
        scenarios.append(Scenario(pname, pname, _memory_text(nop), offload, sim(pol, nop, offload)))
        notes.append(f"{type(pol).__name__} worst case: {ASSUMPTION[type(pol).__mro__[1].__name__ if type(pol).__name__.startswith('Worst') else type(pol).__name__]}")
    fits = []
    base_scenarios = list(scenarios)
    for cap in caps:
        t_cap = time.perf_counter()
        fit_info = _fit(sim, pol, cap, base_scenarios, offload, piece_overhead)
        fit_info["seconds"] = time.perf_counter() - t_cap
        label = f"{pname} + plan (fit {_size_text(cap)})"
        if fit_info.get("memory") is not None:
            f = fit_info.pop("figures")
            scenarios.append(Scenario(label, pname, _memory_text(fit_info["memory"]), fit_info["offload"], f,
                                      fit_info.get("decode_plan")))
        fit_info["memory"] = _memory_text(fit_info.get("memory"))
        fit_info["cap"] = cap
        fits.append(fit_info)
    if pol is not None and (mem is not None or not caps):
        chosen = mem if mem is not None else MemoryPlan(swap="on")
        f = sim(pol, chosen, offload)
        scenarios.append(Scenario(f"{pname} + plan", pname, _memory_text(chosen), offload, f, _decode_plan(f)))
    elif pol is None and mem is not None:
        f = sim(None, mem, offload)
        scenarios.append(Scenario("uncached + plan", "none", _memory_text(mem), offload, f, _decode_plan(f)))
    if peers and built.family != "unet":
        branches = max(1, uncached.denoiser_calls // max(1, min(steps, steps_for(None))))
        for name, held in _peers.residency(rec, branches).items():
            live = dict(uncached.live_peak, denoise=uncached.live_peak["denoise"] + held,
                        decode=uncached.live_peak["decode"] + held)
            f = dataclasses.replace(uncached, live_peak=live,
                                    cache_at_peak=dict(uncached.cache_at_peak, denoise=held, decode=held),
                                    cache_device=held, tracked={p: None for p in PHASES})
            scenarios.append(Scenario(f"{name} (analytic)", name, None, offload, f))
        notes.append("peers (analytic, lightcache.simulate.peers): the uncached peaks plus what each keeps per CFG branch "
                     "(FirstBlockCache: first block's output and residual + last block's residuals; MagCache: first "
                     "block's input + last block's residual; TaylorSeer: 2 factors of every attention/FFN output), held "
                     "through denoise and decode; FasterCache not computed")
    used = scenarios[0].figures.attention
    assumed = scenarios[0].figures.assumptions
    if assumed:
        notes.append("values the simulation assumed where the pipeline reads them (lightcache.simulate.values): "
                     + "; ".join(assumed))
    notes.append("attention calls per backend (uncached run): " + ", ".join(f"{k} {v}" for k, v in sorted(used.items())))
    notes.append("peaks: resident weights + the call's inputs + device bytes alive at the phase's peak (the CPU "
                 "tracker's counting on meta tensors; kernels' workspaces and the allocator's rounding not included)")
    return PlanResult(model=built.name if isinstance(model, Built) else str(model), label=built.label, height=built.height, width=built.width, frames=built.frames,
                      dtype=str(built.dtype).replace("torch.", ""), steps=steps, attention=attention,
                      scenarios=scenarios, caps=caps, fits=fits, notes=notes,
                      seconds=time.perf_counter() - t0)


def _size_text(n: int) -> str:
    for unit, d in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= d and n % (d // 100) == 0:
            return f"{n / d:g}{unit}"
    return f"{n} bytes"


def _decode_plan(f: Figures):
    return getattr(f, "decode_plans", None) or None


def _with_offload(sim, f: Figures, offload: str) -> Figures:
    """``f`` with the resident weights of ``offload`` (the live bytes do not depend on it)."""
    from lightcache.simulate.pipeline import stage_weights

    return dataclasses.replace(f, weights=stage_weights(sim.built.pipe, offload))


def _fits(f: Figures, cap: int, phases=PHASES) -> bool:
    return all(f.peak[p] <= cap for p in phases)


_MINIMUM = re.compile(r"the minimum is (\d+) bytes")


def _largest(chunks, fits):
    """The largest of ``chunks`` (descending) for which ``fits``: the largest first (the cheapest to
    simulate, fewest pieces, and at real sizes the usual answer), then bisection over the rest (a
    smaller chunk never raises the peak), so the small chunks, slow to simulate, are tried only when
    the larger ones do not fit: at most 1 + ceil(log2(len(chunks))) calls; None when none fits."""
    if not chunks:
        return None
    if fits(chunks[0]):
        return chunks[0]
    lo, hi = 1, len(chunks)  # the answer's index is in [lo, hi]; hi == len: none fits
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(chunks[mid]):
            hi = mid
        else:
            lo = mid + 1
    return chunks[lo] if lo < len(chunks) else None


def chunk_sizes(tokens: Optional[int]) -> List[int]:
    """The chunk sizes the fit tries, descending (fewest pieces first). A DiT's chunked calls split
    its ``tokens`` query rows per batch item (attention) and batch x tokens rows (FeedForward), so
    the candidates cut them into equal pieces: ceil(tokens / k) for k = 1, 2, ... (k = 1 splits a
    batched call per item), each the smallest chunk of its piece count (the lowest peak for that
    many pieces), down to 256 rows (or two pieces, for fewer than 512 tokens). A power-of-two chunk
    leaves a small last piece (576 rows at 256: 256 + 256 + 64) that costs a piece's overhead for
    little memory. UNets (``tokens`` None: frame and pixel chunks) keep :data:`CHUNKS`."""
    if tokens is None:
        return list(CHUNKS)
    floor = min(CHUNKS[-1], -(-tokens // 2))
    out, k = [], 1
    while True:
        c = -(-tokens // k)
        if c < floor:
            return out
        if not out or c != out[-1]:
            out.append(c)
        k += 1


def _fewest_pieces(chunks, fits):
    """The largest of ``chunks`` (descending) for which ``fits`` (monotone: a smaller chunk never
    raises the peak), or None. Galloping from the largest (1, 2, 4, ... candidates down), then
    bisection inside the last step: about 2 log2(i) calls for the answer at index i, so the large
    chunks (cheap to simulate, and at real sizes the usual answer) are tried first and the many
    small ones only when those do not fit."""
    if not chunks:
        return None
    if fits(chunks[0]):
        return chunks[0]
    bad, step = 0, 1  # chunks[bad] does not fit
    while True:
        i = min(bad + step, len(chunks) - 1)
        if i == bad:
            return None
        if fits(chunks[i]):
            break
        bad, step = i, step * 2
    between = _largest(chunks[bad + 1:i], fits)  # chunks[bad] does not fit, chunks[i] does
    return chunks[i] if between is None else between


def chunk_budgets(sim, pol, base_cand: dict) -> List[int]:
    """The per-operation byte budgets (``chunk_size="auto"``) the fit tries for a UNet, descending:
    the unchunked denoise's activations at its peak (no single intermediate is wider) halved, then
    down by factors of sqrt(2) to 1/4096 of it. A UNet's modules differ in width (a GEGLU
    feed-forward's hidden state is 8x its block's channels, the attention scores heads x keys per
    row, a resnet its channels per pixel), so a budget splits only the operations wider than it:
    at the UNet proxy's 21.5 MiB cap, 6 extra pieces per call, all of them feed-forward chunks,
    against 9 whole-block and resnet pieces for the fewest-piece row chunk that fits (4096)."""
    f = sim.cached(pol, dict(base_cand), latent_only=True)
    top = max(1, f.live_peak["denoise"] - f.cache_at_peak["denoise"])
    return sorted({max(1, int(top * 2 ** (-k / 2))) for k in range(2, 25)}, reverse=True)


def expected_cost(sim, cand: dict, piece_overhead=None) -> dict:
    """The cost model of the module docstring for the denoise setting ``cand`` (MemoryPlan fields:
    swap, chunk_size, cache_dtype), from its latent-only simulation's piece counts: a dict with ``extra_pieces_per_call``, ``copied_per_call``
    (bytes), ``pieces_per_split_call``, ``swap_host_bytes``, ``percent`` (None without
    ``piece_overhead``) and ``text``."""
    from lightcache.memory import MemoryPlan

    memory = MemoryPlan(**cand)
    count = sim.pieces(cand) if memory.chunk_size else None
    f = sim.memo.get((tuple(sorted(cand.items())), True))
    calls = max(1, f.denoiser_calls if f is not None else 1)
    extra = 0.0 if count is None else (count.pieces - count.calls) / calls
    copied = 0 if count is None else count.copied // calls
    per_split = None if count is None or not count.calls else count.pieces / count.calls
    host = f.cache_host if f is not None and memory.swap == "on" else 0
    percent = None if piece_overhead is None else 100.0 * piece_overhead * extra
    splits = bool(memory.chunk_size) and extra > 0  # a chunk plan whose calls all fit one chunk costs no piece
    parts = []
    if memory.chunk_size and not splits:
        parts.append("no call splits (0 extra pieces: every chunked module fits one chunk; a feed-forward the fused "
                     "op stands in for runs it in one piece, its GELU in place)")
    elif splits:
        parts.append(f"{extra:.1f} extra pieces per denoiser call (chunked calls run {per_split or 1:.1f} pieces "
                     f"each; an extra piece: one more pass of a chunked module: its Python and kernel launches) + "
                     f"{copied / 2**20:.2f} MiB of piece copies per call")
    else:
        parts.append("no chunking (0 extra pieces)")
    if host:
        parts.append(f"swap: cached features copied to host memory ({host / 2**20:.2f} MiB high-water; overlapped "
                     "with compute on CUDA)")
    if memory.cache_dtype == "fp8":
        parts.append("fp8 cache: a cast per store and fetch")
    if percent is not None:
        head = f"expected cost: ~{percent:.0f} % slower than no plan (piece_overhead {piece_overhead:g} of a call), from "
    elif not splits:
        head = "expected cost: ~0 % slower than no plan from chunking, from "
    else:
        head = "expected cost: extra pieces x piece_overhead (the share of a denoiser call one extra piece costs: " \
               "device-dependent, pass piece_overhead= for a percentage), from "
    return dict(extra_pieces_per_call=extra, copied_per_call=copied, pieces_per_split_call=per_split,
                swap_host_bytes=host, piece_overhead=piece_overhead, percent=percent, text=head + "; ".join(parts))


def _fit(sim, pol, cap, scenarios, offload, piece_overhead=None) -> dict:
    """The search of the module doc; returns a dict (verdict, memory, line, figures, tried, ...).

    Offload only changes which weights are resident, never the live bytes: every simulated memory
    plan is evaluated under each offload mode without another simulation. Two passes: exact plans
    only (no fp8 cache, decode slices the VAE decodes exactly) under every offload mode, then
    plans that change the output (fp8 cache, budget-chosen tiles or inexact slices)."""
    from lightcache.simulate.pipeline import stage_weights

    tried = []
    base = scenarios[-1].figures
    inputs = base.inputs
    need_weights = max(stage_weights(sim.built.pipe, "none").values())
    modes = [offload] if offload != "none" else ["none", "model", "group"]
    notes = []
    if offload == "none" and need_weights + inputs > cap:
        under = {m: max(stage_weights(sim.built.pipe, m).values()) for m in ("model", "group")}
        notes.append(
            f"the weights alone take {need_weights / GiB:.2f} GiB ("
            + ", ".join(f"{k} {v / GiB:.2f}" for k, v in base.components.items())
            + f"), above the cap of {cap / GiB:.2f} GiB; with model CPU offload the largest stage keeps "
            f"{under['model'] / GiB:.2f} GiB of weights, with group offload (block level, one block computing, the "
            f"next prefetched) {under['group'] / GiB:.2f} GiB")
    tokens = _tokens(sim)
    if sim.exact_slices is None:  # the same for every cap
        sim.exact_slices = _exact_slices(sim)
    exact_slices = sim.exact_slices
    chunks = chunk_sizes(tokens)
    for lossy in (False, True):
        if not lossy:
            candidates = [dict(swap="off")] + ([dict(swap="on")] if pol is not None else [])
            if pol is not None:  # chunking alone: no swap copies (on CPU they are not overlapped)
                candidates.append(("chunks", dict(swap="off")))
            chunked = dict(swap="on" if pol is not None else "off")
        else:
            if pol is None:
                continue
            candidates = [dict(swap="on")]  # exact denoise, lossy decode
            chunked = dict(swap="on", cache_dtype="fp8")
        candidates.append(("chunks", chunked))
        for mode in modes:
            resident = stage_weights(sim.built.pipe, mode)
            if any(w + inputs > cap for w in resident.values()):
                if not lossy:
                    tried.append(dict(memory=None, offload=mode, peak=None, stage="weights",
                                      error=f"the weights resident under {mode} offload "
                                            f"({max(resident.values()) / GiB:.2f} GiB) and the inputs exceed the cap"))
                continue
            decode_failed = set()  # (swap, cache_dtype) whose decode did not fit: a smaller chunk does not change it

            def denoise_fits(cand):
                f = _with_offload(sim, sim.cached(pol, cand, latent_only=True), mode)
                tried.append(dict(memory=str(cand), offload=mode, peak=max(f.peak["encode"], f.peak["denoise"]),
                                  stage="encode+denoise"))
                return f.peak["encode"] <= cap and f.peak["denoise"] <= cap

            def budget_fits(cand):
                try:
                    return denoise_fits(cand)
                except ValueError as e:  # the budget is below one frame/pixel of some module: smaller ones too
                    if "chunk_budget" not in str(e):
                        raise
                    tried.append(dict(memory=str(cand), offload=mode, peak=None, stage="encode+denoise", error=str(e)))
                    return False

            for cand in candidates:
                if isinstance(cand, tuple):  # the largest chunk whose denoise fits
                    base_cand = cand[1]
                    if not lossy and pol is not None and base_cand["swap"] == "off":
                        # the device cache stays whole: no chunk fits if it alone with the weights does not
                        unplanned = _with_offload(sim, sim.cached(pol, dict(swap="off"), latent_only=True), mode)
                        if unplanned.weights["denoise"] + inputs + unplanned.cache_at_peak["denoise"] > cap:
                            continue
                    cand = None
                    if tokens is None:  # a UNet: per-operation byte budgets first (only the widest split)
                        b = _fewest_pieces(chunk_budgets(sim, pol, base_cand),
                                           lambda b: budget_fits(dict(base_cand, chunk_size="auto", chunk_budget=b)))
                        if b is not None:
                            cand = dict(base_cand, chunk_size="auto", chunk_budget=b)
                    if cand is None:
                        c = _fewest_pieces(chunks, lambda c: denoise_fits(dict(base_cand, chunk_size=c)))
                        if c is None:
                            continue
                        cand = dict(base_cand, chunk_size=c)
                elif not denoise_fits(cand):
                    continue
                kind = (cand.get("swap"), cand.get("cache_dtype"))
                if kind in decode_failed:
                    continue
                found = _fit_decode(sim, pol, cap, cand, mode, lossy, exact_slices, tried, notes)
                if found is not None:
                    found["expected_cost"] = expected_cost(sim, cand, piece_overhead)
                    return found
                decode_failed.add(kind)
    done = [t for t in tried if t.get("peak") is not None and t["stage"] == "pipeline"]
    best = min(done, key=lambda t: t["peak"]) if done else None
    mins = [t["decode_minimum"] for t in tried if t.get("decode_minimum")]
    why = ""
    if mins:
        why = (f"; the sliced decode needs at least {min(mins) / GiB:.2f} GiB beyond what is alive when it starts "
               "(its smallest slice and tile)")
    verdict = "no plan fits" + (f": the lowest pipeline peak found is {best['peak'] / GiB:.2f} GiB ({best['memory']}, "
                                f"offload {best['offload']})" if best else "") + why
    return dict(verdict=verdict, memory=None, line=None, tried=tried, offload=offload, notes=notes)


def _fit_decode(sim, pol, cap, cand, mode, lossy, exact_slices, tried, notes):
    """The decode for a denoise setting that fits: no plan; exact slices (smallest first: if even it
    does not fit, no exact slice does; then the largest that fits, at most 4 simulations); with
    ``lossy``, lightcache's decode planner with the share of the cap the decode has."""
    from lightcache.memory import MemoryPlan

    full = _with_offload(sim, sim.cached(pol, cand), mode)
    tried.append(dict(memory=str(cand), offload=mode, peak=full.pipeline_peak, stage="pipeline"))
    if _fits(full, cap):
        return _found(pol, MemoryPlan(**cand), mode, full, tried, notes)
    if not lossy:
        fitting = None
        order = exact_slices[-1:] + exact_slices[:-1][:3]  # smallest, then the largest ones
        for k, s in enumerate(order):
            mem = dict(cand, decode_slices=s, decode_to_host=True)
            f = _with_offload(sim, sim.cached(pol, mem), mode)
            tried.append(dict(memory=str(mem), offload=mode, peak=f.pipeline_peak, stage="pipeline"))
            if _fits(f, cap):
                fitting = (mem, f)
                if k > 0:
                    break  # the largest of the tried ones that fits
            elif k == 0:
                break  # the smallest exact slice does not fit: none does
        if fitting is not None:
            return _found(pol, MemoryPlan(**fitting[0]), mode, fitting[1], tried, notes)
        return None
    budget = cap - full.weights["decode"] - full.inputs - full.live_at_start.get("decode", 0)
    for _ in range(3):
        if budget <= 0:
            return None
        mem = dict(cand, decode_budget=int(budget), decode_to_host=True)
        try:
            f = _with_offload(sim, sim.cached(pol, mem), mode)
        except ValueError as e:
            m = _MINIMUM.search(str(e))
            tried.append(dict(memory=str(mem), offload=mode, peak=None, stage="decode",
                              decode_minimum=int(m.group(1)) if m else None, error=str(e)))
            return None
        tried.append(dict(memory=str(mem), offload=mode, peak=f.pipeline_peak, stage="pipeline"))
        if _fits(f, cap):
            return _found(pol, _as_slices(MemoryPlan(**mem), f), mode, f, tried, notes)
        budget -= max(f.peak["decode"] - cap, 1)
    return None


def _exact_slices(sim):
    """Slice sizes (latent frames, descending) whose sliced decode lightcache says is exact for
    this VAE and latent (the same check ``lightcache.enable`` warns with)."""
    from lightcache.memory import MemoryPlan
    from lightcache.memory.decode import _slicer
    from lightcache.simulate.pipeline import _factors

    b = sim.built
    vae = getattr(b.pipe, "vae", None)
    if vae is None:
        return []
    spatial, temporal, offset = _factors(b.pipe)
    vae_spatial = spatial // (2 ** (len(b.pipe.unet.config.block_out_channels) - 1)) if b.family == "unet" else None
    if vae_spatial is None:
        patch = spatial // (getattr(b.pipe, "vae_scale_factor_spatial", None)
                            or getattr(b.pipe, "vae_spatial_compression_ratio", None) or spatial)
        vae_spatial = spatial // max(1, patch)
    vt = (getattr(b.pipe, "vae_scale_factor_temporal", None) or getattr(b.pipe, "vae_temporal_compression_ratio", None)
          or 1)
    t = (b.frames - 1) // vt + 1 if vt > 1 else b.frames
    cfg = vae.config
    channels = cfg.get("latent_channels", None) or cfg.get("z_dim", None) or 4
    h, w = b.height // vae_spatial, b.width // vae_spatial
    try:
        probe = _slicer(vae, MemoryPlan(decode_budget=1))
    except ValueError:
        return []
    z = (torch.empty(t, channels, h, w, device="meta") if probe.frame_dim == 0
         else torch.empty(1, channels, t, h, w, device="meta"))
    out = []
    options = probe.slice_options(z, {})
    for s in options:
        try:
            sl = _slicer(vae, MemoryPlan(decode_slices=s, decode_to_host=True))
        except ValueError:
            continue
        if sl.exact:
            out.append(s)
    return sorted(set(out), reverse=True)


def _as_slices(mem, f):
    """An untiled budget choice written as the decode_slices it picked."""
    plans = getattr(f, "decode_plans", None) or []
    if len(plans) == 1 and plans[0].get("tile") is None:
        return dataclasses.replace(mem, decode_budget=None, decode_slices=plans[0]["frames_per_slice"])
    return mem


def _found(pol, mem, offload, f, tried, notes):
    notes = list(notes) + [f"warned at enable/decode: {w}" for w in f.warnings]
    inexact = any("not exact" in w for w in f.warnings) or mem.cache_dtype == "fp8"
    why = " -- the output differs from the uncached pipeline's (see the warnings)" if inexact else ""
    return dict(verdict=f"fits: pipeline peak {f.pipeline_peak / GiB:.2f} GiB (offload {offload}){why}", memory=mem,
                exact=not inexact,
                offload=offload, line=enable_line(pol, mem, offload), figures=f, tried=tried, notes=notes,
                decode_plan=getattr(f, "decode_plans", None))


def _tokens(sim):
    """Tokens per denoiser call of the built DiT (None for UNets): the latent grid divided by the
    patch sizes."""
    from lightcache.simulate.pipeline import _factors

    b = sim.built
    if b.family == "unet":
        return None
    spatial, temporal, offset = _factors(b.pipe)
    t = (b.frames - offset) // temporal + offset if temporal > 1 else b.frames
    return t * (b.height // spatial) * (b.width // spatial)
