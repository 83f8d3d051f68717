"""Image decoding and the original pSp training transforms, plus the task hook.

Targets: ``Resize((S, S))`` (PIL bilinear) -> ``ToTensor`` -> ``Normalize(0.5, 0.5)``:
``[3, S, S]`` in [-1, 1]. Sources (encoder inputs read from a file) come in three
modes: ``rgb`` (as targets), ``gray`` (sketches: ``[1, S, S]`` in [0, 1], not
normalised, as the original) and ``label`` (segmentation maps: nearest-neighbour
resize, one-hot ``[label_nc, S, S]``). A random horizontal flip, when enabled, is
applied to source and target together (only for photos: a flipped label map would
need its left/right classes swapped too).

Tasks that *make* the encoder input from the image (super-resolution, inpainting,
colourisation ...) plug in an :class:`InputTransform`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from instyle.tasks.transforms.labels import labels_from_image
from instyle.utils.config import ConfigError
from instyle.utils.image import pil_to_tensor
from instyle.utils.image_file import load_image

__all__ = [
    "SOURCE_MODES",
    "InputTransform",
    "decode_image",
    "to_target_tensor",
    "to_source_tensor",
    "hflip",
    "validation_transform",
]

SOURCE_MODES = ("rgb", "gray", "label")


@runtime_checkable
class InputTransform(Protocol):
    """Makes the encoder input from the source image of a training pair.

    Called in the data-loading workers as ``transform(source, generator)``:

    * ``source``: the source tensor after the standard transforms (``[3, S, S]`` in
      [-1, 1] for ``rgb``; for pairs without a source folder this is a copy of the
      target, already flipped together with it);
    * ``generator``: a ``torch.Generator`` seeded per sample from (run seed, epoch,
      position), the only randomness a transform may use, so runs (and resumed runs)
      see the same inputs.

    Returns the encoder input ``[input_nc, S, S]``. Implementations must be picklable
    (a module-level class or function) so ``workers > 0`` can use them. A transform with
    training-only randomness may also define ``for_validation()`` returning the transform
    for validation pairs (see :func:`validation_transform`).
    """

    def __call__(self, source: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


def decode_image(path, mode: str | None = "RGB") -> Image.Image:
    """Open and fully decode an image file in PIL ``mode`` (``RGB``, ``L``, or None to keep
    the file's mode, as label maps need) -- with the same reader as inference
    (:func:`instyle.utils.image_file.load_image`: EXIF orientation, 16-bit and float images).

    Raises:
        ImageLoadError (a ValueError) for unreadable files.
    """
    return load_image(path, mode=mode)


def _resize(img: Image.Image, size: int, resample: int) -> Image.Image:
    return img if img.size == (size, size) else img.resize((size, size), resample)


def to_target_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> ``[3, size, size]`` float32 in [-1, 1] (Resize, ToTensor, Normalize 0.5)."""
    return pil_to_tensor(img.convert("RGB"), size)


def to_source_tensor(img: Image.Image, size: int, mode: str, label_nc: int = 0) -> torch.Tensor:
    """Source PIL image -> encoder input tensor.

    ``rgb``: ``[3, S, S]`` in [-1, 1]; ``gray``: ``[1, S, S]`` in [0, 1];
    ``label``: one-hot ``[label_nc, S, S]`` from the class ids in the (L-mode) map
    (ids >= label_nc are an error).
    """
    if mode == "rgb":
        return to_target_tensor(img, size)
    if mode == "gray":
        return pil_to_tensor(img.convert("L"), size, unit=True)
    if mode == "label":
        if label_nc < 1:
            raise ConfigError("label source mode needs label_nc >= 1")

        # Index (L/P) maps carry the class as the pixel value; colour maps are read with the palette.
        classes = labels_from_image(img, label_nc).astype(np.uint8)
        ids = torch.from_numpy(np.asarray(_resize(Image.fromarray(classes, "L"), size, Image.NEAREST), dtype=np.int64).copy())
        return torch.nn.functional.one_hot(ids, label_nc).permute(2, 0, 1).float().contiguous()
    raise ConfigError(f"source mode {mode!r} is not accepted; choose one of {SOURCE_MODES}")


def hflip(t: torch.Tensor) -> torch.Tensor:
    """Mirror ``[C, H, W]`` left-right."""
    return torch.flip(t, dims=[-1])


def validation_transform(transform: InputTransform | None) -> InputTransform | None:
    """The transform for validation pairs: ``transform.for_validation()`` where defined
    (training-only randomness off), else ``transform`` itself."""
    make = getattr(transform, "for_validation", None)
    return make() if callable(make) else transform
