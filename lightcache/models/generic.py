"""The generic adapter: a DiT nobody registered, described from its own structure.

For a denoiser class with no registry entry, :func:`generic_adapter` reads the model and its blocks
(their classes and the source of their ``forward``; nothing is run) and builds a
:class:`GenericAdapter`, or refuses (:class:`GenericAdapterRefusal`, a ValueError) naming every
candidate it looked at and why it was rejected. The registry's lookups fall back to it
(:func:`lightcache.models.registry.family_for`), so ``lightcache.enable`` accepts such a model with
EasyCache and PreciseCache, warning once per model (:class:`GenericAdapterWarning`) that the
adapter is generic and how to register a proper one.

What is inferred, and how:

- Block lists: the model's direct ``nn.ModuleList`` children whose elements are all one class with
  a ``forward`` that takes ``hidden_states`` and returns named inputs of its own: one tensor
  (``return hidden_states``: single stream) or a tuple of them (``return hidden_states,
  encoder_hidden_states`` -- or the other order, as some diffusers blocks return: the output
  streams are read from the return statement, so each output position updates the input of that
  name). Several lists run in the order the model's ``forward`` first uses them (dual-stream, then
  single-stream blocks); lists used together in one loop (interleaved blocks) are refused, since
  the engine numbers blocks list by list. At the first block-level call of each block class the
  output shapes are checked against the named inputs' (a cheap check of the return order):
  a mismatch raises instead of caching the wrong stream. Block lists that update different
  numbers of streams (dual-stream blocks, then blocks returning hidden_states alone) run
  EasyCache and step-level PreciseCache; block-level caching (PreciseCache's ``block_ratio``)
  raises at its first block.
- The latent: the ``forward``'s first parameter; its layout from the sizes ``forward`` unpacks from
  ``<latent>.shape`` or ``.size()`` (``batch, channels, frames, height, width`` -> channels first, as
  (B, C, T, H, W); ``batch, frames, channels, ...`` -> frames first, as CogVideoX); patch sizes
  from the config (``patch_size``: an int or a (t, h, w) sequence, ``patch_size_t``). When the
  layout is not found it is taken as channels first and PreciseCache's trial signal is refused
  (its ``signal="input"`` reads only the latent's last two dimensions as (H, W)).
- The trial forward (PreciseCache's default signal) replaces only the latent, and resamples
  per-token or per-frame timesteps ((B, L) over the token grid, (B, T) over its frames); it is refused at enable when the ``forward``
  takes a size-dependent argument the adapter cannot recompute (a name with rotary, rope, freqs,
  pos, coords, grid, indices, num_frames, height, width or fps), when the config says positional
  embeddings are learned for one size, or without patch sizes.
- Steps and branches come from the pipeline (its scheduler and diffusers' ``cache_context``), as
  for every family; the timestep argument (for a denoiser enabled alone) is the ``forward``'s
  ``timestep``/``timesteps``/``t`` parameter.

Not covered: video UNets (DeepCache: every video UNet is registered), chunk specs (blocks without a
spec still run with query-chunked attention and chunked FFNs under ``MemoryPlan(chunk_size=...)``)
and sliced decode of an unregistered VAE.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import textwrap
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from lightcache.models.adapter import ModelAdapter, _bind
from lightcache.models.layout import CallArguments, Grid, LatentLayout, resample_tokens

_REGISTER_HINT = (
    "to register a proper adapter (its latent layout, the arguments a pooled trial call needs, a "
    "feature-chunk spec, its VAE's sliced decode), follow 'How to add a family' in lightcache.models "
    "(lightcache/models/__init__.py) and call lightcache.models.register_family(ModelFamily(adapter="
    "ModelAdapter(...)))"
)
# forward parameters whose value depends on the latent's size: a generic trial call cannot remake them
_SIZE_DEPENDENT = re.compile(r"rotary|rope|freqs|pos|coords|grid|indices|num_frames|height|width|fps", re.I)
_TIMESTEP_NAMES = ("timestep", "timesteps", "t")


class GenericAdapterWarning(UserWarning):
    """A denoiser runs on the generic adapter (inferred from its structure, not registered)."""


class GenericAdapterRefusal(ValueError):
    """The generic adapter does not apply: ``detail`` says what was found and why each candidate
    block list was rejected."""

    def __init__(self, model_class: str, detail: str):
        super().__init__(f"the generic adapter does not apply to {model_class}: {detail}")
        self.detail = detail


@dataclass(frozen=True)
class Candidate:
    """One ``nn.ModuleList`` child of the model, as the generic adapter judged it."""

    name: str
    block_class: Optional[str]
    outputs: Optional[Tuple[str, ...]]  # the inputs the block's output updates, in output order
    reason: Optional[str]  # why it was rejected (None: accepted)

    def describe(self) -> str:
        if self.reason is None:
            return f"{self.name} ({self.block_class} -> {', '.join(self.outputs)})"
        return f"{self.name}: {self.reason}"


# -------------------------------------------------------------------------------------------------
# reading source
# -------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _forward_tree(cls) -> Optional[ast.FunctionDef]:
    """The parsed ``forward`` of ``cls`` (None where its source cannot be read)."""
    try:
        src = textwrap.dedent(inspect.getsource(cls.forward))
        node = ast.parse(src).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return None
    return node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None


def _own_nodes(fn: ast.AST):
    """The nodes of a function body, not descending into nested functions, lambdas or classes."""
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))


def _parameters(cls) -> List[str]:
    params = list(inspect.signature(cls.forward).parameters.values())
    return [p.name for p in params[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _returned_names(cls) -> Tuple[Optional[Tuple[str, ...]], Optional[str]]:
    """(the names every ``return`` of ``cls.forward`` returns, None) or (None, why not)."""
    fn = _forward_tree(cls)
    if fn is None:
        return None, "the source of its forward cannot be read"
    found = set()
    for node in _own_nodes(fn):
        if not isinstance(node, ast.Return):
            continue
        value = node.value
        if isinstance(value, ast.Name):
            found.add((value.id,))
        elif isinstance(value, ast.Tuple) and value.elts and all(isinstance(e, ast.Name) for e in value.elts):
            found.add(tuple(e.id for e in value.elts))
        else:
            text = ast.unparse(value) if value is not None else "None"
            return None, f"its forward returns an expression ({text[:50]}), not named inputs"
    if not found:
        return None, "its forward has no return statement"
    if len(found) > 1:
        shown = " / ".join("(" + ", ".join(n) + ")" for n in sorted(found))
        return None, f"its forward's return statements differ ({shown})"
    return found.pop(), None


def _judge(name: str, module: nn.Module) -> Candidate:
    if len(module) == 0:
        return Candidate(name, None, None, "empty")
    classes = sorted({type(m).__name__ for m in module})
    if len(classes) > 1:
        return Candidate(name, None, None, f"its elements are of different classes ({', '.join(classes)})")
    cls = type(module[0])
    params = _parameters(cls)
    if "hidden_states" not in params:
        return Candidate(name, cls.__name__, None,
                         f"{cls.__name__}.forward takes no hidden_states (parameters: {', '.join(params) or 'none'})")
    names, why = _returned_names(cls)
    if names is None:
        return Candidate(name, cls.__name__, None, f"{cls.__name__}: {why}")
    strangers = [n for n in names if n not in params]
    if strangers:
        return Candidate(name, cls.__name__, None,
                         f"{cls.__name__}.forward returns {', '.join(strangers)}, which is not one of its inputs")
    if "hidden_states" not in names or len(set(names)) != len(names):
        return Candidate(name, cls.__name__, None,
                         f"{cls.__name__}.forward returns ({', '.join(names)}), not hidden_states once")
    return Candidate(name, cls.__name__, names, None)


def _first_uses(model_cls, names: Sequence[str]) -> Tuple[Dict[str, Tuple[int, int]], List[Tuple[str, str]]]:
    """({list name: (line, column) of its first ``self.<name>`` in the model's forward}, pairs of
    lists that one loop runs together)."""
    fn = _forward_tree(model_cls)
    if fn is None:
        return {}, []
    uses: Dict[str, Tuple[int, int]] = {}
    for node in _own_nodes(fn):
        if (isinstance(node, ast.Attribute) and node.attr in names and isinstance(node.value, ast.Name)
                and node.value.id == "self"):
            pos = (node.lineno, node.col_offset)
            if node.attr not in uses or pos < uses[node.attr]:
                uses[node.attr] = pos
    together = []
    for node in _own_nodes(fn):
        if isinstance(node, (ast.For, ast.AsyncFor)):
            in_iter = _self_attrs(node.iter, names)
            in_body = set().union(*(_self_attrs(b, names) for b in node.body)) if node.body else set()
            for a in sorted(in_iter):
                for b in sorted((in_iter | in_body) - {a}):
                    pair = tuple(sorted((a, b)))
                    if pair not in together:
                        together.append(pair)
    return uses, together


def _self_attrs(node: ast.AST, names: Sequence[str]) -> set:
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and n.attr in names
            and isinstance(n.value, ast.Name) and n.value.id == "self"}


def _shape_names(model_cls, sample_arg: str) -> Optional[Tuple[str, ...]]:
    """The names the model's forward unpacks ``<sample_arg>.shape`` into (first such assignment)."""
    fn = _forward_tree(model_cls)
    if fn is None:
        return None
    best = None
    for node in _own_nodes(fn):
        value = node.value if isinstance(node, ast.Assign) else None
        if isinstance(value, ast.Call) and not value.args and not value.keywords:  # x.size()
            value = value.func if isinstance(value.func, ast.Attribute) and value.func.attr == "size" else None
        if (value is not None and len(node.targets) == 1 and isinstance(node.targets[0], ast.Tuple)
                and isinstance(value, ast.Attribute) and value.attr in ("shape", "size")
                and isinstance(value.value, ast.Name) and value.value.id == sample_arg
                and all(isinstance(e, ast.Name) for e in node.targets[0].elts)):
            if best is None or node.lineno < best[0]:
                best = (node.lineno, tuple(e.id for e in node.targets[0].elts))
    return None if best is None else best[1]


def _axis_kind(name: str) -> Optional[str]:
    low = name.lower()
    if "frame" in low or "length" in low or low in ("t", "f"):
        return "T"
    if "chan" in low or low == "c":
        return "C"
    return None


def _frames_first(names: Optional[Tuple[str, ...]]) -> Optional[bool]:
    """True for (B, F, C, H, W), False for (B, C, F, H, W), None when the names do not say."""
    if names is None or len(names) != 5:
        return None
    k1, k2 = _axis_kind(names[1]), _axis_kind(names[2])  # "_" (unnamed) says nothing
    if (k1 == "C" or k2 == "T") and k1 != "T" and k2 != "C":
        return False
    if (k1 == "T" or k2 == "C") and k1 != "C" and k2 != "T":
        return True
    return None


def _patch_sizes(model) -> Optional[Grid]:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "get"):
        return None
    p, p_t = cfg.get("patch_size"), cfg.get("patch_size_t")
    if p is None:
        return None
    try:
        if isinstance(p, (list, tuple)):
            sizes = [int(v) for v in p]
            if len(sizes) == 3:
                return tuple(sizes)
            if len(sizes) in (1, 2):
                return (int(p_t or 1), sizes[0], sizes[-1])
            return None
        return (int(p_t or 1), int(p), int(p))
    except (TypeError, ValueError):
        return None


