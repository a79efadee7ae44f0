"""The hook engine: lightcache's wrapping of a diffusers denoiser, built on diffusers' HookRegistry.

One :class:`Session` per enabled denoiser holds every piece of state (policy state, feature
store, step tracking, report). Hooks are registered under fixed names in the denoiser's (and its
blocks') ``HookRegistry`` so they coexist with diffusers' own hooks, and removing them restores
the model's forward exactly. The step index comes from the pipeline's own loop: from the
pipeline's scheduler (``set_timesteps`` starts a run, ``step`` ends a step), or from diffusers'
``cache_context(step_index=...)`` when only the denoiser was given.

Under diffusers' context parallelism the session knows the denoiser's process group (passed to the
policy state as ``parallel``) and its block hooks sit inside diffusers' split/gather hooks; see
lightcache.parallel.
"""

from __future__ import annotations

import functools
import time
import warnings
from typing import Any, List, Optional

import torch
from torch import nn

from lightcache._hook_order import register_at, remove_exactly
from lightcache.adapters.base import ModelAdapter
from lightcache import parallel as _parallel
from lightcache.memory.chunk import install_chunking, remove_chunking
from lightcache.memory.decode import sliced_decode
from lightcache._live_bytes import LiveBytes
from lightcache.memory.meter import StageTracker
from lightcache.memory.store import DeviceStore
from lightcache.policies.base import CachePolicy, CallInfo
from lightcache.reporting import Report

DENOISER_HOOK = "lightcache.denoiser"
BLOCK_HOOK = "lightcache.block"
_SESSION_ATTR = "_lightcache_session"
_BRANCH_NAMES = {"cond": "cond", "uncond": "uncond"}  # any other context name is one joint call
# (component or None for the pipeline itself, method, stage): the pipeline calls these through
# attributes, so instance-level wrappers see every invocation
_STAGE_METHODS = (
    (None, "encode_prompt", "encode"),
    (None, "encode_image", "encode"),
    ("vae", "encode", "encode"),
    ("vae", "decode", "decode"),
)


def _registry_cls():
    from diffusers.hooks.hooks import HookRegistry

    return HookRegistry


def _model_hook_base():
    from diffusers.hooks.hooks import ModelHook

    return ModelHook


