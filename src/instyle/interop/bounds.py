"""Bounds on what a model file may ask the reader to allocate.

A pickle is a program: a few KB can declare a 4 GB storage, a 2**30-entry memo table,
a zip member that inflates to gigabytes, a tensor view whose shape is far larger than its
bytes (stride 0), or a module tree whose paths double at every level. Each check here
compares what a file declares with the bytes it actually holds, before anything of that
size is built; all raise :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Iterator
from typing import Any, BinaryIO

import torch

from instyle.errors import CheckpointError

__all__ = [
    "MAX_NESTING",
    "MAX_PICKLE_OPS",
    "BoundedReader",
    "BoundedUnpickler",
    "check_pickle_ops",
    "check_zip_members",
    "check_declared_storages",
    "check_loaded_tensors",
    "tensor_budget",
]

#: Deepest container nesting a supported checkpoint needs (real ones use < 10).
MAX_NESTING = 64
#: Most pickle operations one file may run. Each object costs one or two bytes of pickle
#: but ~60 bytes of memory, so this, not the file size, bounds what unpickling builds;
#: real network pickles and checkpoints run well under 10**5.
MAX_PICKLE_OPS = 2_000_000
#: Magic number that starts PyTorch's legacy (pre-1.6, non-zip) ``torch.save`` streams.
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C


def tensor_budget(file_bytes: int) -> int:
    """Most tensor bytes a file of ``file_bytes`` may yield: twice its size (views that
    share storage are counted once per view) plus 16 MiB of slack for tiny files."""
    return 2 * file_bytes + (16 << 20)


class BoundedReader:
    """Read-only view of a binary stream that never asks it for more than ``limit`` bytes.

    Python's buffered ``read(n)`` allocates ``n`` bytes before reading, so a pickle opcode
    declaring a 2**40-byte string must not reach it unclamped.
    """

    def __init__(self, f: BinaryIO, limit: int):
        self._f = f
        self._left = limit

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self._f.readline(self._left)
        self._left -= len(line)
        return line

    def readinto(self, b) -> int:
        view = memoryview(b)[: self._left]
        n = self._f.readinto(view)
        self._left -= n
        return n


def check_zip_members(zf: zipfile.ZipFile, file_bytes: int, source: Any) -> None:
    """Refuse an archive whose members declare more bytes than the archive can hold
    (a zip bomb, or a forged size that a reader would allocate up front)."""
    declared = sum(info.file_size for info in zf.infolist())
    if declared > tensor_budget(file_bytes):
        raise CheckpointError(
            f"{source}: refused: its zip members declare {declared} bytes uncompressed but the file has only "
            f"{file_bytes} bytes (a zip bomb or a corrupt archive)"
        )


# ----------------------------------------------------------------------------- legacy torch.save streams


class _Stub:
    """Anything a skeleton pickle refers to: accepts every call and state, holds nothing."""

    ref: tuple[str, str] = ("", "")

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Stub:
        return _Stub()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def add(self, value: Any) -> None:
        pass


#: Bytes per element of the storage classes ``torch.save`` names (unknown names: 8).
_ITEM_SIZES = {
    "Untyped": 1, "Byte": 1, "Char": 1, "Bool": 1, "QInt8": 1, "QUInt8": 1, "Short": 2, "Half": 2, "BFloat16": 2,
    "Int": 4, "Float": 4, "QInt32": 4, "Long": 8, "Double": 8, "ComplexFloat": 8, "ComplexDouble": 16,
}


def _storage_item_size(ref: tuple[str, str]) -> int:
    return _ITEM_SIZES.get(ref[1].removesuffix("Storage"), 8)


def _counted(op: Any) -> Any:
    def run(self: BoundedUnpickler) -> Any:
        self.ops_left -= 1
        if self.ops_left < 0:
            raise CheckpointError(f"refused: the pickle runs more than {MAX_PICKLE_OPS} operations")
        return op(self)

    return run


class BoundedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its memo is a dict: the C one grows a table to the
    largest memo index a file names, so 10 bytes naming index 2**30 cost 8 GB) with at
    most :data:`MAX_PICKLE_OPS` operations.

    ``pickle._Unpickler`` and its ``dispatch`` table (opcode byte -> unbound method) are
    CPython's *private* pure-Python implementation: present and unchanged in 3.10-3.13, but
    not a public API. ``tests/test_file_bounds.py`` runs this class under every CPython of the
    supported range it finds on the machine, so a release that changes them fails there
    first rather than in a user's hands."""

    dispatch = {code: _counted(op) for code, op in pickle._Unpickler.dispatch.items()}

    def __init__(self, f: Any, *args: Any, **kwargs: Any):
        super().__init__(f, *args, **kwargs)
        self.ops_left = MAX_PICKLE_OPS


