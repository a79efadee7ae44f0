"""Feature chunk (docs/design.md §4.2): the widest intermediates of the denoiser's blocks exist for one
chunk of rows (tokens) at a time, and the output equals the unchunked output to fp rounding
(tests: ≤ 1e-5 max abs per fp32 denoiser call on every adapted family).

- Feed-forward layers (diffusers ``FeedForward``: the DiT blocks' FFN, the UNets' spatial and
  temporal transformer FFNs) act on each token alone: all leading dimensions are flattened into
  rows and the (rows, hidden) state exists for one chunk at a time. Plain Linear → GELU(tanh) →
  Linear layers go through the fused ``lightcache::chunked_ffn`` op; any other FFN (GEGLU, or one
  whose layers are wrapped: below) runs its own forward on each chunk into one preallocated output.
- Attention (:mod:`lightcache.memory.chunk_attention`): inside every chunked block, torch's
  scaled-dot-product attention runs over query chunks with full keys/values, through the same
  backend; the (Lq, Lk) score matrix of a materialising backend exists for one chunk.
- Video UNets (:mod:`lightcache.memory.chunk_unet`): resnets and transformer blocks over whole
  frames (spatial) or pixels (temporal), never splitting a GroupNorm's statistics.
- DiT blocks of the known families (:mod:`lightcache.memory.chunk_dit`: Wan, HunyuanVideo,
  CogVideoX, LTX-Video, EasyAnimate): the whole block over sequence pieces (keys/values whole),
  so its full-length tensors are the output, K and V. CPU tracker, one block (width 96, 512 video
  tokens), in (L×width) units: Wan 15.0 unchunked, 6.5 with FFN + attention chunked alone (its
  floor: the rotary prologue on full-length queries/keys), 4.95 / 3.54 over pieces of 64 / 16
  tokens; HunyuanVideo single-stream 15.5, also with the FFN + attention hooks (its MLP is no
  FeedForward module) -> 4.94 / 3.54; CogVideoX, LTX, EasyAnimate, HunyuanVideo dual-stream 11.0-11.4 -> 8.0-9.2 ->
  4.5 / 3.5. Other DiT blocks (and these when the piece path does not apply) keep the FFN +
  attention hooks.

The chunk is a fixed number of rows, or ``"auto"``: each operation sizes it at call time so its
widest chunked intermediate fits a byte budget (:mod:`lightcache.memory.chunk_spec`).

Per-piece cost: every piece is one more pass of a module's Python and kernel launches, so the
hooks add no piece where no split is needed: a call that fits one chunk runs the module as it is
(a feed-forward the fused op may stand in for runs that op in one piece: its GELU in place on the
one hidden buffer holds the (rows, hidden) state once, not twice, for the same arithmetic);
the query-chunking function mode (a Python call per torch op inside the block) runs only while a
call with those inputs may split an attention call (:class:`~lightcache.memory.chunk_attention.
SplitMemo`); on CPU the fused FFN calls its kernel directly, without the custom op's dispatch.
Every chunked call counts its pieces and piece copies for the planner's cost model
(:func:`lightcache.memory.chunk_spec.counting`).

Wrapped layers (PEFT LoRA, diffusers' layerwise casting, quantised Linear subclasses, accelerate
hooks and offload, torch hooks): chunking never computes a layer from its parameters in its place
unless that provably gives what calling it would, so every wrapper applies, chunked or not.

- Called through (the module's own ``__call__``/forward, on a chunk or piece of rows): feed-forward
  layers whenever the fused op is not provably equal (below): the FFN's forward per chunk, so every
  Linear, activation and dropout inside is called; UNet resnets and transformer blocks (their
  forward per frame/pixel chunk); attention (the processor runs as usual, only torch's
  ``scaled_dot_product_attention`` call is split by query rows); DiT blocks over pieces (the
  block's forward per piece; inside it the per-family processors call the projections
  ``to_q/to_k/to_v``, ``add_{q,k,v}_proj``, the q/k norms, ``to_out``, ``to_add_out``, and
  HunyuanVideo's ``norm``/``attn`` modules); PreciseCache's trial forward (the denoiser's forward).
  A hook on a layer inside a chunked module fires once per chunk (or piece); once per call when the
  call fits one chunk.
- Read directly: the fused ``lightcache::chunked_ffn`` reads ``weight``/``bias`` of a FeedForward's
  two Linear layers, only when (checked at every call, structure cached per FFN against a key that
  changes with hooks, adapters and dtypes, :class:`FeedForwardChunkHook`): Linear → GELU(tanh) →
  [Dropout that drops nothing] → Linear, both exactly ``nn.Linear`` (PEFT layers, bitsandbytes/GGUF
  /parametrized subclasses are not), plain float32/float16/bfloat16 tensors (not fp8 storage, not a
  quantised tensor subclass) of the input's dtype and device, no torch/diffusers/accelerate hook or
  forward override on the modules the op stands in for nor beneath the chunk hook on the FFN, no
  global module hook, no autocast, no autograd needed (the op has no backward). Otherwise shape
  metadata only: ``in_features``/``out_features``, ``in_channels``/``out_channels``, ``heads``,
  ``fused_projections``, the processor's class, for chunk sizes and for choosing a path.

Adapters and the caches: a caching policy's cached features live for one pipeline call (the engine
frees them when the call ends, and a new call starts empty; enabled on the denoiser alone, for one
run: a rising timestep starts a new one), so ``set_adapters``,
``disable_adapters``, loading or unloading LoRA between calls needs no reset: the next call equals
a fresh run in the new state bit for bit (tests/test_chunk_wrappers.py). Changing adapters during a
call (from a step callback) does not reset the cache: features reused later in that call were
computed before the change, as any reuse approximates the skipped computation.
"""

