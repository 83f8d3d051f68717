"""FFHQ-style face alignment with dlib, and pasting aligned results back.

Needs the optional ``faces`` extra (``dlib-bin``, ``face-recognition-models``); importing
this package does not import dlib -- the first detection does.
"""

from instyle.alignment.align import AlignedFace, align_face, align_faces
from instyle.alignment.detect import DETECTORS, Detection, detect_faces, face_landmarks
from instyle.alignment.ffhq import crop_to_source, feather_mask, ffhq_quad, paste_back, source_to_crop, warp_quad
from instyle.alignment.models import AlignmentUnavailable
from instyle.alignment.stylegan3_transform import StyleGANTransform, stylegan_transform

__all__ = [
    "AlignedFace",
    "AlignmentUnavailable",
    "DETECTORS",
    "Detection",
    "StyleGANTransform",
    "align_face",
    "align_faces",
    "crop_to_source",
    "detect_faces",
    "face_landmarks",
    "feather_mask",
    "ffhq_quad",
    "paste_back",
    "source_to_crop",
    "stylegan_transform",
    "warp_quad",
]
