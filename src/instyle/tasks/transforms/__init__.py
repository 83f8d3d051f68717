"""Degradations and input transforms the tasks are built from (pure image functions)."""

from instyle.tasks.transforms.labels import (
    CELEBAMASK_CLASSES,
    CELEBAMASK_PALETTE,
    LabelError,
    check_labels,
    default_palette,
    labels_from_image,
    labels_to_onehot,
    labels_to_palette_image,
    onehot_to_labels,
    palette_to_labels,
    resize_labels,
)
from instyle.tasks.transforms.landmark_labels import labels_from_landmarks
from instyle.tasks.transforms.masks import apply_mask, random_stroke_mask, triangle_mask
from instyle.tasks.transforms.resize import degrade_resolution, downsample
from instyle.tasks.transforms.sketch import color_dodge, pencil_sketch

__all__ = [
    "CELEBAMASK_CLASSES",
    "CELEBAMASK_PALETTE",
    "LabelError",
    "apply_mask",
    "check_labels",
    "color_dodge",
    "default_palette",
    "degrade_resolution",
    "downsample",
    "labels_from_image",
    "labels_from_landmarks",
    "labels_to_onehot",
    "labels_to_palette_image",
    "onehot_to_labels",
    "palette_to_labels",
    "pencil_sketch",
    "random_stroke_mask",
    "resize_labels",
    "triangle_mask",
]
