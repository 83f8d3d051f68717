"""Approximate CelebAMask-HQ label maps drawn from the 68 dlib landmarks.

We ship no face parser, so ``instyle prepare seg2face`` draws label maps from landmarks:
polygons for the skin (jaw line + a forehead raised above the brows), brows (a band under
each brow's landmarks), eyes, nose (bridge widened, nostrils), lips and mouth; hair and neck
follow simple rules (hair: a band around the upper head; neck: below the jaw); everything else
is background. Classes follow :data:`~instyle.tasks.transforms.labels.CELEBAMASK_CLASSES`;
``l_``/``r_`` mean the *subject's* left/right (dlib points 42-47 are the subject's left eye).
Real parser output is better and is accepted wherever a label map is.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from instyle.tasks.transforms.labels import CELEBAMASK_CLASSES

__all__ = ["labels_from_landmarks"]

_C = {name: i for i, name in enumerate(CELEBAMASK_CLASSES)}


def _poly(draw: ImageDraw.ImageDraw, points: np.ndarray, label: int) -> None:
    # Continuous coordinates (pixel centres at +0.5) -> PIL's pixel-index coordinates.
    draw.polygon([(float(x) - 0.5, float(y) - 0.5) for x, y in points], fill=label)


def labels_from_landmarks(landmarks: np.ndarray, size: tuple[int, int], hair: bool = True) -> np.ndarray:
    """A ``[H, W]`` uint8 label map for a face with ``landmarks`` (``[68, 2]``, continuous coordinates).

    Args:
        size: ``(W, H)`` of the image the landmarks belong to.
        hair: draw the hair band (off: background there).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks [68, 2], got {lm.shape}")
    eye_r, eye_l = lm[36:42].mean(0), lm[42:48].mean(0)
    d = float(np.hypot(*(eye_l - eye_r)))  # the face's length unit
    right = (eye_l - eye_r) / max(d, 1e-6)  # towards the subject's left (image right when upright)
    up = np.array([right[1], -right[0]])  # perpendicular, towards the top of the head
    jaw = lm[0:17]
    brows = lm[17:27]
    centre = lm[27:31].mean(0)

    img = Image.new("L", size, _C["background"])
    draw = ImageDraw.Draw(img)
    forehead = brows[::-1] + up * 0.55 * d
    if hair:
        # Scaled-up upper head outline: cheeks 20% out, crown one eye distance above the forehead.
        outline = np.concatenate([centre + (jaw[:6] - centre) * 1.25, centre + (jaw[11:] - centre) * 1.25])
        crown = centre + (forehead - centre) * 1.2 + up * 0.6 * d
        _poly(draw, np.concatenate([outline[:6], outline[6:], crown]), _C["hair"])
    neck = np.stack([jaw[5], jaw[11], jaw[11] - up * 2.5 * d, jaw[5] - up * 2.5 * d])
    _poly(draw, neck, _C["neck"])
    _poly(draw, np.concatenate([jaw, forehead]), _C["skin"])
    band = 0.13 * d
    _poly(draw, np.concatenate([lm[17:22], lm[21:16:-1] - up * band]), _C["r_brow"])
    _poly(draw, np.concatenate([lm[22:27], lm[26:21:-1] - up * band]), _C["l_brow"])
    _poly(draw, lm[36:42], _C["r_eye"])
    _poly(draw, lm[42:48], _C["l_eye"])
    half = 0.1 * d
    bridge = lm[27:31]
    _poly(draw, np.concatenate([bridge - right * half, lm[31:36], bridge[::-1] + right * half]), _C["nose"])
    outer, inner = lm[48:60], lm[60:68]
    _poly(draw, np.concatenate([outer[0:7], inner[4::-1]]), _C["u_lip"])
    _poly(draw, np.concatenate([outer[6:12], outer[0:1], inner[0:1], inner[7:3:-1]]), _C["l_lip"])
    _poly(draw, inner, _C["mouth"])
    return np.asarray(img).copy()
