"""Bounded reading of NumPy ``.npy`` / ``.npz`` files (latents, offsets, edit directions).

The one place instyle reads a NumPy file. Like the model-file bounds of
:mod:`instyle.interop.bounds`, every size is checked against the bytes the file actually
holds before anything of that size is allocated: a ``.npy`` header against the file's size,
``.npz`` members first from the zip directory (:func:`~instyle.interop.bounds.check_zip_members`)
and then from each member's ``.npy`` header against the member's declared size. Pickled
(object) members are never loaded, nor are structured dtypes. Special files (FIFOs,
devices) are refused before they are opened. Every error is an :class:`InputError` naming
the file and the member.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from instyle.errors import CheckpointError, InputError
from instyle.interop.bounds import check_zip_members
from instyle.utils.files import open_regular_file

__all__ = ["MAX_MEMBERS", "NUMERIC", "TEXT", "read_npy", "read_npz", "read_numpy_file"]

#: Most members a ``.npz`` may have (instyle's own hold a few dozen).
MAX_MEMBERS = 4096
#: Most dimensions of one array.
MAX_NDIM = 8
#: Longest ``.npy`` header accepted (NumPy's own default limit).
MAX_HEADER = 10_000
#: dtype kinds accepted: numbers (bool, signed, unsigned, float) and, where asked, text.
NUMERIC = "biuf"
TEXT = "U"

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def read_npy(f: BinaryIO, available: int, source: str, kinds: str = NUMERIC) -> np.ndarray:
    """One ``.npy`` array from ``f``, whose header is checked against ``available`` (the
    bytes the stream holds) before the data is allocated. ``source`` names it in errors
    (``"path"`` or ``"path: member 'w_plus'"``); ``kinds``: accepted dtype kinds."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_HEADER)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_HEADER)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except Exception as e:  # fail closed: a header we cannot parse is not read further
        raise InputError(f"{source}: not a .npy array ({type(e).__name__}: {_brief(e)})") from None
    if dtype.hasobject:
        raise InputError(f"{source}: holds pickled Python objects (object dtype), which are never loaded")
    if dtype.names is not None or dtype.subdtype is not None or dtype.kind not in kinds:
        raise InputError(f"{source}: dtype {dtype} is not accepted here (expected {_kinds_words(kinds)})")
    if len(shape) > MAX_NDIM:
        raise InputError(f"{source}: {len(shape)} dimensions, at most {MAX_NDIM} accepted")
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise InputError(f"{source}: shape {tuple(shape)} has negative or non-integer sizes")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > available:
        raise InputError(
            f"{source}: declares shape {tuple(shape)} of {dtype} ({nbytes} bytes) but holds only {available} bytes "
            "(a forged header or a truncated file)"
        )
    buf = bytearray(nbytes)
    got = f.readinto(buf) if nbytes else 0
    while got < nbytes:
        n = f.readinto(memoryview(buf)[got:])
        if not n:
            raise InputError(f"{source}: truncated: {got} of {nbytes} data bytes present")
        got += n
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def read_npz(path: Path, f: BinaryIO, file_bytes: int, text: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every ``.npy`` member of an open ``.npz`` (``name -> array``); members named in
    ``text`` may also hold text (e.g. a JSON ``meta``), the others only numbers."""
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise InputError(f"{path}: not a readable .npz archive ({_brief(e)})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise InputError(f"{path}: {len(infos)} archive members, at most {MAX_MEMBERS} accepted")
        try:
            check_zip_members(zf, file_bytes, path)
        except CheckpointError as e:
            raise InputError(str(e)) from None
        out: dict[str, np.ndarray] = {}
        for info in infos:
            if not info.filename.endswith(".npy") or info.is_dir():
                raise InputError(f"{path}: member {info.filename!r} is not a .npy array")
            key = info.filename[: -len(".npy")]
            source = f"{path}: member {key!r}"
            try:
                with zf.open(info) as m:
                    out[key] = read_npy(m, info.file_size, source, NUMERIC + (TEXT if key in text else ""))
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
                raise InputError(f"{source}: corrupt archive data ({_brief(e)})") from None
            except Exception as e:
                if isinstance(e, InputError):
                    raise
                raise InputError(f"{source}: corrupt archive data ({type(e).__name__}: {_brief(e)})") from None
        return out


def read_numpy_file(path: str | os.PathLike, what: str, text: tuple[str, ...] = ()) -> np.ndarray | dict[str, np.ndarray]:
    """A ``.npy`` (its array) or ``.npz`` (``{member: array}``) file, told apart by content.

    ``what`` names the kind of file in errors ("latent file", "direction").
    """
    path = Path(path)
    with open_regular_file(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise InputError(f"{path}: empty file (0 bytes), not a {what}")
        head = f.read(len(_NPY_MAGIC))
        f.seek(0)
        if head.startswith(_NPY_MAGIC):
            return read_npy(f, size - _header_end(f, path), str(path))
        if head.startswith(_ZIP_MAGIC):
            return read_npz(path, f, size, text)
        raise InputError(f"{path}: not a NumPy .npy or .npz file (it starts with {head[:6]!r}), not a {what}")


def _header_end(f: BinaryIO, path: Path) -> int:
    """Offset of the data of the ``.npy`` in ``f`` (rewound afterwards)."""
    head = f.read(12)
    f.seek(0)
    if len(head) < 10:
        raise InputError(f"{path}: truncated .npy header")
    if head[6] == 1:
        return 10 + int.from_bytes(head[8:10], "little")
    return 12 + int.from_bytes(head[8:12], "little")


def _kinds_words(kinds: str) -> str:
    words = {"b": "bool", "i": "integers", "u": "unsigned integers", "f": "floats", "U": "text"}
    return ", ".join(words[k] for k in kinds)


def _brief(e: BaseException) -> str:
    """An exception's message on one printable ASCII line (it may quote bytes of the file)."""
    return " ".join(str(e).encode("ascii", "backslashreplace").decode().split())[:200]
