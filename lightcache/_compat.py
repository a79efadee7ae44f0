"""Version floors of the libraries lightcache hooks into, checked where they are first needed.

The engine uses ``HookRegistry.invalidate_child_registries_cache``, which diffusers added in 0.42;
with an older diffusers it would fail late with an AttributeError deep inside a pipeline call, so
:func:`require_diffusers` refuses it up front. Keep DIFFUSERS_MIN equal to the ``diffusers>=``
floor of pyproject.toml (tests/test_validation.py checks both).
"""

from __future__ import annotations

import re
from typing import Tuple

DIFFUSERS_MIN: Tuple[int, ...] = (0, 42)
_MIN_TEXT = ".".join(map(str, DIFFUSERS_MIN))


def release_tuple(version: str) -> Tuple[int, ...]:
    """The leading release numbers of a version string, suffixes ignored: '0.43.0.dev0' ->
    (0, 43, 0), '0.42rc1' -> (0, 42), anything unparsable -> (). A pre-release of the floor's
    release counts as that release (a source build of diffusers main reports '0.X.0.dev0')."""
    numbers = []
    for piece in str(version).split("."):
        m = re.match(r"\d+", piece)
        if m is None:
            break
        numbers.append(int(m.group()))
        if m.end() != len(piece):  # '42rc1': the release ends here
            break
    return tuple(numbers)


def require_diffusers() -> None:
    """Raise ImportError naming the required version unless diffusers >= 0.42 is importable."""
    try:
        import diffusers
    except ImportError as exc:
        raise ImportError(
            f"lightcache needs diffusers>=0.42 (not installed): pip install 'diffusers>={_MIN_TEXT}'"
        ) from exc
    found = getattr(diffusers, "__version__", None)
    release = release_tuple(found) if isinstance(found, str) else ()
    if not release or release < DIFFUSERS_MIN:
        raise ImportError(
            f"lightcache needs diffusers>={_MIN_TEXT} (found {found!r}): its engine uses "
            f"HookRegistry.invalidate_child_registries_cache, new in diffusers {_MIN_TEXT}; "
            f"upgrade with pip install -U 'diffusers>={_MIN_TEXT}'"
        )
