"""The values a meta-device simulation must know: :class:`ValueHints`.

A meta tensor has a shape and no values, but some pipelines read a value during the call: a
tensor's truth (``if tensor:``), an integer (a slice ``x[:, : n[0]]``), or the count of true
elements a shape depends on (``x[mask]``, ``mask.nonzero()``). The simulation answers them in two
ways, and refuses every other one (:class:`ValueRead`, which
:func:`lightcache.simulate.pipeline.run` turns into a NotImplementedError naming the line):

* **Known values.** A tensor whose elements all hold one value is known: the factories (``zeros``,
  ``ones``, ``full`` and their ``_like``/``new_`` forms: exact), and the call's inputs of
  :data:`INPUTS` (an assumption). Every op of :data:`_RULES` keeps that knowledge (a cast, a
  copy, ``cat`` of equal values, ``~``, ``== 0``, ``all``, ``sum``...), a view shares its base's,
  an op writing into a tensor drops it. A read of a known value is answered from it, a boolean
  index or ``nonzero`` counts every element or none.
* **Value points** (:data:`POINTS`): a read of an unknown value at a known line of a family's code,
  with the answer an assumption gives (from the call's arguments).

Each assumption a call relies on is recorded (``ValueHints.used``: the assumption, the line that
read it) and stated in the simulation's figures (``Figures.assumptions``) and as a warning. A CPU
run reads the real values: it agrees with the simulation where the call's values are the assumed
ones (tests/test_simulate_families.py passes all-valid masks).
"""

from __future__ import annotations

import linecache
import os
import re
import sys
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch
from torch.utils._python_dispatch import _disable_current_modes

aten = torch.ops.aten

# The value-dependent points known, per family, and what answers each:
#   mochi                    torch.nonzero(mask) (the valid prompt tokens)        INPUTS (the prompt masks)
#   hunyuan_video_framepack  x[:, : mask.sum(dim=1)[0]] (the valid prompt length)  INPUTS
#   hunyuan_video15          x[mask], x[~mask] (valid rows first)    INPUTS; the image mask: torch.zeros/ones
#                            if torch.all(image_embeds == 0)         text-to-video: torch.zeros; I2V: POINTS

# the call's tensor arguments assumed to hold one value: (name pattern, value, the assumption);
# prompt_attention_mask, negative_prompt_embeds_mask_2, ... (real prompts are padded: a shorter
# prompt drops tokens, so all valid is the largest case)
INPUTS = (
    (r"(prompt|attention)\w*mask(_\d+)?$", 1,
     "{name}: every token valid (the longest prompt: Mochi and FramePack drop the padded tokens, so it "
     "bounds every shorter prompt; HunyuanVideo 1.5 reorders them, the same shapes)"),
)


@dataclass(frozen=True)
class ValuePoint:
    """A read of an unknown value at a line of a family's code (``file``: the source file's name,
    ``code``: a fragment of the line) answered by ``answer(call)`` (the pipeline call's kwargs)
    under ``assumption``."""

    family: str
    file: str
    code: str
    answer: Callable[[dict], object]
    assumption: str


POINTS = (
    # is_t2v = torch.all(image_embeds == 0): the text-to-video pipeline passes torch.zeros (a known
    # value, answered exactly); the image-to-video one the vision encoder's output of the call's image
    ValuePoint("hunyuan_video15", "transformer_hunyuan_video15.py", "if is_t2v",
               lambda call: call.get("image") is None,
               "HunyuanVideo 1.5: an encoded image's embeddings are not all zero (image-to-video exactly "
               "when the call passes an image)"),
)


class ValueRead(Exception):
    """A value the simulation does not know, read at ``where`` (file:line: code)."""

    def __init__(self, what: str, where: str):
        super().__init__(f"{what} of a meta tensor at {where}")
        self.where = where


@dataclass(frozen=True)
class _Known:
    value: object  # a Python bool, int or float: every element's value
    dtype: torch.dtype
    why: frozenset  # the assumptions it rests on (empty: exact)


def _cast(value, dtype: torch.dtype):
    if dtype == torch.bool:
        return bool(value)
    if dtype.is_floating_point or dtype.is_complex:
        return float(value)
    return int(value)