from __future__ import annotations

from typing import List, Optional, Union

import torch
from torch import nn
from torch.nn.modules import module as _torch_module

from lightcache.hookset import HookSet
from lightcache.memory.chunk_attention import SplitMemo, attention_modules, sdpa_row_bytes
from lightcache.memory.chunk_spec import ChunkSpec, chunk_hook_base, count

CHUNK_HOOK = "lightcache.chunk"  # on feed-forward layers
UNET_HOOK = "lightcache.chunk.unet"  # on UNet resnets and transformer blocks
ATTENTION_HOOK = "lightcache.chunk.attention"  # around each block
DIT_HOOK = "lightcache.chunk.dit"  # directly on the forward of each DiT block of a known family


def _feedforwards(blocks: List[nn.Module]) -> List[nn.Module]:
    from diffusers.models.attention import FeedForward

    found, seen = [], set()
    for block in blocks:
        for m in block.modules():
            if isinstance(m, FeedForward) and id(m) not in seen:
                seen.add(id(m))
                found.append(m)
    return found


# -- the fused feed-forward path: only where it provably equals calling the layers ----------------
#
# The fused op reads the two Linear layers' ``.weight``/``.bias`` and computes what their forwards
# would, so it may stand in for them only when nothing wraps them: whatever sits on a layer (PEFT
# LoRA, layerwise casting, quantised Linear subclasses, accelerate's offload hooks, a user's hook)
# lives in its forward call, which the op never makes. Everything else runs the FFN's own forward
# on each chunk, so every wrapper applies.


def _bound_to(fn, func, owner) -> bool:
    """Whether ``fn`` is ``func`` bound to ``owner`` (what ``owner.forward`` is when nothing wraps it)."""
    return getattr(fn, "__func__", None) is func and getattr(fn, "__self__", None) is owner


def _plain(m: nn.Module) -> bool:
    """Nothing runs around or instead of ``m``'s class forward: no instance ``forward`` (diffusers'
    hook registry, accelerate's ``add_hook_to_module`` and monkeypatches all put one there) other than
    the class's own bound back, no torch forward/backward (pre-)hooks, no non-empty diffusers hook
    registry, no accelerate ``_hf_hook``."""
    d = m.__dict__
    fwd = d.get("forward")
    if fwd is not None and not _bound_to(fwd, type(m).forward, m):
        return False
    reg = d.get("_diffusers_hook")
    if reg is not None and reg.hooks:
        return False
    return not (
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks or "_hf_hook" in d
    )


def _weights_ok(lin: nn.Linear) -> bool:
    """Plain tensors (not a quantised or distributed tensor subclass) of one dtype the op supports."""
    from lightcache.ops import FLOAT_DTYPES

    w, b = lin.weight, lin.bias
    plain = (nn.Parameter, torch.Tensor)
    if type(w) not in plain or w.dtype not in FLOAT_DTYPES:
        return False
    return b is None or (type(b) in plain and b.dtype == w.dtype and b.device == w.device)


