"""``seg2face`` (official ``celebs_seg_to_face``): a segmentation label map -> a face photo.

Input: ``[label_nc, S, S]`` one-hot (19 CelebAMask-HQ classes by default; e.g. ``label_nc=11``
for Helen). Label files may be index images (pixel value = class) or colour maps in the
CelebAMask-HQ palette; they are resized with nearest neighbour and out-of-range classes are
errors. ``instyle prepare seg2face`` draws approximate maps from dlib landmarks (see
:mod:`~instyle.tasks.transforms.landmark_labels`) or converts given parser output.
Weights from the original's command: ``--lpips_lambda=0.8 --l2_lambda=1 --id_lambda=0
--w_norm_lambda=0.005 --label_nc=19 --input_nc=19``. Pairs are never flipped (that would swap
left/right classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from instyle.alignment import detect_faces, face_landmarks
from instyle.tasks.base import Task, TaskInputError, register_task
from instyle.tasks.transforms.labels import (
    default_palette,
    labels_from_image,
    labels_to_onehot,
    labels_to_palette_image,
    palette_to_labels,
    resize_labels,
)
from instyle.tasks.transforms.landmark_labels import labels_from_landmarks


@dataclass(frozen=True)
class SegmentationTask(Task):
    """Label-map input; ``input_nc`` always equals ``label_nc``."""

    shared_options: ClassVar[tuple[str, ...]] = ("label_nc",)  # e.g. 11 classes instead of 19

    def __post_init__(self):
        object.__setattr__(self, "input_nc", self.label_nc)
        super().__post_init__()

    def make_input_image(self, photo: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        """Approximate label map from the photo's dlib landmarks, as an ``L`` index image (value = class).

        Index images are what CelebAMask-HQ ships and what every reader decodes the same way
        (a palette image converted to ``L`` would turn colours into luminance).
        """

        # Landmarks need a face of ~100+ px: detect on a copy of at least 256 px, draw at ``size``.
        rgb = photo.convert("RGB")
        side = max(256, *rgb.size)
        arr = np.asarray(rgb.resize((side, side), Image.Resampling.BICUBIC) if rgb.size != (side, side) else rgb)
        faces = detect_faces(arr, detector="auto")
        if not faces:
            raise TaskInputError("no face found to draw a label map from")
        lm = (face_landmarks(arr, faces[0].box) + 0.5) * (self.size / side)
        return Image.fromarray(labels_from_landmarks(lm, (self.size, self.size)))

    def labels_from_file_image(self, image: Image.Image) -> np.ndarray:
        """A label file (index or palette colours) -> ``[size, size]`` classes (nearest resize)."""
        try:
            labels = labels_from_image(image, self.label_nc)
        except ValueError as e:
            raise TaskInputError(str(e)) from None
        return resize_labels(labels, self.size)

    def input_from_image(self, image: Image.Image) -> torch.Tensor:
        return labels_to_onehot(self.labels_from_file_image(image), self.label_nc)


SEG2FACE = register_task(
    SegmentationTask(
        name="seg2face",
        description="segmentation label map (one-hot, 19 CelebAMask-HQ classes) -> face photo",
        label_nc=19,
        input_nc=19,
        loss={"lpips_lambda": 0.8, "l2_lambda": 1.0, "id_lambda": 0.0, "w_norm_lambda": 0.005},
        hflip_pairs=False,
        needs_source=True,
        metrics=("l2", "lpips"),
    )
)


def colors_to_labels(image: Image.Image, label_nc: int = 19) -> np.ndarray:
    """A CelebAMask-HQ colour map (RGB) -> ``[H, W]`` int64 classes (errors name unknown colours)."""
    return palette_to_labels(np.asarray(image.convert("RGB")), default_palette(label_nc))


def labels_to_palette(labels) -> Image.Image:
    """``[H, W]`` classes (array or tensor) -> a mode ``P`` image in CelebAMask-HQ colours."""
    arr = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return labels_to_palette_image(arr)