def _output_sample(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    if hasattr(out, "sample"):
        return out.sample
    raise TypeError(f"cannot find the sample in a denoiser output of type {type(out).__name__}")


def _output_template(out: Any):
    """How the denoiser packs its output, without keeping the output's tensors alive."""
    if isinstance(out, torch.Tensor):
        return torch.Tensor
    if isinstance(out, tuple):
        return (tuple, tuple(out[1:]))
    return type(out)


def _like_output(template: Any, sample: torch.Tensor) -> Any:
    """``sample`` packed the way :func:`_output_template` described (tensor, tuple, output class)."""
    if template is torch.Tensor:
        return sample
    if isinstance(template, tuple):
        return (sample,) + template[1]
    return template(sample=sample)


class _StageClock:
    """Wall time (CUDA: synchronised) and, on CUDA, the allocator's peak of one stage invocation.
    CPU memory peaks come from the memory plan's tracker, not from here."""

    def __init__(self, device: torch.device, run_bytes=None):
        self.cuda = device.type == "cuda"
        self.device = device
        self.tracker = StageTracker(run_bytes) if run_bytes is not None and not self.cuda else None

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.tracker is not None:
            self.tracker.__enter__()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.peak = self.end_bytes = None
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            self.end_bytes = torch.cuda.memory_allocated(self.device)
        if self.tracker is not None:
            self.tracker.__exit__(*exc)
            self.peak = self.tracker.peak
            self.end_bytes = self.tracker.live
        self.end = time.perf_counter()
        self.seconds = self.end - self.start


class Session:
    """Everything lightcache knows about one enabled denoiser."""

    def __init__(self, denoiser: nn.Module, adapter: ModelAdapter, policy: Optional[CachePolicy], memory, pipe=None):
        self.denoiser = denoiser
        self.adapter = adapter
        self.policy = policy
        self.memory = memory
        self.pipe = pipe
        self.blocks: List[nn.Module] = adapter.blocks(denoiser)
        self.report = Report(num_blocks=len(self.blocks))
        self.run_active = False
        self.step = 0
        self.num_steps: Optional[int] = None
        self._calls_in_step: List[str] = []
        self._step_of_calls = -1
        self.blocks_run = 0
        self.policy_state = None
        self.store = None
        self._templates: dict = {}
        self.uses_scheduler = False
        self.in_trial = False
        self.run_bytes = None  # CPU tracker of the current pipeline call (MemoryPlan.cpu_tracker)
        self._last_t: Optional[float] = None
        self.last_stage: Optional[str] = None
        self.device = next(iter(denoiser.parameters()), torch.empty(0)).device
        self._current_call: Optional[CallInfo] = None
        self._original_forward = None
        self._call_args = None
        self._fit_warned = False  # MemoryPlan.fit_bytes exceeded in this call (warned once)
        self._run_base_bytes = 0  # device bytes allocated when the call started (CUDA)
        # the context-parallel group (None in one process), fixed with the hooks' order at enable()
        self._parallel_config = getattr(denoiser, "_parallel_config", None)
        self.parallel = _parallel.of_model(denoiser)

    # -- runs and steps ------------------------------------------------------------------------

    def new_run(self, num_steps: Optional[int] = None) -> None:
        """A fresh pipeline call: every cached feature and decision of the previous one is dropped."""
        self.release_run_state()
        self.run_active = True
        self.step = 0
        self.num_steps = num_steps
        self._calls_in_step = []
        self._step_of_calls = -1
        self.store = self._make_store()
        self.policy_state = self.policy.new_state() if self.policy is not None else None
        if self.policy_state is not None:
            self.policy_state.store = self.store
            if hasattr(self.policy_state, "engine"):
                self.policy_state.engine = self
            if hasattr(self.policy_state, "parallel"):
                self.policy_state.parallel = self.parallel
        if self.last_stage != "encode":  # this pipeline call had no encode stage before denoising
            self._new_report()
        self.last_stage = "denoise"

    def _make_store(self):
        if self.memory is not None and hasattr(self.memory, "make_store"):
            return self.memory.make_store(self)
        return DeviceStore()

    def release_run_state(self) -> None:
        """Free cached features (end of a pipeline call); the report is kept."""
        if self.store is not None:
            self.report.cache_bytes = {
                "device": self.store.device_peak,
                "host": self.store.host_peak,
                "largest_feature": getattr(self.store, "max_feature_bytes", 0),
            }
            self.store.clear()
        self.store = None
        self.policy_state = None
        self._templates = {}
        self.run_active = False

    def end_step(self) -> None:
        self.step += 1

    def clock(self) -> "_StageClock":
        if getattr(self.memory, "cpu_tracker", False) and self.run_bytes is None:
            self.run_bytes = LiveBytes()
        return _StageClock(self.device, run_bytes=self.run_bytes if getattr(self.memory, "cpu_tracker", False) else None)

    def _new_report(self) -> None:
        """A new pipeline call: fresh report and a fresh CPU byte count for its stages."""
        self.report.reset()
        self.run_bytes = None
        self._fit_warned = False
        # MemoryPlan.fit_bytes counts what a call allocates beyond what it starts with (CUDA peaks
        # are absolute; the CPU tracker's are already relative to the call)
        self._run_base_bytes = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0

    def _check_fit(self, stage: str, peak: Optional[int]) -> None:
        """Warn once per pipeline call when a stage's working memory exceeded MemoryPlan.fit_bytes."""
        budget = getattr(self.memory, "fit_bytes", None)
        if budget is None or peak is None or self._fit_warned:
            return
        used = peak - self._run_base_bytes
        if used > budget:
            self._fit_warned = True
            warnings.warn(
                f"lightcache: the {stage} stage used {used} bytes of working memory, {used - budget} over "
                f"MemoryPlan.fit_bytes={budget} (what no strategy splits, the latents, hidden states and "
                "attention keys/values, did not fit in the rest)",
                ResourceWarning,
                stacklevel=3,
            )

    def stage(self, name: str, fn, args, kwargs):
        """Run one invocation of the encode or decode stage, timed and (CUDA) peak-measured."""
        if name == "encode" and self.last_stage != "encode":
            self._new_report()  # the first stage of a new pipeline call
        self.last_stage = name
        with self.clock() as clock:
            out = fn(*args, **kwargs)
        self.report.add_stage(name, clock.seconds, clock.peak)
        self.report.sample(name, clock, self.store)
        self._check_fit(name, clock.peak)
        return out

    def _step_from_timestep(self, name, args, kwargs) -> None:
        """Bare denoiser without step context: a new step when the denoiser's timestep argument
        changes (or a branch repeats), a new run when it goes up. The number of steps is unknown
        (policies that need it say so). Costs one host read of the timestep per call."""
        t = self.adapter.timestep_value(args, kwargs)
        branch = _BRANCH_NAMES.get(name, "joint") if name is not None else "joint"
        if not self.run_active or (self._last_t is not None and t > self._last_t):
            self.new_run(None)
            self.step = 0
        elif t != self._last_t or branch in self._calls_in_step:
            self.step += 1
        self._last_t = t

    def call_info(self, ctx, args=(), kwargs=None) -> CallInfo:
        """Step, branch and leadership of the denoiser call about to run."""
        name = getattr(ctx, "name", None) if ctx is not None else None
        if self.uses_scheduler:
            if not self.run_active:
                raise RuntimeError(
                    "lightcache: the denoiser was called outside a pipeline run (the pipeline's scheduler "
                    "set_timesteps was not called first)"
                )
        elif getattr(ctx, "step_index", None) is not None:
            step_index = ctx.step_index
            if not self.run_active or step_index < self.step or (step_index == 0 and self._step_of_calls > 0):
                self.new_run(getattr(ctx, "num_inference_steps", None))
            self.step = step_index
            if getattr(ctx, "num_inference_steps", None) is not None:
                self.num_steps = ctx.num_inference_steps
        else:
            self._step_from_timestep(name, args, kwargs)
        if self._step_of_calls != self.step:
            self._step_of_calls = self.step
            self._calls_in_step = []
        branch = _BRANCH_NAMES.get(name, "joint") if name is not None else None
        if branch is None:
            branch = "joint" if not self._calls_in_step else f"call{len(self._calls_in_step)}"
        if branch in self._calls_in_step:
            raise RuntimeError(
                f"lightcache: branch {branch!r} called twice in step {self.step}; the step counter is not "
                "advancing (is the pipeline's scheduler the one lightcache was enabled with?)"
            )
        leader = not self._calls_in_step
        self._calls_in_step.append(branch)
        return CallInfo(step=self.step, num_steps=self.num_steps, branch=branch, leader=leader)

    # -- blocks --------------------------------------------------------------------------------

    def block(self, index: int, module, original_forward, args, kwargs):
        # The policy's bookkeeping runs outside torch.compile (graph breaks around it), so a
        # regionally compiled block compiles only the block's own computation.
        reused = self._block_begin(index, module, args, kwargs)
        if reused is not None:
            return reused
        out = original_forward(*args, **kwargs)
        return self._block_end(index, module, args, kwargs, out)

    def _block_active(self) -> bool:
        return (
            self.policy is not None and self.policy.block_level and not self.in_trial and self._current_call is not None
        )

    @torch.compiler.disable
    def _block_begin(self, index, module, args, kwargs):
        if self._block_active():
            reused = self.policy.block_begin(self.policy_state, self._current_call, index, module, args, kwargs)
            if reused is not None:
                return reused
        self.blocks_run += 1
        return None

    @torch.compiler.disable
    def _block_end(self, index, module, args, kwargs, out):
        if self._block_active():
            return self.policy.block_end(self.policy_state, self._current_call, index, module, args, kwargs, out)
        return out

    def trial(self, sample):
        """Run the current denoiser call on a replacement latent (LFCache's cheap trial forward):
        blocks run uncached and are not counted as computed work. Returns the output sample."""
        if self._call_args is None:
            raise RuntimeError("lightcache: a trial forward is only possible during a denoiser call")
        args, kwargs = self.adapter.replace_sample(*self._call_args, sample)
        counted = self.blocks_run
        self.in_trial = True
        try:
            out = self._original_forward(*args, **kwargs)
        finally:
            self.in_trial = False
            self.blocks_run = counted
        return _output_sample(out)

    # -- the denoiser call ---------------------------------------------------------------------

    def denoise(self, original_forward, ctx, args, kwargs):
        if getattr(self.denoiser, "_parallel_config", None) is not self._parallel_config:
            # diffusers' hooks would now wrap lightcache's denoiser hook (it would see sharded
            # latents) and the ranks would decide without reducing: refuse rather than diverge
            raise RuntimeError(
                f"lightcache: {type(self.denoiser).__name__}.enable_parallelism() was called after "
                "lightcache.enable(); call lightcache.enable() again after enable_parallelism()"
            )
        call = self.call_info(ctx, args, kwargs)
        x = self.adapter.sample(args, kwargs)
        self.blocks_run = 0
        self._current_call = call
        self._original_forward = original_forward
        self._call_args = (args, kwargs)
        clock = self.clock().__enter__()
        policy, state = self.policy, self.policy_state
        compute = True if policy is None else policy.should_compute(state, call, x)
        if compute:
            out = original_forward(*args, **kwargs)
            if policy is not None:
                policy.after_compute(state, call, x, _output_sample(out))
            self._templates[call.branch] = _output_template(out)
        else:
            sample = policy.reused_output(state, call, x)
            template = self._templates.get(call.branch)
            if kwargs.get("return_dict", True) is False:
                out = (sample,)
            elif template is not None:
                out = _like_output(template, sample)
            else:
                out = sample
        if policy is not None and hasattr(policy, "after_call"):
            policy.after_call(state, call, x)
        self._current_call = None
        self._call_args = None
        clock.__exit__(None, None, None)
        self.report.record(call, computed=compute, blocks_computed=self.blocks_run, seconds=clock.seconds, peak=clock.peak)
        self.report.sample("denoise", clock, self.store)
        self._check_fit("denoise", clock.peak)
        return out


class _DenoiserHook(_model_hook_base()):
    """Wraps the denoiser's forward; receives diffusers' cache_context like diffusers' cache hooks."""

    _is_stateful = True

    def __init__(self, session: Session):
        super().__init__()
        from diffusers.hooks.hooks import BaseState, StateManager

        self.session = session
        # diffusers' cache_context() sets the context on every StateManager of a stateful hook
        self.context = StateManager(BaseState)

    def new_forward(self, module, *args, **kwargs):
        return self.session.denoise(self.fn_ref.original_forward, self.context._context, args, kwargs)

    def reset_state(self, module):
        # called by diffusers at the end of a pipeline call (maybe_free_model_hooks): free the cache
        self.session.release_run_state()
        return module


class _BlockHook(_model_hook_base()):
    """Wraps one block: block-level policies decide here; every block that runs is counted."""

    def __init__(self, session: Session, index: int):
        super().__init__()
        self.session = session
        self.index = index

    def new_forward(self, module, *args, **kwargs):
        return self.session.block(self.index, module, self.fn_ref.original_forward, args, kwargs)


# ---------------------------------------------------------------------------------------------
# installing and removing
# ---------------------------------------------------------------------------------------------


def _wrap_method(obj, name: str, make_wrapper, wrapped: list) -> None:
    """Shadow ``obj.name`` with an instance attribute (undone by :func:`_unwrap_methods`, which puts
    back exactly what was there: another instance attribute, or nothing)."""
    had = name in vars(obj)
    before = vars(obj).get(name)
    original = getattr(obj, name)
    setattr(obj, name, functools.wraps(original)(make_wrapper(original)))
    wrapped.append((obj, name, had, before))


def _unwrap_methods(wrapped: list) -> None:
    for obj, name, had, before in reversed(wrapped):
        if had:
            setattr(obj, name, before)
        elif name in vars(obj):
            delattr(obj, name)
    wrapped.clear()


def install(sessions: List[Session], pipe=None) -> None:
    """Register every session's hooks and, given the pipeline, its taps (shared by all the
    pipeline's denoisers, e.g. Wan 2.2's two experts); on any failure undo everything, re-raise."""
    try:
        for session in sessions:
            _install_hooks(session)
        if pipe is not None:
            _install_pipeline_taps(sessions, pipe)
    except BaseException:
        for session in sessions:
            uninstall(session)
        raise


def _install_hooks(session: Session) -> None:
    registry_cls = _registry_cls()
    created = []  # modules whose registry we created (removed again on uninstall when empty)
    session._created_registries = created
    session._no_forward_attr = []
    session._wrapped = []
    for i, module in enumerate([session.denoiser] + session.blocks):
        if not hasattr(module, "_diffusers_hook"):
            created.append(module)
        if "forward" not in vars(module):  # a registry leaves an instance forward behind
            session._no_forward_attr.append(module)
        reg = registry_cls.check_if_exists_or_initialize(module)
        if i == 0:
            reg.register_hook(_DenoiserHook(session), DENOISER_HOOK)
        else:
            _register_inside_cp(reg, _BlockHook(session, i - 1), BLOCK_HOOK)
    registry_cls.check_if_exists_or_initialize(session.denoiser).invalidate_child_registries_cache()
    chunk = getattr(session.memory, "chunk_size", None)
    session._chunked = (
        install_chunking(session.blocks, chunk, getattr(session.memory, "chunk_budget", None), model=session.denoiser)
        if chunk
        else []
    )
    setattr(session.denoiser, _SESSION_ATTR, session)


def _register_inside_cp(reg, hook, name: str) -> None:
    """Register ``hook`` beneath diffusers' context-parallel hooks of the module: they shard the
    block's inputs (Wan: at blocks.0), and a block hook must see and return this rank's shard."""
    names = list(reg.hooks)
    first = next((k for k, n in enumerate(names) if n.startswith(_parallel.CP_HOOK_PREFIXES)), len(names))
    register_at(reg, hook, name, first)


def _install_pipeline_taps(sessions: List[Session], pipe) -> None:
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is None or not hasattr(scheduler, "set_timesteps") or not hasattr(scheduler, "step"):
        raise ValueError(
            f"pipe: {type(pipe).__name__} has no scheduler with set_timesteps/step; "
            "pass the denoiser instead and run it inside cache_context(step_index=...)"
        )
    primary = sessions[0]  # owns the wrappers and the encode/decode stages

    def tap_set_timesteps(original):
        def set_timesteps(*args, **kwargs):
            result = original(*args, **kwargs)
            for session in sessions:
                session.new_run(num_steps=len(scheduler.timesteps))
            return result

        return set_timesteps

    def tap_step(original):
        def step(*args, **kwargs):
            result = original(*args, **kwargs)
            for session in sessions:
                session.end_step()
            return result

        return step

    memory = primary.memory
    if getattr(memory, "decode_slices", None) is not None or getattr(memory, "decode_budget", None) is not None:
        # inside the decode stage's meter, so its peak shows the effect
        vae = getattr(pipe, "vae", None)
        _wrap_method(vae, "decode", sliced_decode(vae, memory), primary._wrapped)
    _wrap_method(scheduler, "set_timesteps", tap_set_timesteps, primary._wrapped)
    _wrap_method(scheduler, "step", tap_step, primary._wrapped)
    for session in sessions:
        session.uses_scheduler = True

    def tap_stage(name):
        def make(original):
            def staged(*args, **kwargs):
                return primary.stage(name, original, args, kwargs)

            return staged

        return make

    for owner, method, stage in _STAGE_METHODS:
        obj = pipe if owner is None else getattr(pipe, owner, None)
        if obj is not None and callable(getattr(obj, method, None)):
            _wrap_method(obj, method, tap_stage(stage), primary._wrapped)


def uninstall(session: Session) -> None:
    remove_chunking(getattr(session, "_chunked", []))
    _unwrap_methods(getattr(session, "_wrapped", []))
    for module in [session.denoiser] + session.blocks:
        reg = getattr(module, "_diffusers_hook", None)
        if reg is None:
            continue
        for name in (DENOISER_HOOK, BLOCK_HOOK):
            if name in reg.hooks:
                remove_exactly(reg, name)  # the block hook sits beneath diffusers' CP hooks
        if reg.hooks:
            continue
        if module in getattr(session, "_created_registries", []):
            del module._diffusers_hook
        if any(m is module for m in getattr(session, "_no_forward_attr", [])) and "forward" in vars(module):
            del module.forward  # the registry's bound original: the class's forward is the same
    reg = getattr(session.denoiser, "_diffusers_hook", None)
    if reg is not None:
        reg.invalidate_child_registries_cache()
    session.release_run_state()
    if getattr(session.denoiser, _SESSION_ATTR, None) is session:
        delattr(session.denoiser, _SESSION_ATTR)


def session_of(model: nn.Module) -> Optional[Session]:
    return getattr(model, _SESSION_ATTR, None)
