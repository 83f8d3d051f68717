"""Segmentation label maps: class indices, colour palettes, one-hot encoding, resizing.

A label map is a ``[H, W]`` integer array of class indices in ``[0, label_nc)``. On disk it is
either an index image (PIL mode ``L``/``P``/``I``, pixel value = class, as CelebAMask-HQ and
most face parsers write them) or a colour image using a palette (e.g. :data:`CELEBAMASK_PALETTE`).
Label maps are only ever resized with nearest neighbour: interpolating class indices would
invent classes along every boundary.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from instyle.errors import InstyleError

__all__ = [
    "CELEBAMASK_CLASSES",
    "CELEBAMASK_PALETTE",
    "LabelError",
    "default_palette",
    "check_labels",
    "resize_labels",
    "labels_to_onehot",
    "onehot_to_labels",
    "labels_to_palette_image",
    "palette_to_labels",
    "labels_from_image",
]

#: The 19 CelebAMask-HQ classes, index = position (0 = background).
CELEBAMASK_CLASSES = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip

#: CelebAMask-HQ's visualisation colours, one RGB triple per class of :data:`CELEBAMASK_CLASSES`.
CELEBAMASK_PALETTE = np.array(
    [
        [0, 0, 0], [204, 0, 0], [76, 153, 0], [204, 204, 0], [51, 51, 255], [204, 0, 204], [0, 255, 255],
        [255, 204, 204], [102, 51, 0], [255, 0, 0], [102, 204, 0], [255, 255, 0], [0, 0, 153], [0, 0, 204],
        [255, 51, 153], [0, 204, 204], [0, 51, 0], [255, 153, 51], [0, 204, 0],
    ],
    dtype=np.uint8,
)  # fmt: skip


class LabelError(InstyleError, ValueError):
    """A label map is unusable (values out of range, unknown colours, wrong shape)."""


def default_palette(label_nc: int) -> np.ndarray:
    """``[label_nc, 3]`` uint8 colours: CelebAMask-HQ's first, then deterministic distinct extras."""
    if label_nc <= len(CELEBAMASK_PALETTE):
        return CELEBAMASK_PALETTE[:label_nc].copy()
    rng = np.random.default_rng(label_nc)
    extra = rng.integers(0, 256, size=(label_nc - len(CELEBAMASK_PALETTE), 3), dtype=np.uint8)
    return np.concatenate([CELEBAMASK_PALETTE, extra])


def check_labels(labels: np.ndarray, label_nc: int, name: str = "label map") -> np.ndarray:
    """``labels`` as int64 ``[H, W]``; :class:`LabelError` naming the bad values when out of range."""
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise LabelError(f"{name}: expected a [H, W] label map, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) and not np.all(np.mod(arr, 1) == 0):
        raise LabelError(f"{name}: label values must be integers (got dtype {arr.dtype} with fractions)")
    arr = arr.astype(np.int64)
    bad = np.unique(arr[(arr < 0) | (arr >= label_nc)])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
        raise LabelError(
            f"{name}: label values {shown} are outside [0, {label_nc - 1}] for label_nc={label_nc}; "
            "pass the right label_nc or a colour map with the matching palette"
        )
    return arr


def resize_labels(labels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a ``[H, W]`` label map to ``size`` (side or ``(W, H)``)."""
    wh = (size, size) if isinstance(size, int) else tuple(size)
    arr = np.asarray(labels)
    if (arr.shape[1], arr.shape[0]) == wh:
        return arr.copy()
    img = Image.fromarray(arr.astype(np.int32))  # mode "I": no palette, no clipping at 255
    return np.asarray(img.resize(wh, Image.Resampling.NEAREST)).astype(arr.dtype)


def labels_to_onehot(labels: np.ndarray, label_nc: int) -> torch.Tensor:
    """``[H, W]`` class indices -> ``[label_nc, H, W]`` float32 one-hot (sums to 1 per pixel)."""
    arr = torch.from_numpy(check_labels(labels, label_nc))
    return torch.nn.functional.one_hot(arr, label_nc).permute(2, 0, 1).float()


def onehot_to_labels(onehot: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` scores or one-hot -> ``[H, W]`` int64 class indices (argmax)."""
    return onehot.argmax(0).cpu().numpy()


def labels_to_palette_image(labels: np.ndarray, palette: np.ndarray | None = None) -> Image.Image:
    """An index image (mode ``P``: pixel values are the classes, shown in the palette's colours)."""
    arr = np.asarray(labels)
    if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
        raise LabelError("a palette image holds classes 0..255 only")
    pal = default_palette(int(arr.max(initial=0)) + 1) if palette is None else np.asarray(palette, dtype=np.uint8)
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(pal)] = pal[:256]
    img = Image.fromarray(arr.astype(np.uint8))
    img.putpalette(flat.flatten().tolist())  # "L" -> "P", pixel values unchanged
    return img


def palette_to_labels(rgb: np.ndarray, palette: np.ndarray, tolerance: float = 40.0, name: str = "label map") -> np.ndarray:
    """``[H, W, 3]`` colour map -> ``[H, W]`` classes by nearest palette colour.

    Colours farther than ``tolerance`` (Euclidean, 0-255 units) from every palette entry raise
    :class:`LabelError` (a photo or a map drawn with another palette); the tolerance absorbs
    JPEG noise.
    """
    arr = np.asarray(rgb, dtype=np.int32)[..., :3]
    pal = np.asarray(palette, dtype=np.int32)
    colours, inverse = np.unique(arr.reshape(-1, 3), axis=0, return_inverse=True)
    d = np.sqrt(((colours[:, None, :] - pal[None, :, :]) ** 2).sum(-1))
    nearest = d.argmin(1)
    far = d[np.arange(len(colours)), nearest] > tolerance
    if far.any():
        frac = np.isin(inverse.reshape(-1), np.flatnonzero(far)).mean()
        raise LabelError(
            f"{name}: {far.sum()} colour(s) covering {frac:.1%} of the pixels (e.g. {colours[far][0].tolist()}) "
            f"are not in the {len(pal)}-class palette"
        )
    return nearest[inverse.reshape(-1)].reshape(arr.shape[:2]).astype(np.int64)


def labels_from_image(image: Image.Image, label_nc: int, palette: np.ndarray | None = None, name: str = "label map"):
    """A label-map file as ``[H, W]`` int64 classes, whatever its encoding.

    Index images (``L``, ``P``, ``I``, or RGB with R=G=B) carry the class as the pixel value; other
    colour images are decoded with ``palette`` (default :func:`default_palette`).
    """
    if image.mode in ("L", "P", "I", "I;16"):
        return check_labels(np.asarray(image), label_nc, name)  # for "P", palette indices are the classes
    rgb = np.asarray(image.convert("RGB"))
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]) and rgb.max() < label_nc:
        return check_labels(rgb[..., 0], label_nc, name)
    pal = default_palette(label_nc) if palette is None else palette
    return check_labels(palette_to_labels(rgb, pal, name=name), label_nc, name)
