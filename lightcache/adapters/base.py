"""Model adapters: where a diffusers denoiser keeps its blocks and what their inputs/outputs are.

Adding a model family is one small file: subclass :class:`ModelAdapter`, name the diffusers classes
it covers, say where the block lists are, and register it with :func:`register_adapter`.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple, Type

import torch
from torch import nn

_REGISTRY: Dict[str, Type["ModelAdapter"]] = {}


@dataclass(frozen=True)
class ModelAdapter:
    """Describes one family of denoisers.

    model_classes: diffusers class names this adapter covers.
    block_lists: attribute paths of the ModuleLists of blocks, in execution order.
    block_outputs: for the blocks, which inputs their output tuple updates, in order (a block that
        returns one tensor updates ("hidden_states",)).
    sample_arg: name of the latent input of the denoiser's forward (its first positional arg).
    unet: True for video UNets (DeepCache), False for DiTs.
    """

    family: str
    model_classes: Tuple[str, ...]
    block_lists: Tuple[str, ...] = ("blocks",)
    block_outputs: Tuple[str, ...] = ("hidden_states",)
    sample_arg: str = "hidden_states"
    unet: bool = False

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


def _bind(block: nn.Module, args: Sequence, kwargs: dict) -> dict:
    sig = _signature(type(block))
    bound = sig.bind_partial(*args, **kwargs)
    return dict(bound.arguments)


@functools.lru_cache(maxsize=None)
def _signature(cls):
    return inspect.signature(cls.forward).replace(
        parameters=list(inspect.signature(cls.forward).parameters.values())[1:]
    )


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Register an adapter for its ``model_classes`` (later registrations override earlier ones)."""
    if not isinstance(adapter, ModelAdapter):
        raise TypeError(f"adapter must be a ModelAdapter, got {type(adapter).__name__}")
    for name in adapter.model_classes:
        _REGISTRY[name] = adapter
    return adapter


def supported_classes() -> List[str]:
    return sorted(_REGISTRY)


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter of ``model``'s class (or of a base class), or a clear error."""
    for cls in type(model).__mro__:
        if cls.__name__ in _REGISTRY:
            return _REGISTRY[cls.__name__]
    raise ValueError(
        f"lightcache has no adapter for {type(model).__name__}. Supported denoisers: "
        f"{', '.join(supported_classes())}. To add one, describe its blocks with "
        "lightcache.adapters.ModelAdapter(...) and call lightcache.adapters.register_adapter(adapter)."
    )
