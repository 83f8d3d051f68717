"""Selection between reference ops and optional fast paths.

Every op has a plain reference implementation that is always available. Fast
paths register themselves here under the op's name; they are used only when the
active backend allows it. The backend comes from the ``INSTYLE_OPS`` environment
variable (``reference`` or ``auto``, default ``auto``) and can be changed at run
time with :func:`set_backend` or the :func:`use_backend` context manager.
Nothing is compiled at import time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

BACKENDS = ("auto", "reference")

_fast_paths: dict[str, Callable] = {}
_backend: str | None = None


def _validated(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown ops backend {name!r}; accepted: {', '.join(BACKENDS)}")
    return name


def get_backend() -> str:
    """The active backend: ``auto`` (fast paths where registered) or ``reference``."""
    global _backend
    if _backend is None:
        _backend = _validated(os.environ.get("INSTYLE_OPS", "auto").strip().lower() or "auto")
    return _backend


def set_backend(name: str) -> None:
    """Select ``auto`` or ``reference`` for all subsequent op calls."""
    global _backend
    _backend = _validated(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily select a backend (e.g. ``with use_backend("reference"): ...``)."""
    global _backend
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        _backend = previous


def register_fast_path(op: str, fn: Callable) -> None:
    """Register ``fn`` as the fast implementation of ``op`` (same signature)."""
    _fast_paths[op] = fn


def fast_path(op: str) -> Callable | None:
    """The fast implementation of ``op`` if one is registered and allowed, else None."""
    if get_backend() == "reference":
        return None
    return _fast_paths.get(op)
