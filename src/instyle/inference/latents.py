"""Latent code files.

* ``.npy``: one W+ code, float32 ``[n_styles, style_dim]`` (what ``instyle encode
  --save-latents`` writes, one file per image), or a batch ``[B, n_styles, style_dim]``.
* ``.npz``: ``w_plus`` (``[n_styles, D]`` or ``[B, n_styles, D]``), optional noise maps
  ``noise_0 .. noise_{L-1}`` (``[1 or B, 1, r, r]``), optional HyperStyle weight offsets
  ``delta_<layer>`` (``[1 or B, out, in, k, k]``, only the tuned layers, ``k = 1`` where an
  offset is constant over the kernel; ``meta["n_weight_layers"]`` gives the list length)
  and ``meta`` (a JSON string).

Both load with ``numpy.load(path)`` without pickles; instyle reads them with the bounded
reader of :mod:`instyle.inference.numpy_files` and checks every member.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from instyle.errors import InputError
from instyle.inference.numpy_files import read_numpy_file
from instyle.models.hyperstyle import compact_deltas
from instyle.utils.atomic import atomic_path
from instyle.utils.files import MAX_JSON_DEPTH, json_depth

__all__ = ["LatentFile", "save_latent", "load_latent", "load_weights_deltas", "read_latent_file"]


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


#: Most generator weight layers ``meta["n_weight_layers"]`` may name (1024 px StyleGAN2: 26).
MAX_WEIGHT_LAYERS = 1024
#: Most noise maps a latent file may hold (1024 px StyleGAN2: 17).
MAX_NOISE_MAPS = 64
#: Longest ``meta`` JSON string (characters).
MAX_META_CHARS = 1 << 20


@dataclass
class LatentFile:
    """The checked content of a latent file: ``w_plus [B, n_styles, D]`` float32, noise maps
    or None, ``meta`` and HyperStyle offsets (one entry or None per weight layer) or None."""

    w_plus: torch.Tensor
    noise: list[torch.Tensor] | None
    meta: dict
    deltas: list[torch.Tensor | None] | None


def read_latent_file(path: str | os.PathLike) -> LatentFile:
    """Read and check a latent file (every member, before any is used).

    Raises:
        InputError: one line naming the file and the field (forged sizes, zip bombs, pickled
            or non-numeric members, malformed ``meta``, noise or offset names, NaN/Inf values,
            offsets whose batch does not match the codes).
    """
    path = Path(path)
    data = read_numpy_file(path, "latent file", text=("meta",))
    if not isinstance(data, dict):
        return LatentFile(_codes(data, f"{path}"), None, {}, None)
    if "w_plus" not in data:
        raise InputError(f"{path}: .npz latent file without a 'w_plus' array (has {sorted(data)[:20]})")
    w = _codes(data["w_plus"], f"{path}: member 'w_plus'")
    meta = _meta(data["meta"], path) if "meta" in data else {}
    noise_idx = _indexed(data, "noise_", path)
    if noise_idx and (max(noise_idx) >= MAX_NOISE_MAPS or sorted(noise_idx) != list(range(len(noise_idx)))):
        raise InputError(
            f"{path}: noise members {sorted(noise_idx)[:8]} must be noise_0 .. noise_<L-1> with L <= {MAX_NOISE_MAPS}"
        )
    noise = [_finite(data[f"noise_{i}"], f"{path}: member 'noise_{i}'", 4) for i in sorted(noise_idx)] or None
    return LatentFile(w, noise, meta, _deltas(data, meta, len(w), path))


def _codes(arr: np.ndarray, source: str) -> torch.Tensor:
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"{source}: latent codes must be [n_styles, D] or [B, n_styles, D], got {arr.shape}")
    return _finite(arr, source, 3)


def _finite(arr: np.ndarray, source: str, ndim: int) -> torch.Tensor:
    if arr.ndim != ndim or arr.dtype.kind not in "biuf":
        raise InputError(f"{source}: must be a numeric array of {ndim} dimensions, got {arr.dtype} {arr.shape}")
    t = torch.from_numpy(np.array(arr, dtype=np.float32, order="C"))
    if not torch.isfinite(t).all():
        raise InputError(f"{source}: contains NaN or infinite values")
    return t


def _meta(arr: np.ndarray, path: Path) -> dict:
    if arr.ndim != 0 or arr.dtype.kind != "U":
        raise InputError(f"{path}: member 'meta' must be one JSON string, got {arr.dtype} {arr.shape}")
    text = str(arr[()])
    if len(text) > MAX_META_CHARS:
        raise InputError(f"{path}: member 'meta' is {len(text)} characters, at most {MAX_META_CHARS} accepted")
    if json_depth(text) > MAX_JSON_DEPTH:
        raise InputError(f"{path}: member 'meta' is JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise InputError(f"{path}: member 'meta' is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: member 'meta' must be a JSON object, got {type(meta).__name__}")
    return meta


def _indexed(data: dict, prefix: str, path: Path) -> list[int]:
    """The indices ``N`` of the members ``<prefix>N`` (decimal, non-negative)."""
    out = []
    for key in data:
        if key.startswith(prefix):
            suffix = key[len(prefix):]
            if not (suffix.isdecimal() and suffix.isascii() and len(suffix) <= 6):
                raise InputError(f"{path}: member {key!r}: expected {prefix}N with N a layer index 0, 1, 2 ...")
            out.append(int(suffix))
    return out


def _deltas(data: dict, meta: dict, batch: int, path: Path) -> list[torch.Tensor | None] | None:
    idx = _indexed(data, "delta_", path)
    if not idx:
        return None
    n = meta.get("n_weight_layers", max(idx) + 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_WEIGHT_LAYERS:
        raise InputError(f"{path}: meta 'n_weight_layers' = {str(n)[:40]!r}: expected an integer in 1..{MAX_WEIGHT_LAYERS}")
    deltas: list[torch.Tensor | None] = [None] * n
    for i in sorted(idx):
        source = f"{path}: member 'delta_{i}'"
        if i >= n:
            raise InputError(f"{source}: layer index {i} is outside 0..{n - 1} (meta 'n_weight_layers' = {n})")
        d = _finite(data[f"delta_{i}"], source, 5)
        if d.shape[0] not in (1, batch):
            raise InputError(f"{source}: offsets for {d.shape[0]} codes, but the file holds {batch} (expected 1 or {batch})")
        deltas[i] = d
    return deltas


def load_latent(path: str | os.PathLike) -> tuple[torch.Tensor, list[torch.Tensor] | None, dict]:
    """Read a latent file: ``(w_plus [B, n_styles, D], noise maps or None, meta)``.

    A single code ``[n_styles, D]`` is returned with a batch dimension of 1. Every member is
    checked (:func:`read_latent_file`).
    """
    f = read_latent_file(path)
    return f.w_plus, f.noise, f.meta


def load_weights_deltas(path: str | os.PathLike) -> list[torch.Tensor | None] | None:
    """The HyperStyle offsets stored in a ``.npz`` latent file (a list with one entry or None
    per generator weight layer), or None when the file has none."""
    return read_latent_file(path).deltas
