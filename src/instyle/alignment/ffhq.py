"""The FFHQ alignment recipe and its inverse.

Geometry (continuous pixel coordinates: pixel ``(i, j)`` covers ``[j, j+1] x [i, i+1]``,
its centre is ``(j + 0.5, i + 0.5)``; dlib's integer landmarks are pixel centres):

* ``e0, e1``: mean of the 6 landmarks of each eye; ``m0, m1``: mouth corners (48, 54).
* ``eye_avg = (e0 + e1) / 2``, ``eye_to_eye = e1 - e0``, ``eye_to_mouth = (m0 + m1) / 2 - eye_avg``.
* the crop's x axis is ``eye_to_eye - (-eye_to_mouth.y, eye_to_mouth.x)`` (both vectors vote for
  the horizontal: for an upright face, ``(d, 0) - (-m, 0)``), normalised and scaled to half the crop side ``max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)``; its y axis is x
  rotated by +90 degrees; the centre is ``eye_avg + 0.1 eye_to_mouth``.
* the crop is the square ``centre +- x +- y`` (a quad in the source), resampled to ``size``.

The crop <-> source map is affine: ``source = c + x (2u/S - 1) + y (2v/S - 1)`` for crop
coordinates ``(u, v)`` in ``[0, S]``. Parts of the quad outside the photo are filled FFHQ-style:
reflected, blurred and faded towards the median colour.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from instyle.errors import InputError

__all__ = ["ffhq_quad", "crop_to_source", "source_to_crop", "warp_quad", "paste_back", "feather_mask", "warp_to_source"]


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """Source-image quad ``[4, 2]`` (top-left, bottom-left, bottom-right, top-right of the crop).

    Args:
        landmarks: ``[68, 2]`` dlib points in continuous pixel coordinates.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks [68, 2], got {lm.shape}")
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x = x / np.hypot(*x) * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.array([-x[1], x[0]])
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def _axes(quad: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = np.asarray(quad, dtype=np.float64)
    c = q.mean(0)
    x = (q[3] - q[0]) / 2  # top-left -> top-right
    y = (q[1] - q[0]) / 2  # top-left -> bottom-left
    return c, x, y


def crop_to_source(points: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """Map ``[N, 2]`` crop coordinates (crop of side ``size``) to source coordinates."""
    c, x, y = _axes(quad)
    p = np.asarray(points, dtype=np.float64) * (2.0 / size) - 1.0
    return c + p[..., :1] * x + p[..., 1:2] * y


def source_to_crop(points: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """Map ``[N, 2]`` source coordinates into the crop of side ``size`` (inverse of :func:`crop_to_source`)."""
    c, x, y = _axes(quad)
    inv = np.linalg.inv(np.stack([x, y], axis=1))
    ab = (np.asarray(points, dtype=np.float64) - c) @ inv.T
    return (ab + 1.0) * (size / 2.0)


def _pad_ffhq(img: Image.Image, pad: tuple[int, int, int, int], qsize: float) -> Image.Image:
    """Reflect-pad by ``(left, top, right, bottom)``; the padding fades to a blurred, median-coloured fill."""
    left, top, right, bottom = pad
    a = np.asarray(img, dtype=np.float32)
    a = np.pad(a, ((top, bottom), (left, right), (0, 0)), mode="reflect")
    h, w = a.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    # Distance into the padding, as a fraction of that side's pad width (0 inside the photo).
    dx = np.maximum((left - xx) / max(left, 1), (xx - (w - 1 - right)) / max(right, 1))
    dy = np.maximum((top - yy) / max(top, 1), (yy - (h - 1 - bottom)) / max(bottom, 1))
    t = np.clip(np.maximum(dx, dy), 0.0, 1.0)[..., None].astype(np.float32)
    radius = max(1.0, qsize * 0.02)
    blurred = np.asarray(
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius)), np.float32
    )
    a = a + (blurred - a) * np.clip(t * 3.0 + 1.0, 0.0, 1.0) * (t > 0)
    a = a + (np.median(a, axis=(0, 1)) - a) * t
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def warp_quad(image: Image.Image, quad: np.ndarray, size: int, supersample: int = 2) -> Image.Image:
    """Resample the source ``quad`` into a ``size x size`` RGB crop (FFHQ recipe).

    Large faces are first shrunk (antialiased) so the quad spans about ``2 * size`` pixels; the
    quad is then warped bilinearly at ``supersample * size`` and reduced with Lanczos.
    """
    img = image.convert("RGB")
    q = np.asarray(quad, dtype=np.float64).copy()
    qsize = float(np.hypot(*(q[3] - q[0])))
    shrink = int(math.floor(qsize / size * 0.5))
    if shrink > 1:
        new = (max(1, round(img.width / shrink)), max(1, round(img.height / shrink)))
        q *= np.array([new[0] / img.width, new[1] / img.height])
        img = img.resize(new, Image.Resampling.BOX)
        qsize /= shrink
    # Crop to the quad (plus a border), padding where the quad leaves the photo.
    border = max(round(qsize * 0.1), 3)
    lo = np.floor(q.min(0)).astype(int) - border
    hi = np.ceil(q.max(0)).astype(int) + border
    box = (max(lo[0], 0), max(lo[1], 0), min(hi[0], img.width), min(hi[1], img.height))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise InputError(f"quad {q.round(1).tolist()} lies outside the {img.width}x{img.height} image")
    img = img.crop(box)
    q -= np.array(box[:2], dtype=np.float64)
    pad = (max(-lo[0], 0), max(-lo[1], 0), max(hi[0] - (box[0] + img.width), 0), max(hi[1] - (box[1] + img.height), 0))
    if any(pad):
        img = _pad_ffhq(img, pad, qsize)
        q += np.array(pad[:2], dtype=np.float64)
    work = size * max(1, int(supersample))
    out = img.transform((work, work), Image.Transform.QUAD, tuple(q.flatten()), Image.Resampling.BILINEAR)
    if work != size:
        out = out.resize((size, size), Image.Resampling.LANCZOS)
    return out


def feather_mask(size: int, feather: float = 0.1) -> np.ndarray:
    """``[size, size]`` float32 mask: 1 inside, a smooth ramp to 0 over ``feather * size`` at the edges."""
    if not 0.0 <= feather <= 0.5:
        raise ValueError(f"feather={feather} must be in [0, 0.5]")
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    d = np.minimum(centres, 1.0 - centres)
    ramp = np.ones_like(d) if feather == 0 else np.clip(d / feather, 0.0, 1.0)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    return np.outer(ramp, ramp).astype(np.float32)


def warp_to_source(
    source_size: tuple[int, int],
    aligned: Image.Image,
    quad: np.ndarray,
    weights: np.ndarray,
) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """An aligned crop and its blend weights warped onto the photo's pixels over ``quad``'s
    bounding box (what :func:`paste_back` blends).

    Args:
        source_size: the photo's ``(width, height)``.
        aligned: a square RGB image covering ``quad``.
        quad: the crop's source quad from alignment.
        weights: ``[S, S]`` float32 weights in crop space (``S`` the crop's side).

    Returns:
        ``((x0, y0, x1, y1), warped [h, w, 3] float32 in [0, 255], weights [h, w] float32)``
        over the box ``x0:x1, y0:y1`` of the photo (outside the crop both are 0), or None
        where the quad misses the photo.
    """
    crop = aligned.convert("RGB")
    if crop.width != crop.height:
        raise ValueError(f"aligned image must be square, got {crop.width}x{crop.height}")
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape != (crop.height, crop.width):
        raise ValueError(f"mask shape {weights.shape} differs from the crop's {(crop.height, crop.width)}")
    # Avoid aliasing when the crop is much larger than its footprint in the source.
    footprint = float(np.hypot(*(np.asarray(quad)[3] - np.asarray(quad)[0])))
    if crop.width > 2 * footprint:
        side = max(8, int(round(footprint * 1.5)))
        crop = crop.resize((side, side), Image.Resampling.LANCZOS)
        weights = np.asarray(Image.fromarray(weights).resize((side, side), Image.Resampling.BILINEAR))
    size = crop.width
    # Only the quad's bounding box of the source changes.
    q = np.asarray(quad, dtype=np.float64)
    x0, y0 = np.maximum(np.floor(q.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(q.max(0)).astype(int), [source_size[0], source_size[1]])
    if x1 <= x0 or y1 <= y0:
        return None
    c, x, y = _axes(q)
    inv = np.linalg.inv(np.stack([x, y], axis=1))  # source offset -> (a, b) in [-1, 1]
    # PIL AFFINE maps output (X, Y) (region coordinates) to input (u, v) = A [X, Y] + t.
    a = inv * (size / 2.0)
    t = a @ (np.array([x0, y0], dtype=np.float64) - c) + size / 2.0
    data = (a[0, 0], a[0, 1], t[0], a[1, 0], a[1, 1], t[1])
    region = (int(x1 - x0), int(y1 - y0))
    warped = crop.transform(region, Image.Transform.AFFINE, data, Image.Resampling.BICUBIC)
    wmask = Image.fromarray(weights).transform(region, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
    m = np.clip(np.asarray(wmask, dtype=np.float32), 0.0, 1.0)
    return (int(x0), int(y0), int(x1), int(y1)), np.asarray(warped, dtype=np.float32), m


def paste_back(
    source: Image.Image,
    aligned: Image.Image,
    quad: np.ndarray,
    feather: float = 0.1,
    mask: np.ndarray | None = None,
) -> Image.Image:
    """Put an aligned crop (or an edit / reconstruction of it, any size) back into ``source``.

    Args:
        source: the original photo.
        aligned: a square image covering ``quad`` (e.g. the pSp output of the aligned crop).
        quad: the crop's source quad from alignment.
        feather: width of the blending ramp at the crop's edges, as a fraction of its side.
        mask: optional ``[S, S]`` blend weights in ``[0, 1]`` in crop space (default: feathered square).

    Returns:
        An RGB image of ``source``'s size.
    """
    src = source.convert("RGB")
    side = aligned.width
    weights = feather_mask(side, feather) if mask is None else np.asarray(mask, dtype=np.float32)
    warp = warp_to_source(src.size, aligned, quad, weights)
    if warp is None:
        return src.copy()
    (x0, y0, x1, y1), warped, m = warp
    out = np.asarray(src, dtype=np.float32).copy()
    patch = out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = patch + (warped - patch) * m[..., None]
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