_OWN_DIRS = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _asking_line() -> Tuple[str, str]:
    """(file name, "file:line: code") of the innermost frame outside torch and lightcache."""
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(_OWN_DIRS):
        f = f.f_back
    if f is None:
        return "", "an unknown line"
    path = f.f_code.co_filename
    code = linecache.getline(path, f.f_lineno).strip()
    return os.path.basename(path), f"{os.path.basename(path)}:{f.f_lineno}: {code}"


class ValueHints:
    """Known values of meta tensors over a pipeline call and the answers to its value reads (see
    the module doc). ``call``: the call's kwargs, for :data:`POINTS`' answers.
    :class:`lightcache.simulate.tracker.DeviceBytes` calls it for every op (``values=``): ``read``
    before the op (and before its memo) for :data:`READS`, ``after`` with the op's output, so what
    it answers is counted as the op's output."""

    def __init__(self, call: dict, points=None, inputs=None):
        self.call = call
        self.points = POINTS if points is None else points
        self.known: Dict[int, _Known] = {}  # id(untyped storage) -> its value
        self.used: Dict[str, str] = {}  # assumption -> the first line that relied on it
        for name, v in call.items():
            for pattern, value, text in (INPUTS if inputs is None else inputs):
                if isinstance(v, torch.Tensor) and v.device.type == "meta" and re.search(pattern, name):
                    self._set(v, value, frozenset([text.format(name=name)]))

    # -- knowledge -----------------------------------------------------------------------------

    def _set(self, t: torch.Tensor, value, why: frozenset) -> None:
        st = t.untyped_storage()
        key = id(st)
        if key not in self.known:
            weakref.finalize(st, self.known.pop, key, None)
        self.known[key] = _Known(_cast(value, t.dtype), t.dtype, why)

    def value_of(self, t) -> _Known | None:
        if not isinstance(t, torch.Tensor) or t.device.type != "meta":
            return None
        k = self.known.get(id(t.untyped_storage()))
        return k if k is not None and k.dtype == t.dtype else None

    def _rely(self, why: frozenset, where: str) -> None:
        for a in why:
            self.used.setdefault(a, where)

    # -- reads ---------------------------------------------------------------------------------

    def _answer(self, what: str, t: torch.Tensor):
        """The value of ``t`` (known, or a value point's answer); else ValueRead."""
        k = self.value_of(t)
        file, where = _asking_line()
        if k is not None:
            self._rely(k.why, where)
            return k.value
        for p in self.points:
            if p.file == file and p.code in where:
                self._rely(frozenset([p.assumption]), where)
                return _cast(p.answer(self.call), t.dtype)
        raise ValueRead(what, where)

    def _count(self, mask: torch.Tensor) -> int:
        """True elements of a boolean mask (every one or none: a known value or a point's answer)."""
        return mask.numel() if self._answer("the true elements", mask) else 0

    def read(self, func, args):
        """For an op of :data:`READS`: ``("out", result)`` (its answer), ``("args", args)`` (run it
        with these: a boolean index as integer ones) or None (nothing to answer: run it as it is)."""
        t = args[0]
        if not isinstance(t, torch.Tensor) or t.device.type != "meta":
            return None
        if func is aten._local_scalar_dense.default:
            return "out", self._answer("the value", t)
        if func is aten.nonzero.default:
            n = self._count(t)
            return "out", torch.empty_strided((n, t.dim()), (1, n), dtype=torch.long, device="meta")  # as torch's meta
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1]):
            return "args", (t, self._long_indices(args[1]))
        return None

    def after(self, func, args, kwargs, out) -> None:
        """Knowledge after an op: what it wrote is forgotten, its output known by :data:`_RULES`."""
        info = _INFO.get(func)
        if info is None:
            info = _INFO[func] = (_written_positions(func), _RULES.get(func))
        written, rule = info
        if written and self.known:
            for i, name in written:
                t = args[i] if i < len(args) else kwargs.get(name)
                if isinstance(t, torch.Tensor) and t.device.type == "meta":
                    self.known.pop(id(t.untyped_storage()), None)
        if rule is None or not isinstance(out, torch.Tensor) or out.device.type != "meta":
            return
        inputs, value = rule
        if inputs is None:  # a factory
            self._set(out, value(out, (), args, kwargs), frozenset())
            return
        ins = [self.value_of(t) for t in inputs(args)]
        if ins and all(k is not None for k in ins):
            v = value(out, [k.value for k in ins], args, kwargs)
            if v is not None:
                self._set(out, v, frozenset().union(*(k.why for k in ins)))

    def _long_indices(self, indices):
        """A boolean index as the equivalent integer indices (one per mask dimension, of the mask's
        count), made outside the tracker: torch's index makes them inside its kernel."""
        out = []
        for i in indices:
            if isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8):
                n = self._count(i)
                with _disable_current_modes():
                    out += [torch.empty(n, dtype=torch.long, device="meta") for _ in range(i.dim())]
            else:
                out.append(i)
        return out


