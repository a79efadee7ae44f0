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

import copy
import time
import warnings
from typing import Any, List, Optional

import torch
from torch import nn

from lightcache.guard import CacheStackingError, check_no_foreign_cache
from lightcache.hookset import HookSet
from lightcache.adapters.base import ModelAdapter
from lightcache import parallel as _parallel
from lightcache.memory.chunk import install_chunking
from lightcache.memory.decode import sliced_decode
from lightcache._live_bytes import LiveBytes
from lightcache.memory.meter import StageTracker
from lightcache.memory.store import DeviceStore
from lightcache.policies.base import CachePolicy, CallInfo, RunContext
from lightcache.reporting import Recorder, Report, record_call_end

DENOISER_HOOK = "lightcache.denoiser"
BLOCK_HOOK = "lightcache.block"
_SESSION_ATTR = "_lightcache_session"
# cache_context names -> branch: the classic pipelines' "cond"/"uncond", diffusers' guiders'
# "pred_cond"/"pred_uncond", one batched call "cond_uncond" ("joint"); any other name (LTX-2's
# "uncond_stg", "uncond_modality") is a branch of its own
_BRANCH_NAMES = {"cond": "cond", "uncond": "uncond", "pred_cond": "cond", "pred_uncond": "uncond",
                 "cond_uncond": "joint"}


def _branch_of(name: Optional[str]) -> Optional[str]:
    return None if name is None else _BRANCH_NAMES.get(name, name)
