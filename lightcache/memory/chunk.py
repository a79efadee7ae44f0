"""Feature chunk (DESIGN.md §4.2): the widest intermediates of the denoiser's blocks exist for one
chunk of rows (tokens) at a time, and the output equals the unchunked output to fp rounding
(tests: ≤ 1e-5 max abs per fp32 denoiser call on every adapted family).

- Feed-forward layers (diffusers ``FeedForward``: the DiT blocks' FFN, the UNets' spatial and
  temporal transformer FFNs) act on each token alone: all leading dimensions are flattened into
  rows and the (rows, hidden) state exists for one chunk at a time. Linear → GELU(tanh) → Linear
  layers go through the fused ``lightcache::chunked_ffn`` op; other activations (GEGLU) run the
  layer on each chunk into one preallocated output.
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
"""

from __future__ import annotations

from typing import List, Optional, Union

import torch
from torch import nn

from lightcache.hookset import HookSet
from lightcache.memory.chunk_attention import QueryChunkedSDPA, sdpa_row_bytes
from lightcache.memory.chunk_spec import ChunkSpec, chunk_hook_base

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


def _fused_parts(ff: nn.Module):
    """(proj_in, proj_out) when ``ff`` is exactly Linear → GELU(tanh) → [Dropout(0)] → Linear."""
    from diffusers.models.activations import GELU

    net = list(ff.net)
    if not net or not isinstance(net[0], GELU) or net[0].approximate != "tanh":
        return None
    rest = [m for m in net[1:] if not (isinstance(m, nn.Dropout) and m.p == 0.0)]
    if len(rest) != 1 or not isinstance(rest[0], nn.Linear):
        return None
    return net[0].proj, rest[0]


class FeedForwardChunkHook(chunk_hook_base()):
    """A FeedForward over row chunks (all leading dimensions flattened into rows)."""

    def __init__(self, spec: ChunkSpec):
        super().__init__()
        self.spec = spec
        self.parts = None
        self.split_calls = 0  # calls that ran in more than one chunk

    def initialize_hook(self, module):
        if module.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in module.modules()):
            raise ValueError(
                "MemoryPlan.chunk_size: cannot chunk a feed-forward layer with active dropout (model in training "
                "mode); call .eval() first"
            )
        self.parts = _fused_parts(module)
        self.hidden = _hidden_width(module)
        return module

    def new_forward(self, module, hidden_states, *args, **kwargs):
        width = hidden_states.shape[-1]
        rows = hidden_states.reshape(-1, width)
        chunk = self.spec.rows(self.hidden * hidden_states.element_size(), "one row of a FeedForward hidden state")
        if rows.shape[0] <= chunk:
            return self.fn_ref.original_forward(hidden_states, *args, **kwargs)
        self.split_calls += 1
        if self.parts is not None:
            proj_in, proj_out = self.parts
            if torch.is_grad_enabled() or rows.device.type != "cpu" or not _tracking():
                out = torch.ops.lightcache.chunked_ffn(
                    rows, proj_in.weight, proj_in.bias, proj_out.weight, proj_out.bias, chunk
                )
            else:  # the op's CPU kernel itself, called directly so the CPU tracker sees its buffers
                from lightcache.reference import chunked_ffn

                out = chunked_ffn(rows, proj_in.weight, proj_in.bias, proj_out.weight, proj_out.bias, chunk)
            return out.reshape(*hidden_states.shape[:-1], out.shape[-1])
        first = self.fn_ref.original_forward(rows[:chunk], *args, **kwargs)
        out = first.new_empty((rows.shape[0], first.shape[-1]))
        out[:chunk] = first
        del first
        for start in range(chunk, rows.shape[0], chunk):
            out[start : start + chunk] = self.fn_ref.original_forward(rows[start : start + chunk], *args, **kwargs)
        return out.reshape(*hidden_states.shape[:-1], out.shape[-1])


def _hidden_width(ff: nn.Module) -> int:
    """Width of a FeedForward's widest row: its first projection's output (GEGLU: twice the inner
    width, the gate included)."""
    proj = getattr(ff.net[0], "proj", None)
    if isinstance(proj, nn.Linear):
        return proj.out_features
    return max(m.out_features for m in ff.modules() if isinstance(m, nn.Linear))


class AttentionChunkHook(chunk_hook_base()):
    """Around a block: its scaled-dot-product attention calls run over query chunks."""

    def __init__(self, spec: ChunkSpec):
        super().__init__()
        self.spec = spec
        self.split_calls = 0

    def rows_for(self, query, key):
        return self.spec.rows(sdpa_row_bytes(query, key), "one query row of attention scores (heads x keys)")

    def new_forward(self, module, *args, **kwargs):
        mode = QueryChunkedSDPA(self.rows_for)
        with mode:
            out = self.fn_ref.original_forward(*args, **kwargs)
        self.split_calls += mode.calls
        return out


def _tracking() -> bool:
    from lightcache.memory.meter import tracking

    return tracking()


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
    mine = HookSet()  # what this call added (undone alone on failure)
    try:
        for module, hook, name in plan:
            # DIT_HOOK sits on the block's own forward: it runs it once per piece, which the hooks
            # above (block caches, CP) must not see
            mine.register(module, hook, name, position=(lambda reg: 0) if name == DIT_HOOK else None)
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
