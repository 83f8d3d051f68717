"""Read PyTorch checkpoint files without executing code from them.

Files are opened with ``torch.load(weights_only=True)``, which only rebuilds
tensors and plain containers, plus a short allow-list of harmless classes that
the supported formats contain (``argparse.Namespace`` in rosinality checkpoints).
A file that needs anything else is refused with a message naming the global. Sizes a
file declares are checked against its bytes before torch allocates them, and the loaded
tensors against the file's size afterwards (:mod:`instyle.interop.bounds`).
"""

from __future__ import annotations

import argparse
import io
import os
import pickletools
import re
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from instyle.errors import CheckpointError
from instyle.interop.bounds import (
    check_declared_storages,
    check_loaded_tensors,
    check_pickle_ops,
    check_zip_members,
)
from instyle.utils.files import open_regular_file

__all__ = ["ALLOWED_GLOBALS", "safe_torch_load"]



def _posix_path(*parts: Any) -> str:
    """``pathlib.PosixPath`` records (stylegan3-editing's ``opts`` hold them) read as the
    path's text: nothing touches the file system and it works on any OS."""
    if not all(isinstance(p, str) for p in parts):
        raise TypeError("a PosixPath record must hold strings")
    return str(PurePosixPath(*parts))


#: Classes a supported checkpoint may contain besides tensors and containers
#: (``(stand-in, "module.name")`` entries resolve that global to the stand-in).
ALLOWED_GLOBALS: list[Any] = [argparse.Namespace, (_posix_path, "pathlib.PosixPath")]


def safe_torch_load(path: str | Path, what: str = "checkpoint", mmap: bool = False) -> Any:
    """``torch.load`` a file on the CPU with ``weights_only=True`` and the allow-list
    (``mmap``: tensors memory-mapped from the file instead of read, for a quick look).

    Raises:
        CheckpointError: missing, empty, truncated or corrupt file, a pickle that would
            need a non-allowed global (it is never executed), or a non-PyTorch file.
    """
    path = Path(path)
    with open_regular_file(path, f"{what} file", CheckpointError) as f:  # folders, devices, pipes: named
        size = os.fstat(f.fileno()).st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a usable {what} file")
    try:
        _check_declared_sizes(path, size, what)
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        check_loaded_tensors(obj, size, path)
        return obj
    except CheckpointError:
        raise
    except Exception as e:  # torch raises many exception types for bad files
        msg = str(e)
        m = re.search(r"GLOBAL\s+([\w.]+)", msg)
        if m or "Weights only load failed" in msg:
            globs = [m.group(1)] if m else _unsafe_globals(path)
            need = f" it would need the Python global(s) {', '.join(map(repr, globs))}," if globs else ""
            raise CheckpointError(
                f"{path}: refused to load this {what}:{need} which is not on instyle's allow-list "
                "of safe types. Nothing from the file was executed. If it is an NVIDIA StyleGAN2-ADA "
                ".pkl, use instyle.load_generator / `instyle convert`; otherwise convert it to a "
                "plain state dict first."
            ) from None
        if isinstance(e, (EOFError, zipfile.BadZipFile)) or "PytorchStreamReader" in msg or "corrupt" in msg.lower():
            raise CheckpointError(
                f"{path}: the {what} file is truncated or corrupt ({size} bytes): {msg.splitlines()[0][:200]}"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable PyTorch {what} ({type(e).__name__}: {msg.splitlines()[0][:200] if msg else ''})"
        ) from None


def _check_declared_sizes(path: Path, size: int, what: str) -> None:
    """Refuse, before torch allocates anything, a file whose zip members or legacy
    storages declare more bytes than it has (see :mod:`instyle.interop.bounds`)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            check_zip_members(zf, size, path)
            for info in zf.infolist():
                if info.filename.endswith("data.pkl"):  # size bounded just above
                    check_pickle_ops(io.BytesIO(zf.read(info)), info.file_size, path)
        return
    with open(path, "rb") as f:
        check_declared_storages(f, size, path)


# Globals that torch's weights-only unpickler accepts anyway (used only to pick the
# offending names for the error message; refusing is torch's job).
_HARMLESS_MODULES = ("torch", "collections", "argparse", "_codecs", "builtins", "numpy")


def _unsafe_globals(path: Path) -> list[str]:
    """Globals a pickle-based file refers to, read from its opcodes (nothing is executed).

    Torch's message names the global only when it gets that far; for raw pickles of a
    newer protocol it stops at an unsupported opcode first.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                pkls = [n for n in zf.namelist() if n.endswith(".pkl")]
                names = [g for n in pkls for g in _globals_in(zf.read(n))]
        else:
            names = _globals_in(path.read_bytes())
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return []
    seen = dict.fromkeys(n for n in names if n.split(".")[0] not in _HARMLESS_MODULES)
    return list(seen)[:5]


def _globals_in(data: bytes) -> list[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL in the pickle(s) at the start of ``data``."""
    found: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):  # legacy torch files are several pickles in a row
        strings: list[str] = []  # string pushes, for STACK_GLOBAL's module and name
        memo: dict[int, str | None] = {}
        pushed: str | None = None  # the string the previous opcode pushed, if any
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    found.append(".".join(str(arg).split(" ", 1)))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = pushed
                    continue
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = pushed
                    continue
                elif op.name in ("GET", "BINGET", "LONG_BINGET") and memo.get(int(arg)) is not None:
                    strings.append(memo[int(arg)])
                pushed = arg if isinstance(arg, str) and "UNICODE" in op.name else None
                if pushed is not None:
                    strings.append(pushed)
        except Exception:  # raw tensor bytes after the pickles, or a corrupt stream
            break
    return found
