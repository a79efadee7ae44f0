"""The peers' caches (diffusers 0.42's cache hooks), computed from the shapes of one simulated call.

The peers' decisions read values too and their hooks cannot run on meta tensors, so their
worst-case residency is computed analytically (stated in the output): the tensors each keeps per
cache context (one per CFG branch), sized from the block outputs recorded during the simulated
uncached call, all held through the forward and added to the uncached denoise peak:

* FirstBlockCache: the first block's output and its hidden-state residual, and the last block's
  residuals (hidden and, for dual-stream blocks, encoder streams);
* MagCache: the first block's hidden-state input (kept as ``head_block_input``) and the last
  block's hidden-state residual;
* TaylorSeer (order 1): two factors (value and first difference) of the output of every
  attention and feed-forward module of every block (lightcache.bench.TAYLORSEER_MODULES), in the
  model's dtype.

FasterCache is not computed: what it keeps depends on its per-attention-type skip settings
(spatial/temporal/cross) and on a batched CFG call, which only Latte-style pipelines make.
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict

import torch
from torch.utils._pytree import tree_leaves

PEERS = ("diffusers-fbc", "diffusers-magcache", "diffusers-taylorseer")


def _bytes(x) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(x) if isinstance(t, torch.Tensor))


def _first_tensor(x):
    return next((t for t in tree_leaves(x) if isinstance(t, torch.Tensor)), None)


@contextlib.contextmanager
def record(pipe):
    """Record, per denoiser call, the block and module output sizes the peers' caches are made of;
    yields a dict filled when the block exits."""
    from lightcache.adapters import adapter_for
    from lightcache.bench import TAYLORSEER_MODULES

    den = getattr(pipe, "transformer", None)
    rec = dict(calls=0, first_out=0, first_hidden_in=0, first_hidden_out=0, last_out=0, last_hidden=0, taylor=0)
    if den is None:
        yield rec
        return
    blocks = adapter_for(den).blocks(den)
    seen = defaultdict(int)
    handles = []

    def call_hook(m, a, k):
        rec["calls"] += 1

    def first(m, args, kwargs, out):
        if rec["calls"] == 1:
            h = kwargs.get("hidden_states", args[0] if args else None)
            rec["first_hidden_in"] = _bytes(h)
            rec["first_out"] = _bytes(out)
            rec["first_hidden_out"] = _bytes(_first_tensor(out))

    def last(m, args, kwargs, out):
        if rec["calls"] == 1:
            rec["last_out"] = _bytes(out)
            rec["last_hidden"] = _bytes(_first_tensor(out))

    pattern = re.compile(TAYLORSEER_MODULES[0])

    def taylor(name):
        def hook(m, a, out):
            if rec["calls"] == 1 and not seen[name]:
                seen[name] = 1
                rec["taylor"] += 2 * _bytes(out)
        return hook

    handles.append(den.register_forward_pre_hook(call_hook, with_kwargs=True))
    handles.append(blocks[0].register_forward_hook(first, with_kwargs=True))
    handles.append(blocks[-1].register_forward_hook(last, with_kwargs=True))
    for name, mod in den.named_modules():
        if pattern.fullmatch(name):
            handles.append(mod.register_forward_hook(taylor(name)))
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


def residency(rec: dict, branches: int) -> dict:
    """Bytes each peer keeps on the device (all branches), from :func:`record`'s sizes."""
    return {
        "diffusers-fbc": branches * (rec["first_out"] + rec["first_hidden_out"] + rec["last_out"]),
        "diffusers-magcache": branches * (rec["first_hidden_in"] + rec["last_hidden"]),
        "diffusers-taylorseer": branches * rec["taylor"],
    }
