"""Placing a hook at a given depth of a module's diffusers ``HookRegistry``.

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
