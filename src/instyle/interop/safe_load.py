"""Read PyTorch checkpoint files without executing code from them.

Files are opened with ``torch.load(weights_only=True)``, which only rebuilds
tensors and plain containers, plus a short allow-list of harmless classes that
the supported formats contain (``argparse.Namespace`` in rosinality checkpoints).
A file that needs anything else is refused with a message naming the global.
"""

from __future__ import annotations

import argparse
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from instyle.interop.errors import CheckpointError

__all__ = ["ALLOWED_GLOBALS", "safe_torch_load"]

#: Classes a supported checkpoint may contain besides tensors and containers.
ALLOWED_GLOBALS: list[Any] = [argparse.Namespace]


def safe_torch_load(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` a file on the CPU with ``weights_only=True`` and the allow-list.

    Raises:
        CheckpointError: missing, empty, truncated or corrupt file, a pickle that would
            need a non-allowed global (it is never executed), or a non-PyTorch file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such {what} file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a {what} file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the {what} file is empty (0 bytes)")
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many exception types for bad files
        msg = str(e)
        m = re.search(r"GLOBAL\s+([\w.]+)", msg)
        if m or "Weights only load failed" in msg:
            glob = next((g for g in (m.groups() if m else ()) if g), None)
            need = f" it would need the Python global {glob!r}," if glob else ""
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
