"""Keep freed memory inside the process (glibc ``malloc``), so large tensors stop paying
for fresh pages on every allocation.

By default glibc serves every allocation above 32 MiB with a new ``mmap`` and returns
it to the kernel on ``free``. A 1024-px StyleGAN2 layer allocates several such
tensors (32 channels x 1024^2 floats = 128 MiB each) per image, and touching fresh
pages costs a page fault per 4 KiB plus zeroing: on a 2-core CPU an out-of-place
elementwise op over 128 MiB then takes ~70 ms instead of ~10 ms, and convolutions
writing fresh outputs slow down about 2x. Turning ``mmap`` off and raising the trim
threshold keeps freed blocks for reuse; the cost is that the process's resident size
stays at its high-water mark.

Nothing happens at import. :func:`retain_freed_memory` changes the process-wide
setting (a no-op returning False where glibc is absent, e.g. macOS/Windows, or when
``INSTYLE_MALLOC=default``); :func:`retained_memory` applies it for a block and restores
glibc's behaviour afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

__all__ = ["retain_freed_memory", "retained_memory", "is_retaining"]

# mallopt parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_DEFAULT_MMAP_MAX = 65536
_DEFAULT_TRIM = 128 * 1024
_WARM_MMAP_THRESHOLD = 32 * 1024 * 1024  # where glibc's dynamic threshold settles
_RETAIN_TRIM = 2**31 - 1  # mallopt takes a C int: larger values wrap (1 << 40 became 0, trimming everything)

_libc: ctypes.CDLL | None = None
_retaining = False


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        if not name or os.name != "posix":
            return None
        try:
            lib = ctypes.CDLL(name)
            lib.mallopt  # noqa: B018  (AttributeError where this is not glibc)
            lib.malloc_trim  # noqa: B018
        except (OSError, AttributeError):
            return None
        lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.malloc_trim.argtypes = [ctypes.c_size_t]
        _libc = lib
    return _libc


def is_retaining() -> bool:
    """Whether :func:`retain_freed_memory` is in effect."""
    return _retaining


def retain_freed_memory(enable: bool = True) -> bool:
    """Keep (``enable=True``) or release (``False``) freed memory in this process.

    Returns True when the setting was applied (glibc present and not disabled with
    ``INSTYLE_MALLOC=default``).
    """
    global _retaining
    if os.environ.get("INSTYLE_MALLOC", "").strip().lower() == "default":
        return False
    libc = _glibc()
    if libc is None:
        return False
    if enable:
        ok = libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _RETAIN_TRIM)
    else:
        ok = (
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            and libc.mallopt(_M_MMAP_THRESHOLD, _WARM_MMAP_THRESHOLD)
            and libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
        )
        libc.malloc_trim(0)
    _retaining = bool(ok) and enable
    return bool(ok)


@contextlib.contextmanager
def retained_memory(enable: bool = True) -> Iterator[bool]:
    """Apply :func:`retain_freed_memory` for a block; yields whether it applied."""
    before = _retaining
    applied = retain_freed_memory(enable)
    try:
        yield applied
    finally:
        if applied and before != enable:
            retain_freed_memory(before)
