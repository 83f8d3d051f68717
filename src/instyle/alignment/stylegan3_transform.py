"""The landmark transform between an aligned face crop and the unaligned crop of the same
face, for StyleGAN3's ``synthesis.input.transform`` (stylegan3-editing's
``get_stylegan_transform`` semantics).

From 68-point (dlib) landmarks of the aligned image and of the unaligned image:

* eye centres: the means of points 36-41 (``left``) and 42-47 (``right``);
* ``angle``: the angle in degrees between the two eye-to-eye vectors (arccos, in [0, 180]),
  replaced by ``360 - angle`` when the unaligned right eye is lower (larger y) than the left;
* the aligned image rotated by ``angle`` (PIL ``rotate``: counter-clockwise about the
  centre) is re-detected; ``translation = (unaligned left eye - rotated aligned left eye) /
  width`` of the aligned image;
* ``transform = [[cos, sin, tx], [-sin, cos, ty], [0, 0, 1]]`` and the generator takes its
  inverse (``inverse_transform``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["StyleGANTransform", "eye_centres", "rotation_from_eyes", "make_transform", "rotate_points_like_pil",
           "stylegan_transform"]


@dataclass(frozen=True)
class StyleGANTransform:
    """``rotation_angle`` (degrees), ``translation`` ``[2]``, ``transform`` and
    ``inverse_transform`` ``[3, 3]`` float64 (pass ``inverse_transform`` to the generator)."""

    rotation_angle: float
    translation: np.ndarray
    transform: np.ndarray
    inverse_transform: np.ndarray


def _landmarks(lm) -> np.ndarray:
    a = np.asarray(lm, dtype=np.float64)
    if a.shape != (68, 2) or not np.isfinite(a).all():
        raise ValueError(f"expected 68 finite (x, y) landmarks, got an array of shape {a.shape}")
    return a


def eye_centres(landmarks) -> tuple[np.ndarray, np.ndarray]:
    """``(left, right)``: means of points 36-41 and 42-47 of 68-point landmarks."""
    lm = _landmarks(landmarks)
    return lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)


def rotation_from_eyes(left_unaligned, right_unaligned, left_aligned, right_aligned) -> float:
    """Degrees between the eye-to-eye vectors; ``360 - r`` when the unaligned right eye is lower."""
    a = np.asarray(right_unaligned, np.float64) - np.asarray(left_unaligned, np.float64)
    b = np.asarray(right_aligned, np.float64) - np.asarray(left_aligned, np.float64)
    if not (np.linalg.norm(a) > 0 and np.linalg.norm(b) > 0):
        raise ValueError("the two eye centres coincide; no rotation can be measured")
    # clipped: parallel vectors can round to a cosine just above 1 (NaN from arccos; the
    # original never meets it as it detects the landmarks of both images separately)
    cos_r = float(np.clip(np.inner(a / np.linalg.norm(a), b / np.linalg.norm(b)), -1.0, 1.0))
    r = float(np.degrees(np.arccos(cos_r)))
    return 360 - r if right_unaligned[1] > left_unaligned[1] else r


def make_transform(translation, angle: float) -> np.ndarray:
    """``[[cos, sin, tx], [-sin, cos, ty], [0, 0, 1]]`` for ``angle`` in degrees."""
    m = np.eye(3)
    s, c = np.sin(angle / 360.0 * np.pi * 2), np.cos(angle / 360.0 * np.pi * 2)
    m[0, 0], m[0, 1], m[0, 2] = c, s, translation[0]
    m[1, 0], m[1, 1], m[1, 2] = -s, c, translation[1]
    return m


def rotate_points_like_pil(points, angle: float, width: int, height: int) -> np.ndarray:
    """Where PIL's ``Image.rotate(angle)`` (counter-clockwise about ``(width/2, height/2)``)
    moves the pixel positions ``points [N, 2]``."""
    p = np.asarray(points, np.float64)
    cx, cy = width / 2, height / 2
    t = np.radians(angle)
    x, y = p[:, 0] - cx, p[:, 1] - cy
    return np.stack([cx + x * np.cos(t) + y * np.sin(t), cy - x * np.sin(t) + y * np.cos(t)], axis=1)


def stylegan_transform(
    aligned_landmarks,
    unaligned_landmarks,
    rotated_aligned_landmarks: Callable[[float], np.ndarray] | None = None,
    width: int = 1024,
    height: int | None = None,
) -> StyleGANTransform:
    """The transform of the original's ``get_stylegan_transform``.

    Args:
        aligned_landmarks, unaligned_landmarks: ``[68, 2]`` landmarks in each image.
        rotated_aligned_landmarks: ``angle -> [68, 2]``: landmarks detected on the aligned image
            rotated by ``angle`` (the original re-detects them); None rotates the aligned
            landmarks geometrically instead.
        width, height: size of the aligned image (the translation is divided by the width).
    """
    left_a, right_a = eye_centres(aligned_landmarks)
    left_u, right_u = eye_centres(unaligned_landmarks)
    angle = rotation_from_eyes(left_u, right_u, left_a, right_a)
    if rotated_aligned_landmarks is None:
        rotated = rotate_points_like_pil(_landmarks(aligned_landmarks), angle, width, height or width)
    else:
        rotated = rotated_aligned_landmarks(angle)
    left_r, _ = eye_centres(rotated)
    translation = (left_u - left_r) / width
    transform = make_transform(translation, angle)
    return StyleGANTransform(angle, translation, transform, np.linalg.inv(transform))
