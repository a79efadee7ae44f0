"""Hooks on modules lightcache does not own: placing a hook at a given depth of a diffusers
``HookRegistry`` (:func:`register_at`, :func:`remove_exactly`) and :class:`HookSet`, the one record of
what lightcache changed, undone in reverse.

The registry chains hooks in registration order (the last one is outermost) and rewires the chain
correctly only when hooks are removed from the top down: removing a hook below one that replaces
the forward drops that one's forward too. So inserting or removing at a depth takes the hooks above
off top-down and puts them back in their order.
"""

from __future__ import annotations

from typing import List, Tuple


def _take_off_from(reg, position: int) -> List[Tuple[str, object]]:
    """Remove the hooks at ``position`` and above (top-down); returns them, innermost first."""
    above = [(n, reg.hooks[n]) for n in list(reg.hooks)[position:]]
    for n, _ in reversed(above):
        reg.remove_hook(n, recurse=False)
    return above


def _put_back(reg, hooks: List[Tuple[str, object]]) -> None:
    for n, h in hooks:
        reg.register_hook(h, n)


def register_at(reg, hook, name: str, position: int) -> None:
    """Register ``hook`` as ``name`` so that it sits beneath the hooks now at ``position`` and up
    (0: directly on the module's own forward; ``len(reg.hooks)``: outermost)."""
    above = _take_off_from(reg, position)
    reg.register_hook(hook, name)
    _put_back(reg, above)


def remove_exactly(reg, name: str) -> None:
    """Remove hook ``name`` wherever it sits, leaving the others chained as they were."""
    above = _take_off_from(reg, list(reg.hooks).index(name) + 1)
    reg.remove_hook(name, recurse=False)
    _put_back(reg, above)


class HookSet:
    """Every change lightcache makes to modules and objects it does not own, recorded as it is
    made and undone in reverse by :meth:`undo` (on ``disable``, and on any error while enabling):
    diffusers hooks registered (and the registries and instance ``forward`` attributes that
    registering creates), and methods shadowed by instance attributes (scheduler, VAE, pipeline taps).
    Iterating gives the modules it hooked, in order."""

    def __init__(self):
        self._undo: list = []  # callables, run last-first
        self._modules: list = []

    def __iter__(self):
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def register(self, module, hook, name: str, position=None) -> None:
        """Register ``hook`` as ``name`` in ``module``'s HookRegistry (outermost, or at
        ``position(registry)``, see :func:`register_at`)."""
        from diffusers.hooks.hooks import HookRegistry

        created = not hasattr(module, "_diffusers_hook")
        had_forward = "forward" in vars(module)  # a new registry leaves an instance forward behind

        def forget_registry():
            reg = getattr(module, "_diffusers_hook", None)
            if reg is None or reg.hooks:
                return
            if created:
                del module._diffusers_hook
            if not had_forward and "forward" in vars(module):
                del module.forward  # the registry's bound original: the class's is the same

        reg = HookRegistry.check_if_exists_or_initialize(module)
        self._undo.append(forget_registry)  # even if registering fails below
        if position is None:
            reg.register_hook(hook, name)
        else:
            register_at(reg, hook, name, position(reg))
        self._undo.append(lambda: remove_exactly(reg, name) if name in reg.hooks else None)
        if not any(m is module for m in self._modules):
            self._modules.append(module)

    def wrap_method(self, obj, name: str, make_wrapper) -> None:
        """Shadow ``obj.name`` with ``make_wrapper(original)`` as an instance attribute; undo puts
        back exactly what was there (another instance attribute, or nothing)."""
        import functools

        had = name in vars(obj)
        before = vars(obj).get(name)
        original = getattr(obj, name)
        setattr(obj, name, functools.wraps(original)(make_wrapper(original)))

        def restore():
            if had:
                setattr(obj, name, before)
            elif name in vars(obj):
                delattr(obj, name)

        self._undo.append(restore)

    def extend(self, other: "HookSet") -> None:
        """Take over ``other``'s changes: undone with this set's (as one step, in their order)."""
        self._undo.append(other.undo)
        self._modules.extend(m for m in other if not any(m is k for k in self._modules))

    def add_undo(self, fn) -> None:
        """Any other change: ``fn`` undoes it (runs in reverse order with the rest)."""
        self._undo.append(fn)

    def undo(self) -> None:
        """Undo everything, last change first; every step runs even if one fails (the first error
        is raised at the end)."""
        error = None
        while self._undo:
            fn = self._undo.pop()
            try:
                fn()
            except BaseException as exc:  # keep undoing: leave as little behind as possible
                error = error or exc
        self._modules.clear()
        if error is not None:
            raise error
