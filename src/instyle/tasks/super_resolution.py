"""``super_resolution`` (official ``celebs_super_resolution``): a low-resolution face -> full resolution.

Training input: the target downsampled (bicubic) by a factor drawn from ``factors`` and
bicubic-upsampled back to ``size`` (pixel-aligned: factor 1 is the identity). At inference use
one fixed factor, ``get_task("super_resolution", factors=(f,))``, to degrade a full photo, or
give an already low-resolution image: :meth:`input_from_image` upsamples it to ``size``.
Weights from the original's command: ``--lpips_lambda=0.8 --l2_lambda=1 --id_lambda=0.1
--w_norm_lambda=0.005 --resize_factors=1,2,4,8,16,32`` (the paper's figures go up to x16).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from instyle.tasks.base import Task, photo_to_tensor, register_task
from instyle.tasks.transforms.resize import degrade_resolution
from instyle.utils.config import ConfigError


@dataclass(frozen=True)
class SuperResolutionTask(Task):
    """Low-resolution input; ``factors`` are the integer downsampling factors to draw from."""

    factors: tuple[int, ...] = (1, 2, 4, 8, 16, 32)

    def __post_init__(self):
        super().__post_init__()
        factors = tuple(self.factors) if not isinstance(self.factors, int) else (self.factors,)
        bad = [f for f in factors if isinstance(f, bool) or not isinstance(f, int) or f < 1 or self.size % f]
        if not factors or bad:
            raise ConfigError(f"{self.name}.factors={self.factors!r}: need integers >= 1 dividing size={self.size}")
        object.__setattr__(self, "factors", factors)

    def pick_factor(self, rng: np.random.Generator | None) -> int:
        """A factor drawn uniformly from ``factors`` (the largest when ``rng`` is ``None``)."""
        return max(self.factors) if rng is None else int(self.factors[int(rng.integers(len(self.factors)))])

    def make_input_image(self, photo: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        target = photo.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return degrade_resolution(target, self.pick_factor(rng))

    def input_from_image(self, image: Image.Image) -> torch.Tensor:
        rgb = image.convert("RGB")
        if rgb.size != (self.size, self.size):
            rgb = rgb.resize((self.size, self.size), Image.Resampling.BICUBIC)
        return photo_to_tensor(rgb, self.size)


SUPER_RESOLUTION = register_task(
    SuperResolutionTask(
        name="super_resolution",
        description="low-resolution face (bicubic, x1-x32) -> full-resolution face",
        loss={"lpips_lambda": 0.8, "l2_lambda": 1.0, "id_lambda": 0.1, "w_norm_lambda": 0.005},
        metrics=("l2", "lpips", "id"),
    )
)
