"""Pencil sketches from photos: the classic colour-dodge filter plus a simplification step.

1. pencil filter: grayscale -> invert -> Gaussian blur -> colour-dodge blend of the gray
   image with the blurred negative: white paper with dark strokes where the photo has edges.
2. simplification, so the result looks drawn rather than filtered: the photo is smoothed a
   little first (skin and hair texture would become speckles), its blacks are lifted (colour
   dodge keeps flat black areas black; lifted, they turn paper-white), stroke darkness is normalised
   by its ``percentile`` (same look for low- and high-contrast photos), a soft threshold turns
   faint strokes white and strong ones black, and a median filter removes isolated dots.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["pencil_sketch", "color_dodge"]


def color_dodge(base: np.ndarray, blend: np.ndarray) -> np.ndarray:
    """Colour-dodge blend of float arrays in ``[0, 255]``: ``base * 255 / (255 - blend)``, clipped."""
    return np.clip(base * 255.0 / np.maximum(255.0 - blend, 1e-3), 0.0, 255.0)


def pencil_sketch(
    photo: Image.Image,
    blur: float = 0.01,
    simplify: bool = True,
    smooth: float = 0.004,
    percentile: float = 90.0,
    low: float = 0.4,
    high: float = 0.9,
    despeckle: int = 3,
    floor: float = 96.0,
) -> Image.Image:
    """Sketch of ``photo`` as an ``L`` image of the same size: dark lines on white (255).

    Args:
        blur: Gaussian radius of the dodge step, as a fraction of the longer side (line width).
        simplify: apply the simplification step (``False``: the raw pencil filter).
        smooth: pre-smoothing radius as a fraction of the longer side.
        percentile: stroke darkness is divided by this percentile of itself.
        low, high: normalised darkness below ``low`` becomes white, above ``high`` black.
        despeckle: median filter size (odd; 0 disables).
        floor: gray level black is lifted to before the dodge (flat dark areas stay white).
    """
    side = max(photo.size)
    gray_img = photo.convert("L")
    if simplify and smooth > 0:
        gray_img = gray_img.filter(ImageFilter.GaussianBlur(smooth * side))
    gray = np.asarray(gray_img, dtype=np.float32)
    if simplify and floor > 0:
        # Colour dodge keeps black black; lifting the blacks makes flat dark areas paper-white too.
        gray = floor + gray * ((255.0 - floor) / 255.0)
    negative = Image.fromarray((255 - gray).astype(np.uint8))
    blurred = np.asarray(negative.filter(ImageFilter.GaussianBlur(max(0.5, blur * side))), dtype=np.float32)
    soft = color_dodge(gray, blurred)
    if not simplify:
        return Image.fromarray(np.rint(soft).astype(np.uint8))
    # Normalise stroke darkness, but never amplify faint noise of a nearly flat image.
    darkness = (255.0 - soft) / max(float(np.percentile(255.0 - soft, percentile)), 24.0)
    paper = 1.0 - np.clip((darkness - low) / (high - low), 0.0, 1.0)
    out = Image.fromarray(np.rint(paper * 255.0).astype(np.uint8))
    if despeckle and despeckle > 1:
        out = out.filter(ImageFilter.MedianFilter(despeckle | 1))
    return out
