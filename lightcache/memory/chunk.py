"""Feature chunk (DESIGN.md §4.2), first part: token-wise feed-forward layers over row chunks.

The feed-forward layers of every adapted model (diffusers ``FeedForward``: the DiT blocks' FFN, and
the FFNs of the UNets' spatial and temporal transformers) act on each token independently, so
running them over chunks of rows is exact while the widest intermediate, the (rows, 4·width)
hidden state, exists for one chunk at a time. All leading dimensions are flattened into rows, so
the same chunk bounds a DiT's (B, L, D) sequence and a UNet's (B·H·W, T, C) temporal tokens.
Linear → GELU(tanh) → Linear layers go through the fused ``lightcache::chunked_ffn`` op; other
activations (GEGLU in the UNets) run the layer itself on each chunk into one preallocated output.

Not chunked yet: attention (queries), norms and modulation — their widest tensors are the width
of the hidden state itself.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

CHUNK_HOOK = "lightcache.chunk"


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


def _hook_base():
    from diffusers.hooks.hooks import ModelHook

    return ModelHook


class FeedForwardChunkHook(_hook_base()):
    def __init__(self, chunk_size: int, tracker_aware: bool = True):
        super().__init__()
        self.chunk_size = chunk_size
        self.parts = None

    def initialize_hook(self, module):
        if module.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in module.modules()):
            raise ValueError(
                "MemoryPlan.chunk_size: cannot chunk a feed-forward layer with active dropout (model in training "
                "mode); call .eval() first"
            )
        self.parts = _fused_parts(module)
        return module

    def new_forward(self, module, hidden_states, *args, **kwargs):
        width = hidden_states.shape[-1]
        rows = hidden_states.reshape(-1, width)
        if rows.shape[0] <= self.chunk_size:
            return self.fn_ref.original_forward(hidden_states, *args, **kwargs)
        if self.parts is not None:
            proj_in, proj_out = self.parts
            if torch.is_grad_enabled() or rows.device.type != "cpu" or not _tracking():
                out = torch.ops.lightcache.chunked_ffn(
                    rows, proj_in.weight, proj_in.bias, proj_out.weight, proj_out.bias, self.chunk_size
                )
            else:  # the op's CPU kernel itself, called directly so the CPU tracker sees its buffers
                from lightcache.reference import chunked_ffn

                out = chunked_ffn(rows, proj_in.weight, proj_in.bias, proj_out.weight, proj_out.bias, self.chunk_size)
            return out.reshape(*hidden_states.shape[:-1], out.shape[-1])
        first = self.fn_ref.original_forward(rows[: self.chunk_size], *args, **kwargs)
        out = first.new_empty((rows.shape[0], first.shape[-1]))
        out[: self.chunk_size] = first
        del first
        for start in range(self.chunk_size, rows.shape[0], self.chunk_size):
            out[start : start + self.chunk_size] = self.fn_ref.original_forward(
                rows[start : start + self.chunk_size], *args, **kwargs
            )
        return out.reshape(*hidden_states.shape[:-1], out.shape[-1])


def _tracking() -> bool:
    from lightcache.memory.meter import tracking

    return tracking()


def install_chunking(blocks: List[nn.Module], chunk_size: int) -> List[nn.Module]:
    """Register the chunk hook on every feed-forward layer inside ``blocks``; returns them."""
    from diffusers.hooks.hooks import HookRegistry

    done = []
    try:
        for ff in _feedforwards(blocks):
            HookRegistry.check_if_exists_or_initialize(ff).register_hook(FeedForwardChunkHook(chunk_size), CHUNK_HOOK)
            done.append(ff)
    except BaseException:
        remove_chunking(done)
        raise
    return done


def remove_chunking(modules: List[nn.Module]) -> None:
    for ff in modules:
        reg = getattr(ff, "_diffusers_hook", None)
        if reg is not None and CHUNK_HOOK in reg.hooks:
            reg.remove_hook(CHUNK_HOOK, recurse=False)
