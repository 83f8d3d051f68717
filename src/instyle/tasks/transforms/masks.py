"""Inpainting masks: the paper's symmetric triangle and random free-form strokes.

A mask is a ``[H, W]`` bool array, ``True`` = hidden (to be inpainted).

Triangle (precise definition): an isosceles triangle symmetric about the vertical centre line
``x = W/2`` with apex ``(W/2, apex_y * H)`` and base from ``((0.5 - half_base) * W, base_y * H)``
to ``((0.5 + half_base) * W, base_y * H)``. A pixel is hidden when its centre
``(j + 0.5, i + 0.5)`` lies inside or on the triangle, so column ``j`` and column ``W - 1 - j``
are always identical (exact left-right symmetry).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from instyle.errors import InputError

__all__ = ["triangle_mask", "random_stroke_mask", "apply_mask"]


def triangle_mask(
    height: int, width: int | None = None, apex_y: float = 0.45, base_y: float = 1.0, half_base: float = 0.3
) -> np.ndarray:
    """The symmetric triangular mask ``[H, W]`` (defaults hide the mouth, chin and lower cheeks)."""
    width = height if width is None else width
    if not (0.0 <= apex_y <= 1.0 and 0.0 <= base_y <= 1.0 and apex_y != base_y and 0.0 < half_base <= 0.5):
        raise ValueError(
            f"triangle needs apex_y, base_y in [0, 1] (different) and half_base in (0, 0.5]; "
            f"got apex_y={apex_y}, base_y={base_y}, half_base={half_base}"
        )
    yc = (np.arange(height) + 0.5)[:, None] / height
    xc = (np.arange(width) + 0.5)[None, :] / width
    t = (yc - apex_y) / (base_y - apex_y)  # 0 at the apex, 1 at the base
    # |x - 0.5| is symmetric in j <-> W-1-j up to float rounding; compare on a rounded value.
    dist = np.round(np.abs(xc - 0.5), 12)
    return (t >= 0) & (t <= 1) & (dist <= np.round(t * half_base, 12))


def random_stroke_mask(
    height: int, width: int | None = None, rng: np.random.Generator | None = None, strokes: tuple[int, int] = (2, 5)
) -> np.ndarray:
    """Random free-form brush strokes ``[H, W]`` (zig-zag lines of random width), like common inpainting masks."""
    width = height if width is None else width
    rng = np.random.default_rng() if rng is None else rng
    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    for _ in range(int(rng.integers(strokes[0], strokes[1] + 1))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        w = int(rng.uniform(0.04, 0.1) * side)
        pts = [(x, y)]
        for _ in range(int(rng.integers(3, 8))):
            angle = rng.uniform(0, 2 * np.pi)
            step = rng.uniform(0.1, 0.25) * side
            x = float(np.clip(x + step * np.cos(angle), 0, width))
            y = float(np.clip(y + step * np.sin(angle), 0, height))
            pts.append((x, y))
        draw.line(pts, fill=255, width=max(1, w), joint="curve")
        for px, py in pts:
            draw.ellipse((px - w / 2, py - w / 2, px + w / 2, py + w / 2), fill=255)
    return np.asarray(img) > 0


def apply_mask(image: Image.Image, mask: np.ndarray, fill: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """``image`` (RGB) with the hidden pixels set to ``fill``."""
    arr = np.array(image.convert("RGB"))
    if mask.shape != arr.shape[:2]:
        raise InputError(f"mask shape {mask.shape} differs from the image's {arr.shape[:2]}")
    arr[mask] = np.asarray(fill, dtype=np.uint8)
    return Image.fromarray(arr)
