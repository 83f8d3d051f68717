"""Latent editing: directions, layer-wise style combination and local (input-space) edits.

* **Directions** (InterFaceGAN, GANSpace, ... that users bring): ``w + s · d`` for a range of
  strengths ``s``, optionally on a subset of layers::

      d = load_direction("smile.npy")                            # [512] or [n_styles, 512]
      ws = apply_direction(w_plus, d, strengths=[-3, 0, 3], layers=range(0, 8))

* **Style combination**: take some layers of one encoded image from another
  (``combine_styles(w_a, w_b, layers=range(0, 7))``: B's coarse styles on A).

* **Local editing** (the paper's Sec. 4.3): edit the *input* -- a label map or a sketch --
  and encode it again, so only that part of the face changes. Label maps are integer arrays
  ``[H, W]`` of class ids; :func:`transplant_labels` takes some classes' region from another
  map, :func:`paint_labels` sets a region to one class, :func:`paste_region` copies any
  region (a box or a mask) of another image, e.g. a sketch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = [
    "load_direction",
    "apply_direction",
    "combine_styles",
    "parse_strengths",
    "label_map_to_array",
    "transplant_labels",
    "paint_labels",
    "box_mask",
    "paste_region",
]

Box = tuple[int, int, int, int]


# --------------------------------------------------------------------------- directions


def load_direction(path: str | os.PathLike, n_styles: int | None = None, style_dim: int | None = None) -> torch.Tensor:
    """Read a latent direction: a ``.npy`` of shape ``[D]``, ``[1, D]`` or ``[n_styles, D]``.

    Returns ``[D]`` or ``[n_styles, D]`` float32 (not normalised: strengths are in the units of
    the file, as the direction's authors meant them).

    Raises:
        ValueError: unreadable file or a shape that does not fit ``n_styles`` / ``style_dim``.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), not a direction")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy direction ({e})") from None
    if isinstance(arr, np.lib.npyio.NpzFile):
        with arr:
            keys = list(arr.keys())
            if len(keys) != 1:
                raise ValueError(f"{path}: a .npz direction must hold exactly one array, found {keys}")
            arr = arr[keys[0]]
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path}: a direction must be numeric [D] or [n_styles, D], got {arr.dtype} {arr.shape}")
    if style_dim is not None and arr.shape[-1] != style_dim:
        raise ValueError(f"{path}: direction has {arr.shape[-1]} components but the model's styles have {style_dim}")
    if n_styles is not None and arr.ndim == 2 and arr.shape[0] != n_styles:
        raise ValueError(f"{path}: direction has {arr.shape[0]} rows but the model has {n_styles} style layers")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: direction contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


#: Most strengths one edit may ask for (each is a full image).
MAX_STRENGTHS = 256


def parse_strengths(spec: str) -> list[float]:
    """``"-3:3:7"`` (start:stop:count, inclusive) or ``"-2,0,2"`` -> 1 to :data:`MAX_STRENGTHS` finite floats."""
    try:
        if ":" in spec:
            start, stop, count = spec.split(":")
            n = int(count)
            if not 1 <= n <= MAX_STRENGTHS:
                raise ValueError
            values = np.linspace(float(start), float(stop), n).tolist()
        else:
            values = [float(s) for s in spec.split(",") if s.strip()]
        if not values or len(values) > MAX_STRENGTHS or not np.isfinite(values).all():
            raise ValueError
        return values
    except ValueError:
        raise ValueError(
            f"strengths {spec!r}: give 'start:stop:count' (e.g. -3:3:7, count 1-{MAX_STRENGTHS}) "
            "or a list of finite numbers like -2,0,2"
        ) from None


def _layer_mask(layers: Sequence[int] | None, n_styles: int, device) -> torch.Tensor:
    mask = torch.zeros(n_styles, 1, device=device)
    idx = range(n_styles) if layers is None else list(layers)
    for i in idx:
        if not 0 <= i < n_styles:
            raise ValueError(f"layer {i} is outside the model's 0-based style layers [0, {n_styles - 1}]")
        mask[i] = 1.0
    return mask


