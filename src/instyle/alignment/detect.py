"""Face detection and 68-point landmarks with dlib.

Detectors: ``hog`` (fast, frontal-ish faces of at least ~40 px after upsampling), ``cnn``
(dlib's MMOD CNN: also near-profile and rotated faces, several times slower on CPU) and
``auto`` (HOG first, CNN only when HOG finds nothing). Detection runs on a copy shrunk to
``max_side`` for speed (CNN: at most :data:`CNN_MAX_SIDE`, one upsampling level less than
HOG, which keeps it to seconds on a CPU; faces under ~80 px of that copy are then missed);
landmarks are always fitted on the full-resolution image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from instyle.alignment.models import cnn_detector, hog_detector, require_dlib, shape_predictor
from instyle.utils.config import check_choice

__all__ = ["CNN_MAX_SIDE", "DEFAULT_THRESHOLDS", "DETECTORS", "Detection", "detect_faces", "face_landmarks"]

DETECTORS = ("auto", "hog", "cnn")
#: Longest side of the copy the CNN detector runs on.
CNN_MAX_SIDE = 640
#: Default minimum scores: dlib's own for HOG; CNN (MMOD) confidences of real faces are ~1.
DEFAULT_THRESHOLDS = {"hog": 0.0, "cnn": 0.3}


@dataclass(frozen=True)
class Detection:
    """One detected face. ``box`` is ``(left, top, right, bottom)`` in original image pixels."""

    box: tuple[float, float, float, float]
    score: float
    detector: str

    @property
    def area(self) -> float:
        left, top, right, bottom = self.box
        return max(0.0, right - left) * max(0.0, bottom - top)


def _as_uint8_rgb(image) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got shape {arr.shape} dtype {arr.dtype}")
    return np.ascontiguousarray(arr)


def _shrunk(arr: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    h, w = arr.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return arr, 1.0
    from PIL import Image

    scale = max_side / max(h, w)
    small = Image.fromarray(arr).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    return np.asarray(small), scale


def _run(kind: str, arr: np.ndarray, upsample: int, threshold: float) -> list[tuple[tuple[float, float, float, float], float]]:
    if kind == "hog":
        rects, scores, _ = hog_detector().run(arr, upsample, threshold)
        return [((r.left(), r.top(), r.right(), r.bottom()), float(s)) for r, s in zip(rects, scores)]
    found = cnn_detector()(arr, upsample)
    return [
        ((d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()), float(d.confidence))
        for d in found
        if d.confidence >= threshold
    ]


def detect_faces(
    image, detector: str = "auto", upsample: int = 1, max_side: int | None = 1024, threshold: float | None = None
) -> list[Detection]:
    """Faces in ``image`` (PIL image or ``[H, W, 3]`` uint8 RGB array), largest first.

    Args:
        detector: ``hog``, ``cnn`` or ``auto`` (HOG, then CNN when HOG finds none).
        upsample: dlib's pyramid upsampling count (1 finds faces down to ~40 px).
        max_side: detect on a copy whose longer side is at most this (``None``: full size).
        threshold: minimum detector score (default :data:`DEFAULT_THRESHOLDS`; real faces
            score about 1-3 with HOG). Lower it for tiny or blurred faces.
    """
    check_choice("detector", detector, DETECTORS)
    arr = _as_uint8_rgb(image)
    kinds = ["hog", "cnn"] if detector == "auto" else [detector]
    out: list[Detection] = []
    for kind in kinds:
        if kind == "hog":
            small, scale = _shrunk(arr, max_side)
            levels = upsample
        else:
            small, scale = _shrunk(arr, min(max_side or CNN_MAX_SIDE, CNN_MAX_SIDE))
            levels = max(0, upsample - 1)
        limit = DEFAULT_THRESHOLDS[kind] if threshold is None else threshold
        found = _run(kind, small, levels, limit)
        out = [Detection(tuple(v / scale for v in box), score, kind) for box, score in found]
        if out:
            break
    return sorted(out, key=lambda d: d.area, reverse=True)


def face_landmarks(image, box: tuple[float, float, float, float]) -> np.ndarray:
    """The 68 dlib landmarks ``[68, 2]`` (x, y in pixels, float64) of the face in ``box``."""
    dlib = require_dlib()
    arr = _as_uint8_rgb(image)
    rect = dlib.rectangle(*(int(round(v)) for v in box))
    shape = shape_predictor()(arr, rect)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
