"""Training data: paired image folders, the original transforms, deterministic
resumable sampling, and the :class:`InputTransform` hook tasks plug into."""

from instyle.data.dataset import BadFileLog, PairedImageDataset, collate_pairs
from instyle.data.folders import IMAGE_EXTENSIONS, Pairs, list_images, pair_folders
from instyle.data.loader import make_loader
from instyle.data.sampler import EvalBatchSampler, TrainBatchSampler, derive_seed
from instyle.data.transforms import (
    SOURCE_MODES,
    InputTransform,
    to_source_tensor,
    to_target_tensor,
    validation_transform,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "SOURCE_MODES",
    "BadFileLog",
    "EvalBatchSampler",
    "InputTransform",
    "PairedImageDataset",
    "Pairs",
    "TrainBatchSampler",
    "collate_pairs",
    "derive_seed",
    "list_images",
    "make_loader",
    "pair_folders",
    "to_source_tensor",
    "to_target_tensor",
    "validation_transform",
]