def apply_direction(
    w_plus: torch.Tensor,
    direction: torch.Tensor,
    strengths: Sequence[float],
    layers: Sequence[int] | None = None,
) -> torch.Tensor:
    """``w + s · d`` for each strength ``s`` (on ``layers`` only, all by default).

    Args:
        w_plus: one code ``[n_styles, D]`` (or ``[1, n_styles, D]``).
        direction: ``[D]`` (same for all layers) or ``[n_styles, D]``.
        strengths: the values of ``s``; ``s = 0`` returns ``w_plus`` unchanged.
        layers: 0-based layers to edit (None = all).

    Returns:
        ``[len(strengths), n_styles, D]``.
    """
    if w_plus.ndim == 3 and w_plus.shape[0] == 1:
        w_plus = w_plus[0]
    if w_plus.ndim != 2:
        raise ValueError(f"apply_direction edits one code [n_styles, D], got {tuple(w_plus.shape)}")
    n, d = w_plus.shape
    direction = torch.as_tensor(direction).to(w_plus)
    if direction.ndim == 1:
        direction = direction[None].expand(n, d)
    if direction.shape != (n, d):
        raise ValueError(f"direction of shape {tuple(direction.shape)} does not fit codes [{n}, {d}]")
    strengths = list(strengths)
    if not strengths:
        raise ValueError("apply_direction needs at least one strength")
    step = direction * _layer_mask(layers, n, w_plus.device).to(w_plus)
    s = torch.tensor(strengths, dtype=w_plus.dtype, device=w_plus.device)[:, None, None]
    return w_plus[None] + s * step[None]


def combine_styles(w_a: torch.Tensor, w_b: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """``w_a`` with the styles of ``layers`` (0-based) taken from ``w_b``.

    Shapes ``[n_styles, D]`` or ``[B, n_styles, D]`` (both the same); returns the shape of ``w_a``.
    Coarse layers (0-3) carry pose and face shape, middle ones (4-7) features and expression,
    fine ones (8+) colours and micro-structure (StyleGAN's observation, used in the paper).
    """
    if w_a.shape != w_b.shape or w_a.ndim not in (2, 3):
        raise ValueError(f"combine_styles needs two codes of one shape, got {tuple(w_a.shape)} and {tuple(w_b.shape)}")
    n = w_a.shape[-2]
    keep = _layer_mask(layers, n, w_a.device).to(w_a)
    return w_a * (1 - keep) + w_b.to(w_a) * keep


# --------------------------------------------------------------------------- local editing


def label_map_to_array(image: Image.Image | np.ndarray, label_nc: int | None = None) -> np.ndarray:
    """A label map -> ``[H, W]`` int64 class ids.

    Palette (``P``) and grayscale (``L``) images hold the ids directly (the CelebAMask-HQ
    files the original trains on); colour-coded RGB maps are decoded with the seg2face
    task's CelebAMask-HQ palette.
    """
    if isinstance(image, np.ndarray):
        arr = image
    elif image.mode in ("P", "L", "I", "I;16"):
        arr = np.asarray(image)
    else:
        from instyle.tasks.transforms.labels import labels_from_image

        arr = labels_from_image(image, label_nc or 19)
    if arr.ndim != 2:
        raise ValueError(f"a label map must be [H, W] class ids, got shape {arr.shape}")
    arr = arr.astype(np.int64)
    if label_nc is not None and (arr.min() < 0 or arr.max() >= label_nc):
        raise ValueError(f"label map has ids in [{arr.min()}, {arr.max()}] but the model knows {label_nc} classes")
    return arr


def transplant_labels(target: np.ndarray, source: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Take the region of ``classes`` from ``source``: inside the union of those classes'
    pixels in either map, ``source``'s labels replace ``target``'s (so ``target``'s old
    hair disappears where ``source`` has none, and ``source``'s hair appears where it has).
    Everything else keeps ``target``'s labels. Both ``[H, W]`` int arrays of one size."""
    if target.shape != source.shape:
        raise ValueError(f"label maps differ in size: {target.shape} vs {source.shape}; resize them to one size first")
    classes = list(classes)
    region = np.isin(target, classes) | np.isin(source, classes)
    return np.where(region, source, target)


def box_mask(shape: tuple[int, int], box: Box) -> np.ndarray:
    """``[H, W]`` bool mask of the box ``(left, top, right, bottom)`` in pixels (right/bottom exclusive)."""
    h, w = shape
    left, top, right, bottom = box
    if not (0 <= left < right <= w and 0 <= top < bottom <= h):
        raise ValueError(f"box {box} is not inside an image of {w}x{h} (left, top, right, bottom)")
    mask = np.zeros((h, w), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def paint_labels(labels: np.ndarray, mask: np.ndarray, label: int) -> np.ndarray:
    """``labels`` with every pixel of the bool ``mask`` set to class ``label``."""
    if mask.shape != labels.shape:
        raise ValueError(f"mask {mask.shape} and label map {labels.shape} differ in size")
    out = labels.copy()
    out[mask.astype(bool)] = label
    return out


def paste_region(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``target`` with the pixels under the bool ``mask [H, W]`` copied from ``source``
    (images ``[H, W]`` or ``[H, W, C]`` of one size: sketches, label maps, photos)."""
    if target.shape != source.shape:
        raise ValueError(f"images differ in size: {target.shape} vs {source.shape}; resize them to one size first")
    if mask.shape != target.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {target.shape[:2]}")
    m = mask.astype(bool)
    if target.ndim == 3:
        m = m[:, :, None]
    return np.where(m, source, target)