class _SkeletonUnpickler(BoundedUnpickler):
    """Runs a pickle's opcodes with every global replaced by a :class:`_Stub` (so nothing
    from the file executes) and records the storages its persistent ids declare."""

    def __init__(self, f: Any):
        super().__init__(f)
        self.declared: dict[str, int] = {}
        self._classes: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> type:
        key = (str(module), str(name))
        if key not in self._classes:
            self._classes[key] = type("Global", (_Stub,), {"ref": key})
        return self._classes[key]

    def persistent_load(self, pid: Any) -> _Stub:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage"):
            storage_type, key, numel = pid[1], str(pid[2]), pid[4]
            ref = getattr(storage_type, "ref", ("", ""))
            if not isinstance(numel, int) or numel < 0:
                raise pickle.UnpicklingError(f"storage '{key}' declares {numel!r} elements")
            self.declared[key] = numel * _storage_item_size(ref)
        return _Stub()


def _skeleton(f: Any) -> tuple[Any, dict[str, int]]:
    u = _SkeletonUnpickler(f)
    return u.load(), u.declared


def check_declared_storages(f: BinaryIO, file_bytes: int, source: Any) -> None:
    """Refuse a legacy ``torch.save`` stream whose storages declare more bytes than it holds.

    PyTorch's legacy reader allocates every storage at its declared size before reading
    the data; zip-format files are bounded by :func:`check_zip_members` instead. ``f`` is
    rewound afterwards. Streams that are not legacy torch files are left to the loader.
    """
    start = f.tell()
    reader = BoundedReader(f, file_bytes)
    try:
        try:
            magic, _ = _skeleton(reader)
        except Exception:  # not a pickle: torch.load refuses it in its own words
            return
        if magic != LEGACY_TORCH_MAGIC:
            return
        try:
            _skeleton(reader)  # protocol version
            _skeleton(reader)  # sys_info
            _, declared = _skeleton(reader)
        except CheckpointError as e:
            raise CheckpointError(f"{source}: {e}") from None
        except Exception as e:  # fail closed: what cannot be measured is not loaded
            raise CheckpointError(
                f"{source}: a corrupt legacy PyTorch file ({type(e).__name__}: {str(e)[:200]})"
            ) from None
    finally:
        f.seek(start)
    total = sum(declared.values())
    if total > file_bytes:
        raise CheckpointError(
            f"{source}: refused: its tensor storages declare {total} bytes but the file holds only {file_bytes} "
            "bytes (forged sizes or a truncated file)"
        )


# ----------------------------------------------------------------------------- loaded objects


def _children(obj: Any) -> Iterator[Any]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield v
    elif isinstance(obj, (list, tuple, set, frozenset)):
        yield from obj
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.Tensor)):
        yield from vars(obj).values()


def check_loaded_tensors(obj: Any, file_bytes: int, source: Any) -> None:
    """Refuse a loaded object whose tensors claim far more memory than the file's bytes
    (stride-0 views that any copy would materialise) or whose containers nest deeper than
    :data:`MAX_NESTING`. Shared objects are visited once, so the walk is linear."""
    budget = tensor_budget(file_bytes)
    seen: set[int] = set()
    total = 0
    stack = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if id(item) in seen or isinstance(item, (str, bytes, int, float, bool, type(None))):
            continue
        seen.add(id(item))
        if depth > MAX_NESTING:
            raise CheckpointError(f"{source}: refused: containers nested deeper than {MAX_NESTING} levels")
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
            if total > budget:
                raise CheckpointError(
                    f"{source}: refused: its tensors would take more than {total} bytes but the file has only "
                    f"{file_bytes} bytes (tensor views larger than their data)"
                )
            continue
        stack.extend((child, depth + 1) for child in _children(item))


def check_pickle_ops(f: BinaryIO, limit: int, source: Any) -> None:
    """Refuse a pickle (read from ``f``, at most ``limit`` bytes) that runs more than
    :data:`MAX_PICKLE_OPS` operations; nothing from it executes."""
    try:
        _skeleton(BoundedReader(f, limit))
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    except Exception:  # corrupt: the real loader reports it
        return


def check_torch_bytes(data: bytes, source: Any) -> None:
    """The checks above for an in-memory ``torch.save`` stream (zip or legacy)."""
    f = io.BytesIO(data)
    if zipfile.is_zipfile(f):
        with zipfile.ZipFile(f) as zf:
            check_zip_members(zf, len(data), source)
    else:
        check_declared_storages(io.BytesIO(data), len(data), source)
