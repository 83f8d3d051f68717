"""Read NVIDIA StyleGAN2-ADA network pickles as plain data, executing nothing from them.

NVIDIA's files are ordinary pickles whose networks are "persistent objects": every
module is stored as a call ``torch_utils.persistence._reconstruct_persistent_obj(meta)``
with ``meta = {'type': 'class', 'version', 'module_src', 'class_name', 'state'}``, where
``module_src`` is the Python source of the defining module (NVIDIA's loader ``exec``s it)
and ``state`` the module's ``__dict__``. This reader resolves only the few globals such
files contain, each to a data-only stand-in of our own:

* persistent objects become :class:`PersistentObject` records (``class_name``,
  ``version``, ``state``); ``module_src`` is dropped unread;
* tensors are rebuilt from their bytes (``torch.load(weights_only=True)``);
* ``OrderedDict``, ``set``, NumPy scalars / dtypes and ``dnnlib.util.EasyDict`` become
  plain values.

Any other global is refused with a :class:`CheckpointError` naming the file and the global.
Sizes the file declares (storages, zip members, tensor views, the module tree) are
checked against its bytes before anything of that size is built
(:mod:`instyle.interop.bounds`).
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instyle.errors import CheckpointError
from instyle.interop.bounds import (
    MAX_NESTING,
    BoundedReader,
    BoundedUnpickler,
    check_loaded_tensors,
    check_torch_bytes,
    check_zip_members,
)

__all__ = ["PersistentObject", "EasyDict", "NdarrayRecord", "RestrictedUnpickler", "read_pickle", "ALLOWED_GLOBALS"]

#: Magic number that starts PyTorch's legacy (pre-1.6, non-zip) ``torch.save`` files.
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass
class PersistentObject:
    """A persistent module read as data: its class name and ``__dict__`` (``state``).

    ``state`` holds ``_parameters`` / ``_buffers`` / ``_modules`` mappings plus the
    module's plain attributes and ``_init_kwargs``.
    """

    class_name: str
    version: int | None
    state: dict = field(repr=False)

    def attr(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default)

    @property
    def modules(self) -> dict[str, PersistentObject]:
        mods = self.state.get("_modules") or {}
        return {k: v for k, v in mods.items() if isinstance(v, PersistentObject)}

    def own_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for group in ("_parameters", "_buffers"):
            for k, v in (self.state.get(group) or {}).items():
                if isinstance(v, torch.Tensor):
                    yield k, v

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """All tensors of this module and its children, named as ``nn.Module.state_dict``.

        Raises:
            CheckpointError: a module reached twice (a cycle, or a shared sub-tree whose
                paths would double at every level) or nested deeper than ``MAX_NESTING``.
        """
        out: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        stack: list[tuple[str, PersistentObject, int]] = [(prefix, self, 0)]
        while stack:
            at, module, depth = stack.pop()
            if id(module) in seen:
                name = at.rstrip(".")
                name = name if len(name) <= 80 else f"{name[:40]}...{name[-30:]}"
                raise CheckpointError(f"module '{name}' appears twice in the network tree (shared or cyclic)")
            if depth > MAX_NESTING:
                raise CheckpointError(f"the network tree is nested deeper than {MAX_NESTING} levels")
            seen.add(id(module))
            out.update((f"{at}{k}", v) for k, v in module.own_tensors())
            stack.extend((f"{at}{name}.", child, depth + 1) for name, child in reversed(module.modules.items()))
        return out


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict; attribute access is not needed)."""


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    if not isinstance(meta, Mapping) or meta.get("type") != "class":
        raise pickle.UnpicklingError("malformed persistent-object record (expected meta['type'] == 'class')")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, Mapping):
        raise pickle.UnpicklingError("malformed persistent-object record (class_name / state)")
    return PersistentObject(class_name=class_name, version=meta.get("version"), state=dict(state))


