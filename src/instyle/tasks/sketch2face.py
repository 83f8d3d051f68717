"""``sketch2face`` (official ``celebs_sketch_to_face``): a 1-channel sketch -> a face photo.

Input: ``[1, S, S]`` in ``[0, 1]`` (white paper = 1, lines = 0; the original's ``ToTensor``
without normalisation). Training sketches are drawn from the target photo by
:func:`~instyle.tasks.transforms.pencil_sketch`, on the fly or by ``instyle prepare``.
Weights from the original's command: ``--lpips_lambda=0.8 --l2_lambda=1 --id_lambda=0
--w_norm_lambda=0.005 --label_nc=1 --input_nc=1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from instyle.tasks.base import Task, register_task
from instyle.tasks.transforms.sketch import pencil_sketch
from instyle.utils.image import pil_to_tensor


@dataclass(frozen=True)
class SketchTask(Task):
    """Sketch input. ``sketch_blur`` (line width) and ``sketch_simplify`` tune :func:`pencil_sketch`."""

    sketch_blur: float = 0.01
    sketch_simplify: bool = True

    def make_input_image(self, photo: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        # Sketch at the network's resolution so line widths match between training and use.
        small = photo.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return pencil_sketch(small, blur=self.sketch_blur, simplify=self.sketch_simplify)

    def preview(self, x: torch.Tensor) -> torch.Tensor:
        return super().preview(x * 2 - 1)  # sketches are fed in [0, 1]

    def input_from_image(self, image: Image.Image) -> torch.Tensor:
        return pil_to_tensor(image.convert("L"), self.size, unit=True)  # [0, 1], as the original


SKETCH2FACE = register_task(
    SketchTask(
        name="sketch2face",
        description="pencil sketch (1 channel) -> face photo",
        input_nc=1,
        label_nc=1,
        loss={"lpips_lambda": 0.8, "l2_lambda": 1.0, "id_lambda": 0.0, "w_norm_lambda": 0.005},
        metrics=("l2", "lpips"),
    )
)
