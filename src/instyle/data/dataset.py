"""Paired image dataset (encoder input, target) for training and validation.

Items are requested as ``(index, sample_seed)`` (see :mod:`instyle.data.sampler`) or a
plain index. A file that cannot be read is skipped: the next pair is used instead
and the sample reports the bad file, so the main process can log it once and count
it (workers share no state, so nothing else is needed to be worker-safe).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from instyle.data.folders import pair_folders
from instyle.data.transforms import (
    SOURCE_MODES,
    InputTransform,
    decode_image,
    hflip,
    to_source_tensor,
    to_target_tensor,
)
from instyle.errors import InputError
from instyle.utils.config import ConfigError

__all__ = ["PairedImageDataset", "collate_pairs", "BadFileLog"]

log = logging.getLogger("instyle.data")

#: How many following pairs to try before a sample is declared impossible.
MAX_SKIPS = 32


class PairedImageDataset(Dataset):
    """Pairs of (encoder input ``x``, target ``y``).

    Args:
        pairs: ``(source path or None, target path)``; None = the target is the source.
        image_size: side ``S`` of inputs and targets (256 for pSp).
        source_mode: ``rgb`` | ``gray`` | ``label`` (see :mod:`instyle.data.transforms`).
        label_nc: classes of ``label`` sources.
        flip: random horizontal flip (p=0.5), the same for source and target.
        input_transform: makes ``x`` from the source (a task hook), or None.

    An item is ``{"x": [input_nc, S, S], "y": [3, S, S] in [-1, 1], "index": int,
    "bad": tuple of "path: reason" strings for files skipped to produce it}``.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path | None, Path]],
        image_size: int = 256,
        source_mode: str = "rgb",
        label_nc: int = 0,
        flip: bool = False,
        input_transform: InputTransform | None = None,
    ):
        if source_mode not in SOURCE_MODES:
            raise ConfigError(f"source_mode={source_mode!r} is not accepted; choose one of {SOURCE_MODES}")
        if flip and source_mode == "label":
            raise ConfigError("flip=True with label-map sources would need left/right classes swapped; use flip=False")
        if not pairs:
            raise InputError("PairedImageDataset needs at least one pair")
        self.pairs = list(pairs)
        self.image_size = image_size
        self.source_mode = source_mode
        self.label_nc = label_nc
        self.flip = flip
        self.input_transform = input_transform

    @classmethod
    def from_folders(cls, target_dir: str | os.PathLike, source_dir: str | os.PathLike | None = None, **kwargs):
        """Pair ``source_dir`` and ``target_dir`` by file name (see :func:`pair_folders`)."""
        return cls(pair_folders(target_dir, source_dir).items, **kwargs)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of pair ``index`` with the augmentations drawn from ``seed``.
        Raises on unreadable files."""
        source_path, target_path = self.pairs[index]
        gen = torch.Generator().manual_seed(seed)
        flip = self.flip and bool(torch.rand(1, generator=gen) < 0.5)
        y = to_target_tensor(decode_image(target_path, "RGB"), self.image_size)
        if source_path is None:
            x = y.clone()
        else:
            # Label maps keep their file mode: palette/colour maps are decoded to class ids, not brightness.
            mode = {"rgb": "RGB", "gray": "L"}.get(self.source_mode)
            x = to_source_tensor(decode_image(source_path, mode), self.image_size, self.source_mode, self.label_nc)
        if flip:
            x, y = hflip(x), hflip(y)
        if self.input_transform is not None:
            x = self.input_transform(x, gen)
        return x, y

    def __getitem__(self, item) -> dict:
        index, seed = item if isinstance(item, (tuple, list)) else (int(item), int(item))
        bad: list[str] = []
        for k in range(min(MAX_SKIPS, len(self.pairs))):
            i = (index + k) % len(self.pairs)
            try:
                x, y = self.load(i, seed)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                bad.append(f"{self._names(i)}: {type(e).__name__}: {e}")
                continue
            return {"x": x, "y": y, "index": i, "bad": tuple(bad)}
        raise RuntimeError(f"{len(bad)} consecutive unreadable image pairs, e.g. {bad[:3]}; check the data folders")

    def _names(self, i: int) -> str:
        source, target = self.pairs[i]
        return str(target) if source is None else f"{source} / {target}"


def collate_pairs(samples: list[dict]) -> dict:
    """Stack ``x``, ``y`` and ``index``; concatenate the ``bad`` reports."""
    return {
        "x": torch.stack([s["x"] for s in samples]),
        "y": torch.stack([s["y"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
        "bad": [b for s in samples for b in s["bad"]],
    }


class BadFileLog:
    """Logs each skipped file once (main process) and counts them."""

    def __init__(self):
        self.seen: set[str] = set()

    def record(self, reports: Sequence[str]) -> None:
        for r in reports:
            if r not in self.seen:
                self.seen.add(r)
                log.warning("skipped unreadable image: %s", r)

    @property
    def count(self) -> int:
        return len(self.seen)