# (component or None for the pipeline itself, method, stage): the pipeline calls these through
# attributes, so instance-level wrappers see every invocation
_STAGE_METHODS = (
    (None, "encode_prompt", "encode"),
    (None, "encode_image", "encode"),
    ("vae", "encode", "encode"),
    ("vae", "decode", "decode"),
)
# pipeline methods that fix how many iterations the denoising loop really makes, when that is not
# the scheduler's timestep count: (method, the result -> the run's step count, starts a new run)
_RUN_LENGTH_METHODS = (
    # img2img / video2video pipelines: set_timesteps(N), then the loop runs the last
    # int(N * strength) timesteps: (timesteps, n) = get_timesteps(...). The run keeps its start;
    # its step count (the forced last step, warm-up ratios) becomes the loop's
    ("get_timesteps", lambda result: len(result[0]), False),
    # SkyReels-V2 diffusion forcing: one iteration per row of its per-frame timestep matrix (more
    # rows than timesteps in asynchronous mode, ar_step > 0), one matrix per long-video segment:
    # each matrix starts a run of its own
    ("generate_timestep_matrix", lambda result: len(result[0]), True),
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
    """How the denoiser packs its output, without keeping any of the output's tensors alive."""
    if isinstance(out, torch.Tensor):
        return torch.Tensor
    if isinstance(out, tuple):
        return tuple
    return type(out)


def _like_output(template: Any, sample: torch.Tensor, extras=(), fields=()) -> Any:
    """``sample`` (and the further streams ``extras``, the output class's ``fields``) packed the way
    :func:`_output_template` described (tensor, tuple, output class)."""
    if template is torch.Tensor:
        return sample
    if template is tuple:
        return (sample,) + tuple(extras)
    return template(sample=sample, **dict(zip(fields, extras)))


class _StageClock:
    """Time and (when metered) peak memory of one stage invocation. CPU peaks come from the memory
    plan's tracker. On CUDA nothing waits for the device: times come from CUDA events read when the
    report is made; allocator peaks only with ``MemoryPlan(cuda_peaks=True)``, a measurement mode
    that synchronises and resets the allocator's peak counter at each stage invocation."""

    def __init__(self, device: torch.device, run_bytes=None, cuda_peaks: bool = False):
        self.cuda = device.type == "cuda"
        self.device = device
        self.cuda_peaks = self.cuda and cuda_peaks
        self.tracker = StageTracker(run_bytes) if run_bytes is not None and not self.cuda else None
        self._events = None
        self.peak = self.end_bytes = None
        self.start = self.end = None

    def __enter__(self):
        if self.cuda_peaks:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.cuda:
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._events[0].record()
        if self.tracker is not None:
            self.tracker.__enter__()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda_peaks:
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        if self.cuda:
            self.end_bytes = torch.cuda.memory_allocated(self.device)  # host-side counter: no sync
            if self._events is not None:
                self._events[1].record()
        if self.tracker is not None:
            self.tracker.__exit__(*exc)
            self.peak = self.tracker.peak
            self.end_bytes = self.tracker.live
        self.end = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of the invocation (on CUDA without cuda_peaks: waits for its end event)."""
        if self._events is not None:
            self._events[1].synchronize()
            return self._events[0].elapsed_time(self._events[1]) / 1000.0
        return self.end - self.start


class Session:
    """Everything lightcache knows about one enabled denoiser."""

    def __init__(self, denoiser: nn.Module, adapter: ModelAdapter, policy: Optional[CachePolicy], memory, pipe=None):
        self.denoiser = denoiser
        self.adapter = adapter
        self.policy = policy
        self.memory = memory
        self.pipe = pipe
        self.blocks: List[nn.Module] = adapter.blocks(denoiser)
        self.recorder = Recorder(num_blocks=len(self.blocks))
        self.hooks = HookSet()  # everything installed for this session (undone by uninstall)
        self.taps = None  # the pipeline's shared taps (_PipelineTaps), when enabled on a pipeline
        self.run_active = False
        self.step = 0
        self.num_steps: Optional[int] = None
        self._calls_in_step: List[str] = []
        self._step_of_calls = -1
        self.blocks_run = 0
        self.policy_state = None
        self.store = None
        self._kept_store = None  # the last call's swap store, emptied, its pinned rings kept for the next call
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
        if self.policy is not None:  # another cache added since enable() (diffusers, cache-dit): refuse the call
            try:
                check_no_foreign_cache(self.denoiser, self.pipe, when="call")
            except CacheStackingError:
                self.end_run(failed=True)
                raise
        self.release_run_state()
        if self.last_stage != "encode":  # this pipeline call had no encode stage before denoising
            self._new_report()
        self.run_active = True
        self.step = 0
        self.num_steps = num_steps
        self._calls_in_step = []
        self._step_of_calls = -1
        self.store = self._make_store()
        run = RunContext(
            store=self.store,
            adapter=self.adapter,
            denoiser=self.denoiser,
            num_blocks=len(self.blocks),
            trial=self.trial,
            parallel=self.parallel,
            call_args=lambda: self._call_args,
        )
        self.policy_state = self.policy.new_state(run) if self.policy is not None else None
        self.last_stage = "denoise"

    def _make_store(self):
        kept, self._kept_store = self._kept_store, None
        if kept is not None:
            kept.reset_peaks()
            return kept
        if self.memory is not None:
            return self.memory.make_store(self)
        return DeviceStore()

    def release_run_state(self, keep_rings: bool = True) -> None:
        """Free cached features and per-run state; the report of the call is kept. A swap store's
        emptied pinned rings are kept for the next call (``keep_rings``; pinned allocation is slow),
        else freed."""
        store, self.store = self.store, None
        state, self.policy_state = self.policy_state, None
        if state is not None and self.policy is not None:
            self.policy.release_state(state)
        self._templates = {}
        self.run_active = False
        self._current_call = None
        self._original_forward = None
        self._call_args = None
        self.in_trial = False
        if store is not None:
            if not self.recorder.closed:  # high-water marks over the call's runs (one per segment)
                before = self.recorder.cache_bytes
                self.recorder.set_cache_bytes({k: max(v, before.get(k, 0)) for k, v in store.cache_bytes().items()})
            if keep_rings:
                store.clear(keep_rings=True)
                self._kept_store = store
            else:
                store.close()

    def close_kept_store(self) -> None:
        kept, self._kept_store = self._kept_store, None
        if kept is not None:
            kept.close()

    def end_run(self, failed: bool = False) -> None:
        """The pipeline call is over (it returned, or raised: ``failed``): free its cache, close its
        report. After a failure nothing is kept, not even empty rings."""
        self.release_run_state(keep_rings=not failed)
        if failed:
            self.close_kept_store()
        self._close_recorder(failed)
        self.run_bytes = None
        self.last_stage = None

    def end_step(self) -> None:
        self.step += 1

    def clock(self) -> "_StageClock":
        cpu_tracker = getattr(self.memory, "cpu_tracker", False)
        if cpu_tracker and self.run_bytes is None:
            self.run_bytes = LiveBytes()
        return _StageClock(
            self.device,
            run_bytes=self.run_bytes if cpu_tracker else None,
            cuda_peaks=bool(getattr(self.memory, "cuda_peaks", False)),
        )

    def _close_recorder(self, failed: bool = False) -> None:
        """The call's recording is over: the first close files it in lightcache.history."""
        if not self.recorder.closed:
            self.recorder.close(failed=failed)
            record_call_end(self, self.recorder)

    def _new_report(self) -> None:
        """A new pipeline call: fresh report and a fresh CPU byte count for its stages. Within a
        pipeline call (its report not closed yet by maybe_free_model_hooks) a later run -- Wan
        Animate's scheduler reset after each segment, an encode between segments -- keeps the
        call's report."""
        if self.taps is not None and not self.recorder.closed:
            return
        self._close_recorder()  # a run that never ended (a denoiser driven by hand) still counts
        self.recorder = Recorder(num_blocks=len(self.blocks))
        self.run_bytes = None
        self._fit_warned = False
        # MemoryPlan.fit_bytes counts what a call allocates beyond what it starts with (CUDA peaks
        # are absolute; the CPU tracker's are already relative to the call)
        self._run_base_bytes = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0

    def report(self) -> Report:
        """An immutable snapshot of the last (or the current) pipeline call."""
        return self.recorder.snapshot(store=self.store)

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
        """Run one invocation of the encode or decode stage, timed and (when metered) peak-measured.
        An exception ends the pipeline call: nothing of it stays behind."""
        if name == "encode" and self.last_stage != "encode":
            self._new_report()  # the first stage of a new pipeline call
        if self.recorder.closed:  # a VAE call by hand between pipeline calls: in no call's report
            return fn(*args, **kwargs)
        self.last_stage = name
        try:
            with self.clock() as clock:
                out = fn(*args, **kwargs)
        except BaseException:
            self.end_run(failed=True)
            raise
        self.recorder.stage(name, clock, self.store)
        self._check_fit(name, clock.peak)
        return out

    def _step_from_timestep(self, name, args, kwargs) -> None:
        """Bare denoiser without step context: a new step when the denoiser's timestep argument
        changes (or a branch repeats), a new run when it goes up. The number of steps is unknown
        (policies that need it say so). Costs one host read of the timestep per call."""
        t = self.adapter.timestep_value(args, kwargs)
        branch = _branch_of(name) or "joint"
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
            if self.taps is not None:
                self.taps.follow_scheduler()  # pipe.scheduler replaced since enable(): tap the new one
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
        branch = _branch_of(name)
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
        args, kwargs = self.adapter.trial_call(self.denoiser, *self._call_args, sample)
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
        try:
            call = self.call_info(ctx, args, kwargs)
            with self.clock() as clock:
                out = self._denoise_call(call, original_forward, args, kwargs)
        except BaseException:
            # the pipeline call is aborted: free the cache, close rings, leave no per-call state
            self.end_run(failed=True)
            raise
        finally:
            self._current_call = None
            self._original_forward = None
            self._call_args = None
        self.recorder.call(call, computed=self._computed, blocks_computed=self.blocks_run, clock=clock, store=self.store)
        self._check_fit("denoise", clock.peak)
        return out

    def _denoise_call(self, call: CallInfo, original_forward, args, kwargs):
        x = self.adapter.sample(args, kwargs)
        self.blocks_run = 0
        self._current_call = call
        self._original_forward = original_forward
        self._call_args = (args, kwargs)
        policy, state = self.policy, self.policy_state
        streams = self.adapter.extra_outputs if policy is not None else ()
        compute = True if policy is None else policy.should_compute(state, call, x)
        if compute:
            out = original_forward(*args, **kwargs)
            if policy is not None:
                policy.after_compute(state, call, x, _output_sample(out))
                if streams:
                    self._keep_streams(call, args, kwargs, out)
            self._templates[call.branch] = _output_template(out)
        else:
            sample = policy.reused_output(state, call, x)
            extras = self._reused_streams(call, args, kwargs) if streams else ()
            template = self._templates.get(call.branch)
            if kwargs.get("return_dict", True) is False:
                out = (sample,) + extras
            elif template is not None:
                out = _like_output(template, sample, extras, [f for _, f in streams])
            else:
                out = sample
        if policy is not None:
            policy.after_call(state, call, x)
        self._computed = compute
        return out

    # the further output streams (ModelAdapter.extra_outputs, e.g. LTX-2's audio) follow the
    # sample's decisions and are reused the way the policy reuses the sample; they live in the
    # run's store like every cached feature (so the memory plan's swap and storage dtype apply)

    def _keep_streams(self, call: CallInfo, args, kwargs, out) -> None:
        kind = self.policy.extra_stream_reuse
        inputs = self.adapter.extra_inputs(self.denoiser, args, kwargs)
        for k, (x_k, out_k) in enumerate(zip(inputs, self.adapter.extra_output_values(out))):
            if kind == "delta" and x_k.shape != out_k.shape:
                raise ValueError(
                    f"lightcache: {self.adapter.family}'s output stream {self.adapter.extra_outputs[k][1]!r} has shape "
                    f"{tuple(out_k.shape)}, its input {tuple(x_k.shape)}: a reuse of input + change needs them equal"
                )
            self.store.put(("stream", call.branch, k), out_k - x_k if kind == "delta" else out_k)

    def _reused_streams(self, call: CallInfo, args, kwargs) -> tuple:
        kind = self.policy.extra_stream_reuse
        inputs = self.adapter.extra_inputs(self.denoiser, args, kwargs)
        if kind == "delta":
            out = []
            for k, x_k in enumerate(inputs):
                delta, scale = self.store.get(("stream", call.branch, k))
                out.append(torch.ops.lightcache.reuse(x_k, delta, scale))
            return tuple(out)
        return tuple(self.store.load(("stream", call.branch, k), copy=True) for k in range(len(inputs)))


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
        self.session.end_run()
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


def install(sessions: List[Session], pipe=None) -> None:
    """Register every session's hooks and, given the pipeline, its taps (shared by all the
    pipeline's denoisers, e.g. Wan 2.2's two experts); on any failure undo everything, re-raise."""
    try:
        for session in sessions:
            _install_hooks(session)
        if pipe is not None:
            _PipelineTaps(sessions, pipe).install()
    except BaseException:
        for session in sessions:
            uninstall(session)
        raise


def _install_hooks(session: Session) -> None:
    hooks = session.hooks
    hooks.register(session.denoiser, _DenoiserHook(session), DENOISER_HOOK)
    for i, block in enumerate(session.blocks):
        hooks.register(block, _BlockHook(session, i), BLOCK_HOOK, position=_beneath_cp_hooks)
    _registry_cls().check_if_exists_or_initialize(session.denoiser).invalidate_child_registries_cache()
    chunk = getattr(session.memory, "chunk_size", None)
    if chunk:
        install_chunking(session.blocks, chunk, getattr(session.memory, "chunk_budget", None),
                         model=session.denoiser, hooks=hooks)
    setattr(session.denoiser, _SESSION_ATTR, session)
    hooks.add_undo(lambda: delattr(session.denoiser, _SESSION_ATTR)
                   if getattr(session.denoiser, _SESSION_ATTR, None) is session else None)


def _beneath_cp_hooks(reg) -> int:
    """Where a block hook goes in a block's registry: beneath diffusers' context-parallel hooks,
    which shard the block's inputs (Wan: at blocks.0): a block hook must see and return this rank's
    shard."""
    names = list(reg.hooks)
    return next((k for k, n in enumerate(names) if n.startswith(_parallel.CP_HOOK_PREFIXES)), len(names))


class _PipelineTaps:
    """The pipeline-level taps shared by all the pipeline's denoisers: the scheduler's
    ``set_timesteps`` (a run starts) and ``step`` (a step ends), the encode/decode stages, sliced
    decode, and ``maybe_free_model_hooks`` (every diffusers pipeline calls it as its call ends: the
    run's cache is freed there, whatever the model class). The first session owns them."""

    def __init__(self, sessions: List[Session], pipe):
        self.sessions = sessions
        self.pipe = pipe
        self.primary = sessions[0]
        self.scheduler = None
        self._scheduler_hooks: Optional[HookSet] = None

    def install(self) -> None:
        pipe, primary, hooks = self.pipe, self.primary, self.primary.hooks
        _check_scheduler(pipe, getattr(pipe, "scheduler", None))
        memory = primary.memory
        if getattr(memory, "decode_slices", None) is not None or getattr(memory, "decode_budget", None) is not None:
            vae = getattr(pipe, "vae", None)  # inside the decode stage's meter, so its peak shows the effect
            hooks.wrap_method(vae, "decode", sliced_decode(vae, memory))
        self._tap_scheduler(pipe.scheduler)
        hooks.add_undo(self._untap_scheduler)
        for owner, method, stage in _STAGE_METHODS:
            obj = pipe if owner is None else getattr(pipe, owner, None)
            if obj is not None and callable(getattr(obj, method, None)):
                hooks.wrap_method(obj, method, self._tap_stage(stage))
        for method, steps_of, restarts in _RUN_LENGTH_METHODS:
            if callable(getattr(pipe, method, None)):
                hooks.wrap_method(pipe, method, self._tap_run_length(steps_of, restarts))
        if callable(getattr(pipe, "maybe_free_model_hooks", None)):
            hooks.wrap_method(pipe, "maybe_free_model_hooks", self._tap_call_end)
        for session in self.sessions:
            session.uses_scheduler = True
            session.taps = self

    def _tap_scheduler(self, scheduler) -> None:
        sessions = self.sessions

        def tap_set_timesteps(original):
            def set_timesteps(*args, **kwargs):
                result = original(*args, **kwargs)
                for session in sessions:
                    session.new_run(num_steps=len(scheduler.timesteps))
                return result

            return set_timesteps

        def tap_step(original, copied=False):
            def step(*args, **kwargs):
                try:
                    result = original(*args, **kwargs)
                except BaseException:
                    for session in sessions:
                        session.end_run(failed=True)
                    raise
                for session in sessions:
                    # copies of the scheduler (SkyReels-V2 diffusion forcing: one per latent frame,
                    # each stepped after the step's denoiser calls) end the step once between them
                    if not copied or session._step_of_calls == session.step:
                        session.end_step()
                return result

            return step

        def deepcopy_untapped(memo):
            # copy.deepcopy keeps functions as they are, so a copy would hold this scheduler's
            # tapped methods (stepping this scheduler, not itself): it gets its own methods, its
            # step tapped (a copy lives for one pipeline call; it is not undone by disable())
            cls = type(scheduler)
            clone = cls.__new__(cls)
            memo[id(scheduler)] = clone
            state = {k: v for k, v in vars(scheduler).items() if k not in ("set_timesteps", "step", "__deepcopy__")}
            clone.__dict__.update(copy.deepcopy(state, memo))
            clone.step = tap_step(clone.step, copied=True)
            return clone

        hooks = HookSet()
        hooks.wrap_method(scheduler, "set_timesteps", tap_set_timesteps)
        hooks.wrap_method(scheduler, "step", tap_step)
        if "__deepcopy__" not in vars(scheduler):  # copy.deepcopy looks __deepcopy__ up on the instance
            scheduler.__deepcopy__ = deepcopy_untapped
            hooks.add_undo(lambda: vars(scheduler).pop("__deepcopy__", None))
        self.scheduler, self._scheduler_hooks = scheduler, hooks

    def _untap_scheduler(self) -> None:
        if self._scheduler_hooks is not None:
            self._scheduler_hooks.undo()
        self.scheduler = self._scheduler_hooks = None

    def follow_scheduler(self) -> None:
        """``pipe.scheduler`` was replaced after enable(): move the taps to the new scheduler (the
        old one gets its own methods back). Its set_timesteps ran untapped, so the run starts here."""
        current = getattr(self.pipe, "scheduler", None)
        if current is self.scheduler:
            return
        _check_scheduler(self.pipe, current)
        self._untap_scheduler()
        self._tap_scheduler(current)
        steps = getattr(current, "timesteps", None)
        for session in self.sessions:
            session.new_run(num_steps=len(steps) if steps is not None else None)

    def _tap_stage(self, name):
        primary = self.primary
        sessions = self.sessions

        def make(original):
            def staged(*args, **kwargs):
                if name == "decode":
                    # denoising is over: the cached features need not outlive it (held through the
                    # VAE decode they would add the whole device cache to the decode's peak). A
                    # decode before the last step (a preview in a step callback) keeps them.
                    for session in sessions:
                        if session.run_active and session.num_steps is not None and session.step >= session.num_steps:
                            session.release_run_state(keep_rings=True)
                return primary.stage(name, original, args, kwargs)

            return staged

        return make

    def _tap_run_length(self, steps_of, restarts: bool):
        sessions = self.sessions

        def make(original):
            def run_length(*args, **kwargs):
                result = original(*args, **kwargs)
                steps = steps_of(result)
                for session in sessions:
                    if not session.run_active:  # outside a pipeline call (set_timesteps starts one)
                        continue
                    if restarts:
                        session.new_run(num_steps=steps)
                    elif session._step_of_calls < 0:  # before the run's first denoiser call
                        session.num_steps = steps
                return result

            return run_length

        return make

    def _tap_call_end(self, original):
        sessions = self.sessions

        def maybe_free_model_hooks(*args, **kwargs):
            try:
                return original(*args, **kwargs)
            finally:
                for session in sessions:
                    session.end_run()

        return maybe_free_model_hooks


def _check_scheduler(pipe, scheduler) -> None:
    if scheduler is None or not hasattr(scheduler, "set_timesteps") or not hasattr(scheduler, "step"):
        raise ValueError(
            f"pipe: {type(pipe).__name__}'s scheduler ({type(scheduler).__name__}) has no set_timesteps/step; "
            "pass the denoiser instead and run it inside cache_context(step_index=...)"
        )


def uninstall(session: Session) -> None:
    """Undo everything enable() did for ``session`` and free its run state; its report is kept."""
    try:
        session.hooks.undo()
    finally:
        session.uses_scheduler = False
        session.taps = None
        session.end_run()
        session.close_kept_store()
        reg = getattr(session.denoiser, "_diffusers_hook", None)
        if reg is not None:
            reg.invalidate_child_registries_cache()


def session_of(model: nn.Module) -> Optional[Session]:
    return getattr(model, _SESSION_ATTR, None)