# -------------------------------------------------------------------------------------------------
# the layout and the adapter
# -------------------------------------------------------------------------------------------------


class GenericLayout(LatentLayout):
    """A 5-D latent, channels first (B, C, T, H, W) or frames first (B, F, C, H, W), as inferred;
    ``refusal`` says why a pooled trial call is not possible (None: it is)."""

    def __init__(self, frames_first: Optional[bool], patch: Optional[Grid], refusal: Optional[str]):
        self.frames_first = frames_first
        self.patch = patch
        self.refusal = refusal
        self.channel_dim = 2 if frames_first else 1
        self.tensor_format = None if frames_first is None else ("BFCHW" if frames_first else "BCFHW")

    def __repr__(self):
        return f"GenericLayout({self.describe()})"

    def describe(self) -> str:
        kind = {None: "(B, C, T, H, W) assumed", False: "(B, C, T, H, W)", True: "(B, F, C, H, W)"}[self.frames_first]
        return kind + (f", patch {self.patch}" if self.patch is not None else "")

    def to_bcthw(self, x, call_args=(), call_kwargs=None, grid=None):
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"the generic adapter reads the latent as a 5-D video, got {shape}: register an "
                             "adapter with the model's latent layout (lightcache.models)")
        return x.permute(0, 2, 1, 3, 4) if self.frames_first else x

    def from_bcthw(self, video):
        return video.permute(0, 2, 1, 3, 4) if self.frames_first else video

    def patch_multiple(self, model):
        return self.patch if self.patch is not None else (1, 1, 1)

    def trial_refusal(self, model):
        return self.refusal

    def resize_arguments(self, model, call: CallArguments, grid, pooled):
        t = call.get("timestep")
        if not (isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[1] > 1 and self.patch is not None):
            return  # one timestep per sample: nothing depends on the size
        tokens = tuple(g // q for g, q in zip(grid, self.patch))
        small = tuple(g // q for g, q in zip(pooled, self.patch))
        if t.shape[1] == tokens[0] * tokens[1] * tokens[2]:  # one per token (Wan 2.2 TI2V's)
            call.set("timestep", resample_tokens(t, tokens, small))
        elif t.shape[1] == tokens[0]:  # one per latent frame (diffusion forcing)
            call.set("timestep", resample_tokens(t, (tokens[0], 1, 1), (small[0], 1, 1)))
        else:
            raise ValueError(f"the generic adapter cannot resize a timestep of shape {tuple(t.shape)} to a pooled "
                             f"latent (it is neither one per token nor one per frame of the {tokens} token grid)")


@dataclass(frozen=True)
class GenericAdapter(ModelAdapter):
    """A :class:`ModelAdapter` whose block lists may differ in their streams: ``streams`` maps each
    block class name to the inputs its output updates, in output order (``block_outputs`` holds
    the longest of them, for the policies' per-stream loops). Built by :func:`generic_adapter`."""

    streams: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    timestep_arg: Optional[str] = "timestep"
    candidates: Tuple[Candidate, ...] = ()
    # the cheap check of each block class's output order (see the module docstring): block class
    # name -> input shapes last bound, and the classes already checked
    _pending: dict = field(default_factory=dict, compare=False, repr=False)
    _checked: set = field(default_factory=set, compare=False, repr=False)
    _by_type: dict = field(default_factory=dict, compare=False, repr=False)  # block type -> outputs

    def outputs_of(self, block: nn.Module) -> Tuple[str, ...]:
        """The inputs ``block``'s output updates, in output order (by its class, or a base's)."""
        cls = type(block)
        found = self._by_type.get(cls)
        if found is None:
            table = dict(self.streams)
            found = next((table[c.__name__] for c in cls.__mro__ if c.__name__ in table), self.block_outputs)
            self._by_type[cls] = found
        return found

    def block_streams(self, block, args, kwargs):
        names = self.outputs_of(block)
        if len(names) != len(self.block_outputs):
            # PreciseCache's BlockCache stacks every block's per-stream scores into one table
            raise ValueError(
                f"{self.family}: its block lists update different numbers of streams "
                f"({'; '.join(f'{c}: {len(o)}' for c, o in self.streams)}), which block-level caching "
                "(PreciseCache with block_ratio) does not support on the generic adapter; use "
                "PreciseCache(mode='turbo') or EasyCache, or " + _REGISTER_HINT)
        bound = _bind(block, args, kwargs)
        try:
            ins = tuple(bound[n] for n in names)
        except KeyError as exc:
            raise ValueError(f"{self.family}: block {type(block).__name__} was called without its input {exc}") from None
        key = type(block).__name__
        if key not in self._checked:
            self._pending["last"] = (key, names, tuple(getattr(t, "shape", None) for t in ins))
        return ins

    def output_streams(self, out):
        outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        pending = self._pending.pop("last", None)
        if pending is not None:
            key, names, shapes = pending
            got = tuple(getattr(t, "shape", None) for t in outs)
            if got != shapes:
                raise RuntimeError(
                    f"{self.family}: block {key} returned streams of shapes {[tuple(s) for s in got if s is not None]} "
                    f"but its inputs {', '.join(names)} (what its return statement names) have shapes "
                    f"{[tuple(s) for s in shapes if s is not None]}: the generic adapter misread the block's outputs; "
                    + _REGISTER_HINT
                )
            self._checked.add(key)
        return outs

    def pack_streams(self, streams):
        return streams[0] if len(streams) == 1 else tuple(streams)

    def timestep_value(self, args, kwargs):
        if self.timestep_arg is None:
            raise ValueError(f"{self.family}: the denoiser's forward has no timestep parameter; enable lightcache on "
                             "the pipeline (its scheduler gives the steps)")
        if self.timestep_arg != "timestep" and self.timestep_arg in kwargs:
            kwargs = dict(kwargs, timestep=kwargs[self.timestep_arg])
        return super().timestep_value(args, kwargs)

    def describe(self) -> str:
        lists = "; ".join(c.describe() for c in self.candidates if c.reason is None)
        ignored = [c.describe() for c in self.candidates if c.reason is not None]
        text = f"blocks {lists}; latent '{self.sample_arg}' {self.layout.describe()}"
        if self.layout.refusal is not None:
            text += f"; no pooled trial forward ({self.layout.refusal})"
        if ignored:
            text += f"; not used as blocks: {'; '.join(ignored)}"
        return text


_CACHE: "weakref.WeakKeyDictionary[nn.Module, GenericAdapter]" = weakref.WeakKeyDictionary()


def generic_adapter(model: nn.Module, warn: bool = True) -> GenericAdapter:
    """The generic adapter of ``model`` (one per model, built on first use; ``warn``: say once, as
    a :class:`GenericAdapterWarning`, that it is generic), or :class:`GenericAdapterRefusal`."""
    cached = _CACHE.get(model)
    if cached is not None:
        return cached
    adapter = _build(model)
    _CACHE[model] = adapter
    if warn:
        warnings.warn(
            f"lightcache: {type(model).__name__} has no registered adapter; using the generic adapter, inferred "
            f"from its structure ({adapter.describe()}). It caches what its blocks return but knows nothing "
            f"model-specific: check its output against an uncached run; {_REGISTER_HINT}.",
            GenericAdapterWarning,
            stacklevel=_outside_lightcache(),
        )
    return adapter


def _outside_lightcache() -> int:
    """The warnings stack level of the first caller outside the lightcache package (the user's
    ``lightcache.enable`` line), counted from :func:`generic_adapter`."""
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(2), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(root + os.sep):
        frame, level = frame.f_back, level + 1
    return level


# denoisers whose structure the generic adapter would accept but whose outputs it cannot reuse:
# refused at enable() rather than failing mid-call (when their registered family is switched off)
_KNOWN_UNSUPPORTED = {
    "LTX2VideoTransformer3DModel": "its forward returns two predictions (video and audio), which the generic "
                                   "adapter cannot tell from the structure; the registered 'ltx2' family declares "
                                   "the audio stream",
}


def _build(model: nn.Module) -> GenericAdapter:
    cls = type(model)
    name = cls.__name__
    if not isinstance(model, nn.Module):
        raise GenericAdapterRefusal(name, "it is not a torch module")
    for base in cls.__mro__:
        if base.__name__ in _KNOWN_UNSUPPORTED:
            raise GenericAdapterRefusal(name, _KNOWN_UNSUPPORTED[base.__name__])
    if isinstance(getattr(model, "down_blocks", None), nn.ModuleList) and isinstance(getattr(model, "up_blocks", None), nn.ModuleList):
        # a UNet's up blocks change resolution and take skip connections: no residual of theirs is a
        # feature to reuse, and DeepCache needs the family's skip structure
        raise GenericAdapterRefusal(name, "it is a UNet (down_blocks and up_blocks); the generic adapter covers "
                                          "DiTs only: register a UNet adapter (ModelAdapter(unet=True, "
                                          "block_lists=lightcache.models.UNET_BLOCK_LISTS)) for DeepCache")
    candidates = [_judge(n, m) for n, m in model.named_children() if isinstance(m, nn.ModuleList)]
    accepted = [c.name for c in candidates if c.reason is None]
    uses, together = _first_uses(cls, accepted)
    judged = []
    for c in candidates:
        if c.reason is None and c.name not in uses:
            c = Candidate(c.name, c.block_class, c.outputs, f"{name}.forward does not use self.{c.name}")
        judged.append(c)
    candidates = judged
    accepted = sorted((c for c in candidates if c.reason is None), key=lambda c: uses[c.name])
    if not accepted:
        found = "; ".join(c.describe() for c in candidates) if candidates else "it has no nn.ModuleList attribute"
        raise GenericAdapterRefusal(
            name, f"no block list found (a ModuleList of one block class whose forward takes hidden_states and "
                  f"returns named inputs); candidates: {found}")
    names = [c.name for c in accepted]
    tangled = [p for p in together if p[0] in names and p[1] in names]
    if tangled:
        pairs = ", ".join(f"{a} and {b}" for a, b in tangled)
        raise GenericAdapterRefusal(name, f"{name}.forward runs the blocks of {pairs} in one loop (interleaved); the "
                                          "generic adapter numbers blocks list by list")
    classes: Dict[str, Tuple[str, ...]] = {}
    for c in accepted:
        if classes.get(c.block_class, c.outputs) != c.outputs:
            raise GenericAdapterRefusal(name, f"block class {c.block_class} appears with different outputs")
        classes[c.block_class] = c.outputs
    params = _parameters(cls)
    if not params:
        raise GenericAdapterRefusal(name, f"{name}.forward takes no latent input")
    sample_arg = params[0]
    frames_first = _frames_first(_shape_names(cls, sample_arg))
    patch = _patch_sizes(model)
    layout = GenericLayout(frames_first, patch, _trial_refusal(model, params, frames_first, patch, sample_arg))
    longest = max((c.outputs for c in accepted), key=len)
    return GenericAdapter(
        family=f"generic:{name}",
        model_classes=(name,),
        block_lists=tuple(names),
        block_outputs=longest,
        sample_arg=sample_arg,
        layout=layout,
        streams=tuple(classes.items()),
        timestep_arg=next((n for n in _TIMESTEP_NAMES if n in params), None),
        candidates=tuple(candidates),
    )


def _trial_refusal(model, params, frames_first, patch, sample_arg) -> Optional[str]:
    name = type(model).__name__
    if frames_first is None:
        return (f"the generic adapter could not infer {name}'s latent layout (its forward does not unpack "
                f"{sample_arg}.shape into batch, channels, frames, height, width)")
    if patch is None:
        return f"the generic adapter found no patch_size in {name}'s config (a pooled latent must be a multiple of it)"
    sized = [p for p in params[1:] if _SIZE_DEPENDENT.search(p)]
    if sized:
        return (f"{name}.forward takes {', '.join(sized)}, which may depend on the latent's size, and the generic "
                "adapter cannot remake it for a pooled latent")
    cfg = getattr(model, "config", {}) or {}
    learned = [k for k, v in cfg.items() if "learned_pos" in k and v]
    if learned:
        return f"{name}'s config sets {', '.join(learned)}: positional embeddings learned for one size"
    return None
