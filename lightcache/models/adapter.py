"""ModelAdapter: where a diffusers denoiser keeps its blocks, what their inputs/outputs are, and how
its latent relates to a video (its :class:`~lightcache.models.layout.LatentLayout`).

An adapter is the denoiser part of a family's registry entry (:class:`lightcache.models.ModelFamily`);
the engine and the policies see a family only through it.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import torch
from torch import nn

from lightcache.models.layout import CHANNELS_FIRST, LatentLayout

# the "blocks" of a video UNet for the engine: its down blocks, mid block and up blocks in execution
# order (DeepCache's skip branch b pairs down_blocks[b] with up_blocks[-(b + 1)])
UNET_BLOCK_LISTS = ("down_blocks", "mid_block", "up_blocks")


@dataclass(frozen=True)
class ModelAdapter:
    """Describes one family of denoisers.

    model_classes: diffusers class names this adapter covers (a subclass of one is covered too:
        lookups walk the model's class MRO).
    block_lists: attribute paths of the ModuleLists of blocks, in execution order.
    block_outputs: for the blocks, which inputs their output tuple updates, in order (a block that
        returns one tensor updates ("hidden_states",)).
    sample_arg: name of the latent input of the denoiser's forward (its first positional arg).
    unet: True for video UNets (DeepCache), False for DiTs.
    layout: how the latent input/output maps to the canonical (B, C, T, H, W) video, and how a
        trial call on a pooled latent is made (lightcache.models.layout).
    extra_outputs: further output streams of the denoiser beyond the sample, as (input argument,
        output field) pairs: the denoiser's forward takes the stream's latent as that argument and
        returns its prediction as that field of its output class (with ``return_dict=False``: the
        tuple's next element, in this order). LTX-2: (("audio_hidden_states", "audio_sample"),).
        A call that is not computed makes each of them the way the policy reuses the sample
        (``CachePolicy.extra_stream_reuse``); the decisions are made on the sample alone.
    """

    family: str
    model_classes: Tuple[str, ...]
    block_lists: Tuple[str, ...] = ("blocks",)
    block_outputs: Tuple[str, ...] = ("hidden_states",)
    sample_arg: str = "hidden_states"
    unet: bool = False
    layout: LatentLayout = field(default=CHANNELS_FIRST)
    extra_outputs: Tuple[Tuple[str, str], ...] = ()

    def blocks(self, model: nn.Module) -> List[nn.Module]:
        out: List[nn.Module] = []
        for path in self.block_lists:
            mod = model
            for part in path.split("."):
                mod = getattr(mod, part, None)
                if mod is None:
                    break
            if isinstance(mod, nn.ModuleList):
                out.extend(list(mod))
            elif isinstance(mod, nn.Module):  # a single block (a UNet's mid_block)
                out.append(mod)
        return out

    def sample(self, args: Sequence, kwargs: dict) -> torch.Tensor:
        if self.sample_arg in kwargs:
            return kwargs[self.sample_arg]
        if args:
            return args[0]
        raise ValueError(f"{self.family}: the denoiser was called without its latent input '{self.sample_arg}'")

    def timestep_value(self, args: Sequence, kwargs: dict) -> float:
        """The denoiser call's timestep as a number (its first element; a host read)."""
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if t is None:
            raise ValueError(f"{self.family}: the denoiser was called without a timestep")
        return float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) else float(t)

    def replace_sample(self, args: Sequence, kwargs: dict, sample: torch.Tensor):
        """(args, kwargs) of a denoiser call with its latent input replaced."""
        if self.sample_arg in kwargs or not args:
            kwargs = dict(kwargs)
            kwargs[self.sample_arg] = sample
            return tuple(args), kwargs
        return (sample,) + tuple(args[1:]), kwargs

    def trial_call(self, model: nn.Module, args: Sequence, kwargs: dict, pooled: torch.Tensor):
        """(args, kwargs) of a trial call of ``model`` on ``pooled`` -- a (B, C, T', H', W') video
        in the canonical layout, normally this call's latent pooled to a smaller grid -- with
        every argument that depends on the latent's size made consistent with the pooled grid
        (see the family's :class:`~lightcache.models.layout.LatentLayout`)."""
        return self.layout.trial_call(self, model, args, kwargs, pooled)

    def block_streams(self, block: nn.Module, args: Sequence, kwargs: dict) -> Tuple[torch.Tensor, ...]:
        """The block's input tensors that its output updates (named by ``block_outputs``)."""
        names = self.block_outputs
        bound = _bind(block, args, kwargs)
        try:
            return tuple(bound[n] for n in names)
        except KeyError as exc:
            raise ValueError(f"{self.family}: block {type(block).__name__} has no input named {exc}") from None

    def output_streams(self, out) -> Tuple[torch.Tensor, ...]:
        """A block's output as the tuple of streams named by ``block_outputs``."""
        if isinstance(out, torch.Tensor):
            return (out,)
        return tuple(out[: len(self.block_outputs)])

    def pack_streams(self, streams: Tuple[torch.Tensor, ...]):
        """Streams packed as the blocks return them (one tensor, or a tuple of the streams)."""
        return streams[0] if len(self.block_outputs) == 1 else tuple(streams)


    def extra_inputs(self, model: nn.Module, args: Sequence, kwargs: dict) -> Tuple[torch.Tensor, ...]:
        """The latents of the further output streams (``extra_outputs``) in a denoiser call."""
        bound = _bind(model, args, kwargs)
        missing = [name for name, _ in self.extra_outputs if not isinstance(bound.get(name), torch.Tensor)]
        if missing:
            raise ValueError(f"{self.family}: the denoiser was called without its stream input(s) {missing}")
        return tuple(bound[name] for name, _ in self.extra_outputs)

    def extra_output_values(self, out) -> Tuple[torch.Tensor, ...]:
        """The further output streams' predictions (``extra_outputs``) in a denoiser output."""
        if isinstance(out, (tuple, list)):
            return tuple(out[1 : 1 + len(self.extra_outputs)])
        return tuple(getattr(out, f) for _, f in self.extra_outputs)


def _bind(block: nn.Module, args: Sequence, kwargs: dict) -> dict:
    sig = _signature(type(block))
    bound = sig.bind_partial(*args, **kwargs)
    return dict(bound.arguments)


@functools.lru_cache(maxsize=None)
def _signature(cls):
    return inspect.signature(cls.forward).replace(
        parameters=list(inspect.signature(cls.forward).parameters.values())[1:]
    )
