"""The inner-face region used by the identity loss and the crop loss terms.

The original pSp code hard-codes the window ``[35:223, 32:220]`` (rows, cols) of a
256x256 aligned face: a 188x188 square around eyes, nose and mouth.
"""

from __future__ import annotations

import torch

__all__ = ["FACE_CROP", "FACE_CROP_IMAGE_SIZE", "face_crop"]

#: ``(top, bottom, left, right)``: rows 35..222 and columns 32..219 (end exclusive).
FACE_CROP = (35, 223, 32, 220)
#: The image side the window is defined for.
FACE_CROP_IMAGE_SIZE = 256


def face_crop(images: torch.Tensor) -> torch.Tensor:
    """``images [B, C, 256, 256] -> [B, C, 188, 188]``: the inner-face window.

    Raises:
        ValueError: the images are not 256x256 (the window is only meaningful there; pSp
            pools its output to 256x256 with ``resize=True`` before computing losses).
    """
    s = FACE_CROP_IMAGE_SIZE
    if images.ndim != 4 or images.shape[-2:] != (s, s):
        raise ValueError(
            f"the face crop [35:223, 32:220] needs images [B, C, {s}, {s}], got {tuple(images.shape)}; "
            "the identity and crop losses only apply to 256x256 outputs (set their lambdas to 0 otherwise)"
        )
    top, bottom, left, right = FACE_CROP
    return images[:, :, top:bottom, left:right]