def _load_from_bytes(data: Any) -> Any:
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("tensor storage record does not hold bytes")
    check_torch_bytes(bytes(data), "a tensor storage record")  # declared sizes vs. its bytes
    storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"tensor storage record holds a {type(storage).__name__}, not a storage")
    return storage


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, torch.TypedStorage):
        raise pickle.UnpicklingError(f"tensor record refers to a {type(storage).__name__}, not a typed storage")
    _check_view(storage._size(), storage_offset, size, stride)
    return torch._utils._rebuild_tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _check_view(available: int, offset: Any, size: Any, stride: Any) -> None:
    """A tensor record may only view elements its storage holds, each at most once: a
    stride-0 view of one float declared as [100000, 100000] would become 40 GB on the
    first copy."""
    dims = (offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else (None,)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims) or len(size) != len(stride) \
            or len(size) > 16:
        raise pickle.UnpicklingError(f"malformed tensor record (offset {offset!r}, size {size!r}, stride {stride!r})")
    numel = math.prod(size)
    if numel and (offset + sum((n - 1) * s for n, s in zip(size, stride)) >= available or numel > available):
        raise CheckpointError(
            f"refused: a tensor record declares shape {list(size)} ({numel} elements) over a storage of "
            f"{available} elements"
        )


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter record does not hold a tensor")
    return data  # a plain tensor is all a converter needs


def _numpy_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"unsupported NumPy dtype spec {spec!r}")
    dtype = np.dtype(spec)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"NumPy object dtype {spec!r} is not allowed")
    return dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("malformed NumPy scalar record")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


class NdarrayRecord:
    """A pickled NumPy array read as data (StyleGAN3 modules keep sizes as small arrays).

    ``numpy.core.multiarray._reconstruct(ndarray, ...)`` makes this stand-in; the pickle's
    state ``(version, shape, dtype, fortran, raw bytes)`` fills ``array``, after checking that
    the bytes are exactly what the shape and dtype declare. Object arrays are refused.
    """

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("malformed NumPy array record")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("unsupported NumPy array record (object dtype or no raw bytes)")
        if not (isinstance(shape, tuple) and len(shape) <= 8 and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise pickle.UnpicklingError(f"malformed NumPy array shape {shape!r:.80}")
        if math.prod(shape) * dtype.itemsize != len(raw):
            raise pickle.UnpicklingError(
                f"NumPy array record declares shape {list(shape)} of {dtype} but holds {len(raw)} bytes"
            )
        arr = np.frombuffer(bytes(raw), dtype=dtype)
        self.array = arr.reshape(shape, order="F" if fortran else "C").copy()

    def tolist(self) -> Any:
        return None if self.array is None else self.array.tolist()


def _numpy_reconstruct(cls: Any, shape: Any = (0,), dtype: Any = b"b") -> NdarrayRecord:
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("NumPy _reconstruct of something other than ndarray")
    return NdarrayRecord()


_NDARRAY = object()  # what the global numpy.ndarray resolves to: a marker, not the class


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    # protocol-2 pickles (e.g. torch.save) store bytes as _codecs.encode(text, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("malformed bytes record")
    return text.encode("latin1")


@dataclass(frozen=True)
class _StorageType:
    """What ``torch.FloatStorage`` etc. resolve to inside ``torch.save`` zip files."""

    dtype: torch.dtype


_STORAGE_TYPES = {
    f"{name}Storage": _StorageType(dtype)
    for name, dtype in [
        ("Float", torch.float32), ("Double", torch.float64), ("Half", torch.float16), ("BFloat16", torch.bfloat16),
        ("Long", torch.int64), ("Int", torch.int32), ("Short", torch.int16), ("Char", torch.int8),
        ("Byte", torch.uint8), ("Bool", torch.bool),
    ]
}

#: ``(module, name)`` -> the data-only callable or class it resolves to.
ALLOWED_GLOBALS: dict[tuple[str, str], Callable | type | _StorageType] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,  # protocol 2 spells builtins this way
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,  # StyleGAN3 size arrays
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    **{("torch", name): st for name, st in _STORAGE_TYPES.items()},
}


class TensorFlowPickleError(CheckpointError):
    """The file is a TensorFlow-era StyleGAN pickle (not supported)."""