def _fused_parts(ff: nn.Module, inner_forward=None):
    """(proj_in, proj_out) when calling ``ff`` provably computes exactly Linear → GELU(tanh) →
    [Dropout that drops nothing] → Linear on plain ``nn.Linear`` weights, so the fused op may stand
    in for it; None otherwise (then the layers' own forwards must run). ``inner_forward`` is what
    the chunk hook would call for ``ff`` (checked to be FeedForward.forward itself: a hook
    registered on ``ff`` beneath the chunk hook, or a subclass's forward, would be skipped too)."""
    from diffusers.models.activations import GELU
    from diffusers.models.attention import FeedForward

    if inner_forward is not None and not _bound_to(inner_forward, FeedForward.forward, ff):
        return None
    net = list(ff.net)
    # exact types: a subclass (LoRACompatibleLinear, bitsandbytes/GGUF Linear, a parametrized
    # Linear, PEFT's layers, which are not nn.Linear at all) may compute something else
    if not net or type(net[0]) is not GELU or net[0].approximate != "tanh" or "gelu" in net[0].__dict__:
        return None
    rest = []
    for m in net[1:]:
        if type(m) is nn.Dropout and (m.p == 0.0 or not m.training):
            if not _plain(m):
                return None
            continue
        rest.append(m)
    if len(rest) != 1:
        return None
    proj_in, proj_out = net[0].proj, rest[0]
    if type(proj_in) is not nn.Linear or type(proj_out) is not nn.Linear:
        return None
    if not all(_plain(m) for m in (net[0], proj_in, proj_out)):
        return None
    if not (_weights_ok(proj_in) and _weights_ok(proj_out)) or proj_in.weight.dtype != proj_out.weight.dtype:
        return None
    return proj_in, proj_out


def _module_state(m: nn.Module) -> tuple:
    """What :func:`_fused_parts` reads of one module, cheaply: changes whenever a hook, a registry
    hook, an accelerate hook or a forward override is added or removed, or the module is replaced
    (PEFT injecting or unloading an adapter swaps the layer object)."""
    d = m.__dict__  # plain attributes live here; reading them via getattr would be slower
    reg = d.get("_diffusers_hook")
    return (
        id(m),
        type(m),
        d.get("forward"),
        "_hf_hook" in d,
        0 if reg is None else len(reg.hooks),
        len(d["_forward_hooks"]),
        len(d["_forward_pre_hooks"]),
        len(d["_backward_hooks"]),
        len(d["_backward_pre_hooks"]),
        d["training"],
        "gelu" in d,
        d.get("approximate"),
        d.get("p"),
    )


def _tensor_state(t) -> tuple:
    return (None,) if t is None else (type(t), t.dtype, t.device)


def _verdict_key(ff: nn.Module, inner_forward) -> tuple:
    """Everything the fused-path verdict for ``ff`` depends on (its structure, the hooks on the
    modules the op would stand in for, the weights' types/dtypes/devices): the verdict is cached
    against it and recomputed when it changes, so a call costs a few attribute reads."""
    net = list(ff._modules["net"]._modules.values())  # what iterating ff.net gives, without its overhead
    key = [inner_forward]
    for m in net:
        key.append(_module_state(m))
        proj = m.__dict__["_modules"].get("proj") if m is net[0] else None
        if proj is not None:
            key.append(_module_state(proj))
        if type(m) is nn.Linear or proj is not None:
            lin = proj if proj is not None else m
            key += (_tensor_state(lin._parameters.get("weight")), _tensor_state(lin._parameters.get("bias")))
    return tuple(key)


_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def _globally_hooked() -> bool:
    """torch's global module hooks (``register_module_forward_hook`` and friends) run on every
    module call, the Linear calls the fused op stands in for included."""
    return any(getattr(_torch_module, n, None) for n in _GLOBAL_HOOKS)


def _autocast_on(device_type: str) -> bool:
    # under autocast F.linear runs in the autocast dtype; the custom op would not
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


