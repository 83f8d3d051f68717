"""Detect, landmark and FFHQ-align every face of a photo."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from instyle.alignment.detect import Detection, detect_faces, face_landmarks
from instyle.alignment.ffhq import ffhq_quad, paste_back, source_to_crop, warp_quad
from instyle.utils.config import check_positive_int

__all__ = ["AlignedFace", "align_faces", "align_face"]


@dataclass(frozen=True)
class AlignedFace:
    """One aligned face.

    Attributes:
        image: the ``size x size`` RGB crop.
        quad: ``[4, 2]`` source coordinates of the crop's top-left, bottom-left, bottom-right, top-right.
        landmarks: ``[68, 2]`` dlib landmarks in source coordinates (continuous, pixel centres at +0.5).
        detection: the detector's box and score.
    """

    image: Image.Image
    quad: np.ndarray
    landmarks: np.ndarray
    detection: Detection

    @property
    def size(self) -> int:
        return self.image.width

    def landmarks_in_crop(self) -> np.ndarray:
        """``[68, 2]`` landmarks in crop pixel coordinates."""
        return source_to_crop(self.landmarks, self.quad, self.size)

    def paste_into(self, source: Image.Image, edited: Image.Image | None = None, feather: float = 0.1) -> Image.Image:
        """``source`` with ``edited`` (default: this crop) pasted back where the face was."""
        return paste_back(source, self.image if edited is None else edited, self.quad, feather=feather)


def align_faces(
    image: Image.Image,
    size: int = 1024,
    all_faces: bool = False,
    detector: str = "auto",
    upsample: int = 1,
    extra_threshold: float = 0.5,
) -> list[AlignedFace]:
    """FFHQ-aligned crops of the faces in ``image``, largest first (empty list: no face found).

    Args:
        image: any PIL image (converted to RGB).
        size: side of the crops (1024 as FFHQ, 256 as pSp's input; any positive size).
        all_faces: every detected face instead of only the largest.
        detector: ``hog``, ``cnn`` or ``auto`` (see :mod:`instyle.alignment.detect`).
        upsample: detector upsampling (raise it for tiny faces).
        extra_threshold: with ``all_faces``, faces other than the largest need at least this
            detector score (background blobs score 0-0.3 with HOG, real faces 1-3).
    """
    check_positive_int("size", size)
    rgb = image.convert("RGB")
    arr = np.asarray(rgb)
    detections = detect_faces(arr, detector=detector, upsample=upsample)
    detections = detections[:1] + [d for d in detections[1:] if all_faces and d.score >= extra_threshold]
    out = []
    for det in detections:
        lm = face_landmarks(arr, det.box) + 0.5
        quad = ffhq_quad(lm)
        out.append(AlignedFace(warp_quad(rgb, quad, size), quad, lm, det))
    return out


def align_face(image: Image.Image, size: int = 1024, detector: str = "auto") -> AlignedFace | None:
    """The largest face of ``image`` aligned, or ``None`` when no face is found."""
    faces = align_faces(image, size=size, detector=detector)
    return faces[0] if faces else None