class RestrictedUnpickler(BoundedUnpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS` (and runs a
    bounded number of operations, with a dict memo: see :class:`BoundedUnpickler`).

    Args:
        file: binary file object positioned at the pickle.
        source: the file's name, used in error messages.
        read_storage: for ``torch.save`` zip archives, ``key -> bytes`` of a storage record.
    """

    def __init__(self, file, source: Any, read_storage: Callable[[str], bytes] | None = None):
        super().__init__(file)
        self.source = source
        self._read_storage = read_storage
        self._storages: dict[str, torch.TypedStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("dnnlib.tflib"):
            raise TensorFlowPickleError(
                f"{self.source}: this is a TensorFlow-era StyleGAN/StyleGAN2 pickle (it contains {module}.{name}); "
                "TensorFlow pickles are out of scope for instyle. Convert it to a StyleGAN2-ADA PyTorch pickle "
                "first (NVIDIA's stylegan2-ada-pytorch converts them when loading), then load that file."
            )
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None or (isinstance(target, _StorageType) and self._read_storage is None):
            raise CheckpointError(
                f"{self.source}: refused to read this pickle: it needs the Python global '{module}.{name}', "
                "which is not among the types NVIDIA StyleGAN2-ADA / StyleGAN3 network pickles contain. "
                "Nothing from the file was executed."
            )
        return target

    def persistent_load(self, pid: Any) -> Any:
        if self._read_storage is None:
            raise CheckpointError(
                f"{self.source}: unexpected persistent reference {pid!r:.80} in a plain pickle; refused"
            )
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.source}: unsupported persistent reference {pid!r:.80}; refused")
        key = str(pid[2])
        if key not in self._storages:
            raw = bytearray(self._read_storage(key))
            untyped = torch.frombuffer(raw, dtype=torch.uint8).untyped_storage() if raw else torch.UntypedStorage(0)
            self._storages[key] = torch.TypedStorage(wrap_storage=untyped, dtype=pid[1].dtype, _internal=True)
        return self._storages[key]


def _read_zip(path: Path, size: int) -> Any:
    with zipfile.ZipFile(path) as zf:
        check_zip_members(zf, size, path)
        pkls = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pkls) != 1:
            raise CheckpointError(f"{path}: a zip file that is not a PyTorch archive (no single data.pkl)")
        prefix = pkls[0][: -len("data.pkl")]

        def read_storage(key: str) -> bytes:
            try:
                return zf.read(f"{prefix}data/{key}")
            except KeyError:
                raise CheckpointError(f"{path}: truncated archive: tensor data '{key}' is missing") from None

        with zf.open(pkls[0]) as f:
            return RestrictedUnpickler(io.BytesIO(f.read()), path, read_storage).load()


def read_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` (a plain pickle or a ``torch.save`` zip archive) as data only.

    Raises:
        CheckpointError: missing / empty / truncated / corrupt file, a global outside
            :data:`ALLOWED_GLOBALS` (never executed), or a TensorFlow-era pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes)")
    try:
        if zipfile.is_zipfile(path):
            obj = _read_zip(path, size)
        else:
            with open(path, "rb") as f:
                obj = RestrictedUnpickler(BoundedReader(f, size), path).load()
    except CheckpointError as e:
        if str(e).startswith(str(path)):
            raise
        raise CheckpointError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, RuntimeError, OSError, zipfile.BadZipFile,
            IndexError, KeyError, AttributeError, MemoryError) as e:
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise CheckpointError(
            f"{path}: not a readable network pickle (truncated or corrupt, {size} bytes): {type(e).__name__}: {first}"
        ) from None
    check_loaded_tensors(obj, size, path)  # views sharing storages, absurd nesting
    if isinstance(obj, int) and obj == _LEGACY_TORCH_MAGIC:
        raise CheckpointError(
            f"{path}: a legacy (pre-1.6) torch.save file, not an NVIDIA network pickle; re-save it with a current "
            "PyTorch or load it with instyle.load_generator as a .pt file"
        )
    return obj