class FeedForwardChunkHook(chunk_hook_base()):
    """A FeedForward over row chunks (all leading dimensions flattened into rows).

    Two paths, chosen at every call:

    - fused: the ``lightcache::chunked_ffn`` op on the layers' weights, taken only when it provably
      equals the layers' own forwards (:func:`_fused_parts`: Linear → GELU(tanh) → Linear, both
      exactly ``nn.Linear`` with plain float32/float16/bfloat16 weights of the input's dtype and
      device, no hook of any kind on the modules it stands in for, no autocast, no autograd needed).
      The structural verdict is cached against :func:`_verdict_key`, which changes when a hook,
      adapter or wrapper is added or removed, so adding LoRA or casting after ``enable()`` is seen
      at the next call.
    - per chunk: the FFN's own forward (everything beneath this hook, each layer's ``__call__``)
      on each chunk of rows, written into one output. PEFT LoRA (and ``set_adapters`` /
      ``disable_adapters``), layerwise casting, quantised layers, offload hooks and user hooks all
      apply; a forward hook or pre-hook on a layer inside fires once per chunk.
    """

    def __init__(self, spec: ChunkSpec):
        super().__init__()
        self.spec = spec
        self.split_calls = 0  # calls that ran in more than one chunk
        self.fused_calls = 0  # calls that ran the fused op (split or in one piece)
        self._key = None
        self._parts = None

    def initialize_hook(self, module):
        if module.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in module.modules()):
            raise ValueError(
                "MemoryPlan.chunk_size: cannot chunk a feed-forward layer with active dropout (model in training "
                "mode); call .eval() first"
            )
        self.hidden = _hidden_width(module)
        self._key = self._parts = None  # re-registered (hooks put back around another): look again
        return module

    def fused_parts(self, module, rows: torch.Tensor):
        """(proj_in, proj_out) when this call may run the fused op, else None."""
        key = _verdict_key(module, self.fn_ref.original_forward)
        if key != self._key:
            self._key, self._parts = key, _fused_parts(module, self.fn_ref.original_forward)
        parts = self._parts
        if parts is None or _globally_hooked() or _autocast_on(rows.device.type):
            return None
        w = parts[0].weight
        if rows.dtype != w.dtype or rows.device != w.device or parts[1].weight.device != w.device:
            return None  # nn.Linear would raise or cast; let it
        if torch.is_grad_enabled() and (
            rows.requires_grad or any(p.requires_grad for m in parts for p in m.parameters())
        ):
            return None  # the op has no autograd formula: the layers' forwards give a graph
        return parts

    def new_forward(self, module, hidden_states, *args, **kwargs):
        width = hidden_states.shape[-1]
        rows = hidden_states.reshape(-1, width)
        chunk = self.spec.rows(self.hidden * hidden_states.element_size(), "one row of a FeedForward hidden state")
        whole = rows.shape[0] <= chunk
        parts = None if args or kwargs else self.fused_parts(module, rows)  # extra arguments: let forward see them
        if whole and parts is None:
            return self.fn_ref.original_forward(hidden_states, *args, **kwargs)
        # A call that fits one chunk still runs the fused op when it can, in one piece: its GELU acts in
        # place on the one hidden buffer, so the FFN holds (rows, hidden) once instead of twice (the
        # projection's output and the activation's), for the same arithmetic and no extra piece.
        if not whole:
            self.split_calls += 1
        if parts is not None:
            self.fused_calls += 1
            if not whole:
                count(-(-rows.shape[0] // chunk))  # the op writes each chunk's GEMM into its output rows
            proj_in, proj_out = parts
            if torch.is_grad_enabled() or rows.device.type != "cpu" or _compiling():
                out = torch.ops.lightcache.chunked_ffn(
                    rows, proj_in.weight, proj_in.bias, proj_out.weight, proj_out.bias, chunk
                )
            else:
                # the op's CPU kernel itself, called directly: the CPU tracker sees its buffers, and
                # the custom op's dispatch and argument checks (what fused_parts has checked) are
                # skipped: per call they cost about as much as a small FFN's chunk
                from lightcache.reference import chunked_ffn

                out = chunked_ffn(rows, proj_in.weight, proj_in.bias, proj_out.weight, proj_out.bias, chunk)
            return out.reshape(*hidden_states.shape[:-1], out.shape[-1])
        # the FFN's own forward on each chunk: every wrapper on its layers runs, once per chunk
        first = self.fn_ref.original_forward(rows[:chunk], *args, **kwargs)
        out = first.new_empty((rows.shape[0], first.shape[-1]))
        out[:chunk] = first
        del first
        for start in range(chunk, rows.shape[0], chunk):
            out[start : start + chunk] = self.fn_ref.original_forward(rows[start : start + chunk], *args, **kwargs)
        count(-(-rows.shape[0] // chunk), out.numel() * out.element_size())
        return out.reshape(*hidden_states.shape[:-1], out.shape[-1])


def _hidden_width(ff: nn.Module) -> int:
    """Width of a FeedForward's widest row: its first projection's output (GEGLU: twice the inner
    width, the gate included)."""
    proj = getattr(ff.net[0], "proj", None)
    if isinstance(proj, nn.Linear):
        return proj.out_features
    return max(m.out_features for m in ff.modules() if isinstance(m, nn.Linear))


class AttentionChunkHook(chunk_hook_base()):
    """Around a block: its scaled-dot-product attention calls run over query chunks (under the
    function mode only while a call with those inputs may split one: :class:`SplitMemo`)."""

    def __init__(self, spec: ChunkSpec):
        super().__init__()
        self.spec = spec
        self.split_calls = 0

    def initialize_hook(self, module):
        self.memo = SplitMemo(self.rows_for, attention_modules(module), self.spec)
        return module

    def rows_for(self, query, key):
        return self.spec.rows(sdpa_row_bytes(query, key), "one query row of attention scores (heads x keys)")

    def new_forward(self, module, *args, **kwargs):
        out, splits = self.memo(self.fn_ref.original_forward, module, args, kwargs)
        self.split_calls += splits
        return out


def _compiling() -> bool:
    # under torch.compile the custom op stays one opaque node (its Python kernel would be traced)
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # older torch
        return False


def chunk_spec(chunk_size: Union[int, str], budget: Optional[int] = None) -> ChunkSpec:
    """The :class:`ChunkSpec` of MemoryPlan's ``chunk_size`` (rows, or "auto" with ``budget`` bytes)."""
    if chunk_size == "auto":
        if budget is None:
            raise ValueError("MemoryPlan.chunk_size='auto' needs MemoryPlan.chunk_budget (bytes)")
        return ChunkSpec(budget=budget)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"MemoryPlan.chunk_size must be None, 'auto' or an int >= 1 (rows), got {chunk_size!r}")
    return ChunkSpec(size=chunk_size)


def _outside_blocks(model: nn.Module, blocks: List[nn.Module]) -> List[nn.Module]:
    """``model``'s direct children that hold attention or a feed-forward layer but no block
    (TextToVideoSD's ``transformer_in``, HunyuanVideo's token refiner, Wan's image embedder)."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.attention_processor import Attention

    inside = {id(m) for b in blocks for m in b.modules()}
    found = []
    for child in model.children():
        mods = list(child.modules())
        if any(id(m) in inside for m in mods):
            continue
        if any(isinstance(m, (Attention, FeedForward)) or hasattr(m, "processor") for m in mods):
            found.append(child)
    return found


def install_chunking(
    blocks: List[nn.Module],
    chunk_size: Union[int, str],
    budget: Optional[int] = None,
    model: Optional[nn.Module] = None,
    hooks: Optional[HookSet] = None,
) -> HookSet:
    """Register the chunk hooks inside ``blocks`` (and, given the denoiser ``model``, inside its
    other modules with attention or feed-forward layers): every feed-forward layer, the
    query-chunked attention around each block, and the UNet modules of
    :mod:`lightcache.memory.chunk_unet`. Records them in ``hooks`` (a new HookSet by default) and
    returns it (iterate it for the hooked modules; :func:`remove_chunking` undoes it); on failure
    nothing stays hooked."""
    import lightcache.ops  # noqa: F401  (registers torch.ops.lightcache.chunked_ffn)
    from lightcache.memory.chunk_dit import DitChunkHook, family_of
    from lightcache.memory.chunk_unet import unet_hooks

    spec = chunk_spec(chunk_size, budget)
    scopes = list(blocks) + (_outside_blocks(model, blocks) if model is not None else [])
    plan = [(ff, FeedForwardChunkHook(spec), CHUNK_HOOK) for ff in _feedforwards(scopes)]
    plan += [(m, hook, UNET_HOOK) for m, hook in unet_hooks(scopes, spec)]
    for b in scopes:
        family = family_of(b) if b in blocks else None
        if family is not None:  # the whole block over sequence pieces (lightcache.memory.chunk_dit)
            plan.append((b, DitChunkHook(spec, family, own_hooks=(CHUNK_HOOK,)), DIT_HOOK))
        else:
            plan.append((b, AttentionChunkHook(spec), ATTENTION_HOOK))
    block_ids = {id(b) for b in blocks}
    mine = HookSet()  # what this call added (undone alone on failure)
    try:
        for module, hook, name in plan:
            # DIT_HOOK sits on the block's own forward: it runs it once per piece, which the hooks
            # above (block caches, CP) must not see; so does a UNet hook on one of the engine's
            # blocks (Latte's blocks are BasicTransformerBlocks)
            beneath = name == DIT_HOOK or (name == UNET_HOOK and id(module) in block_ids)
            mine.register(module, hook, name, position=(lambda reg: 0) if beneath else None)
    except BaseException:
        mine.undo()
        raise
    if hooks is None:
        return mine
    hooks.extend(mine)
    return hooks


def remove_chunking(hooks: HookSet) -> None:
    """Undo :func:`install_chunking`: every module is left as it was found."""
    hooks.undo()
