"""Caching under diffusers' context parallelism: every rank of the group makes the same decision.

diffusers splits a denoiser's token sequence across ranks (``model.enable_parallelism(config=
ContextParallelConfig(...))``: Ulysses or ring attention over torch.distributed); lightcache runs on
those hooks and adds no parallelism of its own. What it must add is agreement. A caching decision
computed from one rank's shard would differ from rank to rank, and a rank that skips a block whose
attention holds a collective while another runs it hangs the job (or mixes stale and fresh shards).

Where the tensors are sharded (checked in diffusers 0.42.1 against the ``_cp_plan`` of Wan and
LTX-Video, the video families lightcache supports that have one): the *denoiser's* input latent and
its output are whole on every rank — Wan splits the tokens at ``blocks.0`` and gathers them after
``proj_out``; LTX splits at the model's entry, which lightcache's denoiser hook wraps from outside.
Inside, every block sees its rank's slice of the sequence. (Run on 2 processes: Wan, in
tests/test_context_parallel.py.) Hence:

* Step-level metrics (EasyCache's relative L1, PreciseCache's low-frequency energy) are over
  replicated tensors. Equal in exact arithmetic on every rank, but "equal up to float noise" is not
  a guarantee that a threshold test agrees, so they are reduced all the same: each rank sums over
  its own 1/W part of the replicated tensor (:meth:`ContextParallel.shard`,
  :meth:`ContextParallel.frame_shard`; no copy for contiguous tensors) and one all-reduce adds the
  parts. The result is the metric over the whole tensor, the work is split W ways, and every rank
  receives the same bits from the all-reduce (an all-reduce reduces each element once and hands
  that one result to every rank; with two ranks a + b = b + a makes it exact under any algorithm).
* Block-level metrics (BlockCache's mean|D_j|) are over sharded hidden states: each rank's partial
  sum and element count are reduced, so the ranking is the one of the unsharded model.
* Policies express their metrics as sums (numerator, denominator, element counts) and hand the
  stacked partial sums of one decision to :meth:`ContextParallel.all_reduce_sums`: ONE all-reduce of
  a few numbers per decision, folded into the host sync the decision already costs. DeepCache
  decides from the step index alone and needs none.
* Cached features are what each rank holds: EasyCache's Δ and PreciseCache's prediction are whole
  (replicated) latents, BlockCache's residuals are the rank's shards. Each rank's feature store (and
  the swap ring buffer behind it) is its own, in its own process: per-rank swapping needs nothing
  shared.

Hook order matters and :func:`lightcache.enable` arranges it: the denoiser hook sits outside
diffusers' split hooks (so it sees whole latents), the block hooks inside them (so a reused block
returns the shard the next block expects). Call ``enable_parallelism`` before ``lightcache.enable``;
the other order is detected at the first denoiser call and refused with an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

# diffusers' HookRegistry names of its context-parallel hooks ("cp_input---{module id}", ...)
CP_HOOK_PREFIXES = ("cp_input---", "cp_output---")


@dataclass(frozen=True)
class ContextParallel:
    """The context-parallel process group of one denoiser, seen from this rank."""

    group: object  # torch.distributed ProcessGroup
    rank: int  # this rank's index inside ``group``
    world_size: int

    def all_reduce_sums(self, sums: Tensor) -> Tensor:
        """``sums`` (a small tensor of this rank's partial sums) summed over the group: one
        all-reduce, out of place (the caller's tensor is left as it was)."""
        import torch.distributed as dist

        out = sums.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out

    def shard(self, t: Tensor) -> Tensor:
        """This rank's part of a tensor that is whole (replicated) on every rank, for partial sums:
        the ranks' parts partition ``t``. A view: contiguous tensors are cut flat; others along their
        largest dimension (the rule depends only on shape and strides, which all ranks share)."""
        if t.is_contiguous():
            return t.reshape(-1).tensor_split(self.world_size)[self.rank]
        dim = max(range(t.dim()), key=lambda d: t.shape[d])
        return t.tensor_split(self.world_size, dim=dim)[self.rank]

    def frame_shard(self, t: Tensor) -> Tensor:
        """This rank's frames of a replicated ``(..., H, W)`` tensor (every leading index is one
        frame, as ``lightcache.lowfreq_energy`` counts them), as ``(frames, H, W)``."""
        h, w = t.shape[-2:]
        return t.reshape(-1, h, w).tensor_split(self.world_size)[self.rank]


def of_model(model) -> Optional[ContextParallel]:
    """The context-parallel group diffusers' ``enable_parallelism`` set on ``model``, or None when
    the model is not context-parallel (or its group has one rank)."""
    config = getattr(model, "_parallel_config", None)
    cp = getattr(config, "context_parallel_config", None)
    if cp is None:
        return None
    mesh = getattr(cp, "_flattened_mesh", None)
    if mesh is None:
        raise RuntimeError(
            f"{type(model).__name__} has a context-parallel config without a device mesh; lightcache "
            "expects one set up by diffusers' model.enable_parallelism(config=ContextParallelConfig(...))"
        )
    import torch.distributed as dist

    group = mesh.get_group()
    world = dist.get_world_size(group)
    if world == 1:
        return None
    return ContextParallel(group=group, rank=dist.get_rank(group), world_size=world)


def partial_sums(means: Tensor, counts: Tensor) -> Tensor:
    """Sums from means over ``counts`` elements each (an empty part, whose mean is NaN, sums to 0)."""
    counts = counts.to(device=means.device, dtype=torch.float64)
    return torch.where(counts > 0, means.double() * counts, torch.zeros_like(counts))