READS = frozenset({aten._local_scalar_dense.default, aten.nonzero.default, aten.index.Tensor})  # see read()
_INFO = {}  # op -> (the arguments it writes, its rule)


def _written_positions(func):
    """(position, name) of the arguments an op writes into (in-place and out= ops), per its schema."""
    return tuple((i, a.name) for i, a in enumerate(func._schema.arguments)
                 if a.alias_info is not None and a.alias_info.is_write)


def _fill(position):
    return lambda out, vals, args, kwargs: args[position] if len(args) > position else kwargs["fill_value"]


def _const(value):
    return lambda out, vals, args, kwargs: value


def _first(args):
    return [args[0]]


def _both(args):
    return [args[0], args[1]] if isinstance(args[1], torch.Tensor) else [args[0]]


def _nonempty(args):
    return [t for t in args[0] if t.numel()]


def _same(out, vals, args, kwargs):
    return vals[0] if all(v == vals[0] for v in vals) else None


def _sum(out, vals, args, kwargs):
    return vals[0] * (args[0].numel() // max(out.numel(), 1)) if args[0].numel() else 0


def _compare(op):
    return lambda out, vals, args, kwargs: op(vals[0], vals[1] if len(vals) > 1 else args[1])


def _arith(op):
    def rule(out, vals, args, kwargs):
        other = vals[1] if len(vals) > 1 else args[1]
        return op(vals[0], other * kwargs.get("alpha", 1))

    return rule


def _all(out, vals, args, kwargs):
    return bool(vals[0]) or not args[0].numel()


def _any(out, vals, args, kwargs):
    return bool(vals[0]) and args[0].numel() > 0


# op -> (the inputs its value comes from, args -> tensors; None: a factory, the value comes from the
# arguments; the value: (out, the inputs' values, args, kwargs) -> a value, or None: not known)
_RULES = {
    aten.zeros.default: (None, _const(0)), aten.ones.default: (None, _const(1)), aten.full.default: (None, _fill(1)),
    aten.zeros_like.default: (None, _const(0)), aten.ones_like.default: (None, _const(1)),
    aten.full_like.default: (None, _fill(1)), aten.new_zeros.default: (None, _const(0)),
    aten.new_ones.default: (None, _const(1)), aten.new_full.default: (None, _fill(2)),
    aten.scalar_tensor.default: (None, _fill(0)),
    # copies and selections of a one-valued tensor hold its value
    aten._to_copy.default: (_first, _same), aten.clone.default: (_first, _same), aten.repeat.default: (_first, _same),
    aten.expand_copy.default: (_first, _same), aten.index.Tensor: (_first, _same),
    aten.cat.default: (_nonempty, _same), aten.stack.default: (_nonempty, _same),
    aten.bitwise_not.default: (_first, lambda out, vals, args, kwargs: (not vals[0]) if out.dtype == torch.bool
                               else ~vals[0]),
    aten.logical_not.default: (_first, lambda out, vals, args, kwargs: not vals[0]),
    aten.eq.Scalar: (_first, _compare(lambda a, b: a == b)), aten.eq.Tensor: (_both, _compare(lambda a, b: a == b)),
    aten.ne.Scalar: (_first, _compare(lambda a, b: a != b)), aten.ne.Tensor: (_both, _compare(lambda a, b: a != b)),
    aten.all.default: (_first, _all), aten.all.dim: (_first, _all), aten.all.dims: (_first, _all),
    aten.any.default: (_first, _any), aten.any.dim: (_first, _any), aten.any.dims: (_first, _any),
    aten.sum.default: (_first, _sum), aten.sum.dim_IntList: (_first, _sum),
    # FramePack at batch 2: latent_sequence_length + effective_condition_sequence_length
    aten.add.Tensor: (_both, _arith(lambda a, b: a + b)), aten.sub.Tensor: (_both, _arith(lambda a, b: a - b)),
    aten.mul.Tensor: (_both, _arith(lambda a, b: a * b)),
}
