"""Latent code files.

* ``.npy``: one W+ code, float32 ``[n_styles, style_dim]`` (what ``instyle encode
  --save-latents`` writes, one file per image), or a batch ``[B, n_styles, style_dim]``.
* ``.npz``: ``w_plus`` (``[n_styles, D]`` or ``[B, n_styles, D]``), optional noise maps
  ``noise_0 .. noise_{L-1}`` (``[1 or B, 1, r, r]``), optional HyperStyle weight offsets
  ``delta_<layer>`` (``[1 or B, out, in, k, k]``, only the tuned layers, ``k = 1`` where an
  offset is constant over the kernel; ``meta["n_weight_layers"]`` gives the list length)
  and ``meta`` (a JSON string).

Both load with ``numpy.load(path)`` without pickles.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from instyle.errors import InputError
from instyle.models.hyperstyle import compact_deltas
from instyle.utils.atomic import atomic_path

__all__ = ["save_latent", "load_latent", "load_weights_deltas"]


def save_latent(
    path: str | os.PathLike,
    w_plus: torch.Tensor | np.ndarray,
    noise: Sequence[torch.Tensor] | None = None,
    meta: dict | None = None,
    weights_deltas: Sequence[torch.Tensor | None] | None = None,
) -> Path:
    """Write a latent file atomically (``.npy`` for codes only, ``.npz`` with noise/meta/offsets).

    ``weights_deltas``: HyperStyle offsets for these codes (one entry or None per generator
    weight layer); stored compactly (untuned layers omitted, kernel-constant ones 1x1)."""
    path = Path(path)
    w = np.asarray(w_plus.detach().cpu() if isinstance(w_plus, torch.Tensor) else w_plus, dtype=np.float32)
    if w.ndim not in (2, 3):
        raise InputError(f"w_plus must be [n_styles, D] or [B, n_styles, D], got shape {w.shape}")
    buf = io.BytesIO()
    if path.suffix == ".npz":
        arrays = {"w_plus": w}
        for i, n in enumerate(noise or []):
            arrays[f"noise_{i}"] = np.asarray(n.detach().cpu() if isinstance(n, torch.Tensor) else n, dtype=np.float32)
        meta = dict(meta or {})
        if weights_deltas is not None:

            meta["n_weight_layers"] = len(weights_deltas)
            for i, d in enumerate(compact_deltas(weights_deltas)):
                if d is not None:
                    arrays[f"delta_{i}"] = np.asarray(d.detach().float().cpu())
        arrays["meta"] = np.asarray(json.dumps(meta))
        np.savez(buf, **arrays)
    elif path.suffix == ".npy":
        if noise or meta or weights_deltas is not None:
            raise InputError("noise maps, metadata and weight offsets need a .npz latent file")
        np.save(buf, w)
    else:
        raise InputError(f"latent files must end in .npy or .npz, got {path.name!r}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return path


def load_latent(path: str | os.PathLike) -> tuple[torch.Tensor, list[torch.Tensor] | None, dict]:
    """Read a latent file: ``(w_plus [B, n_styles, D], noise maps or None, meta)``.

    A single code ``[n_styles, D]`` is returned with a batch dimension of 1.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes), not a latent file")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: not a readable latent file ({e})") from None
    noise = None
    meta: dict = {}
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            if "w_plus" not in data:
                raise InputError(f"{path}: .npz latent file without a 'w_plus' array (has {list(data.keys())})")
            w = data["w_plus"]
            keys = sorted((k for k in data if k.startswith("noise_")), key=lambda k: int(k.split("_")[1]))
            if keys:
                noise = [torch.from_numpy(data[k].copy()) for k in keys]
            if "meta" in data:
                meta = json.loads(str(data["meta"]))
    else:
        w = data
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3:
        raise InputError(f"{path}: latent codes must be [n_styles, D] or [B, n_styles, D], got {w.shape}")
    return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)), noise, meta


def load_weights_deltas(path: str | os.PathLike) -> list[torch.Tensor | None] | None:
    """The HyperStyle offsets stored in a ``.npz`` latent file (a list with one entry or None
    per generator weight layer), or None when the file has none."""
    path = Path(path)
    if path.suffix != ".npz":
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = [k for k in data if k.startswith("delta_")]
            if not keys:
                return None
            meta = json.loads(str(data["meta"])) if "meta" in data else {}
            n = int(meta.get("n_weight_layers", 1 + max(int(k.split("_")[1]) for k in keys)))
            deltas: list[torch.Tensor | None] = [None] * n
            for k in keys:
                deltas[int(k.split("_")[1])] = torch.from_numpy(np.ascontiguousarray(data[k], dtype=np.float32))
    except (OSError, ValueError, IndexError) as e:
        raise ValueError(f"{path}: unreadable weight offsets ({e})") from None
    return deltas
