"""``inpainting``: a face with a hidden region -> the complete face.

The mask is the paper's symmetric triangle (``mask="triangle"``, see
:func:`~instyle.tasks.transforms.triangle_mask` for the exact definition; ``apex_y``,
``base_y``, ``half_base`` set it) or random brush strokes (``mask="random"``, a new mask per
sample). Hidden pixels are set to ``fill`` (white by default). With ``mask_channel=True`` the
mask is also given as a 4th input channel (1 = hidden), so ``input_nc`` becomes 4; from an
image file, the mask channel is recovered as the pixels exactly equal to ``fill`` (use PNG).
Weights as inversion (the original publishes no inpainting command).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from instyle.tasks.base import Task, photo_to_tensor, register_task
from instyle.tasks.transforms.masks import apply_mask, random_stroke_mask, triangle_mask
from instyle.utils.config import check_choice


@dataclass(frozen=True)
class InpaintingTask(Task):
    """Masked-photo input (see module docstring for the options)."""

    mask: str = "triangle"
    apex_y: float = 0.45
    base_y: float = 1.0
    half_base: float = 0.3
    fill: tuple[int, int, int] = (255, 255, 255)
    mask_channel: bool = False

    def __post_init__(self):
        check_choice(f"{self.name}.mask", self.mask, ("triangle", "random"))
        object.__setattr__(self, "fill", tuple(int(v) for v in self.fill))
        object.__setattr__(self, "input_nc", 4 if self.mask_channel else 3)
        super().__post_init__()
        if self.mask == "triangle":
            triangle_mask(8, 8, self.apex_y, self.base_y, self.half_base)  # validates the geometry

    def make_mask(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """``[size, size]`` bool, True = hidden."""
        if self.mask == "triangle":
            return triangle_mask(self.size, self.size, self.apex_y, self.base_y, self.half_base)
        return random_stroke_mask(self.size, self.size, rng if rng is not None else np.random.default_rng(0))

    def make_input_image(self, photo: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        target = photo.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return apply_mask(target, self.make_mask(rng), self.fill)

    def input_from_image(self, image: Image.Image) -> torch.Tensor:
        x = photo_to_tensor(image, self.size)
        if not self.mask_channel:
            return x
        rgb = np.asarray(image.convert("RGB").resize((self.size, self.size), Image.Resampling.NEAREST))
        hidden = np.all(rgb == np.asarray(self.fill, dtype=np.uint8), axis=-1)
        return torch.cat([x, torch.from_numpy(hidden.astype(np.float32))[None]])


INPAINTING = register_task(
    InpaintingTask(
        name="inpainting",
        description="face with a hidden region (symmetric triangle or random strokes) -> complete face",
        loss={"l2_lambda": 1.0, "lpips_lambda": 0.8, "id_lambda": 0.1},
        metrics=("l2", "lpips", "id"),
    )
)
