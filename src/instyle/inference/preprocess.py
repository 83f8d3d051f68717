"""Turn user inputs (paths, PIL images, arrays, tensors) into network inputs.

Photos follow the original test transforms: resize to the encoder's input size
(bilinear), ``ToTensor``, ``Normalize(0.5, 0.5)`` -> [-1, 1]. Inputs of other tasks
(sketches, label maps, low-resolution or masked faces) are prepared by the model's
task preset (:mod:`instyle.tasks`) when it defines ``prepare_inference_input``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from instyle.inference.io import load_image, pil_to_tensor
from instyle.models.psp import PSPConfig

__all__ = ["align_input", "get_task_for", "input_preview", "prepare_input"]


def get_task_for(config: PSPConfig):
    """The task preset object of a model config, or None when presets are unavailable."""
    try:
        from instyle.tasks import get_task
    except ImportError:
        return None
    try:
        task = get_task(config.task)
        if config.label_nc and getattr(task, "label_nc", 0) and task.label_nc != config.label_nc:
            task = task.with_options(label_nc=config.label_nc)  # e.g. an 11-class (Helen) seg2face model
        return task
    except (KeyError, ValueError):
        return None


def prepare_input(
    image: str | os.PathLike | Image.Image | np.ndarray | torch.Tensor, config: PSPConfig
) -> torch.Tensor:
    """One input -> ``[input_nc, S, S]`` float32 tensor for a model with ``config``.

    Tensors are taken as already prepared (shape-checked). Paths are read with
    :func:`instyle.inference.io.load_image` (raising ``ImageLoadError`` on bad files).
    """
    nc, size = config.image_nc, config.encoder.input_size  # ReStyle: 3 (its encoder sees 6)
    hw = (config.encoder.input_height or size, size)  # the cars models take 192x256 photos
    if isinstance(image, torch.Tensor):
        t = image[0] if image.ndim == 4 and image.shape[0] == 1 else image
        if t.ndim != 3 or t.shape[0] != nc:
            raise ValueError(f"expected a tensor [{nc}, H, W], got {tuple(image.shape)}")
        if tuple(t.shape[-2:]) != hw:
            t = torch.nn.functional.interpolate(t[None].float(), size=hw, mode="bilinear", align_corners=False)[0]
        return t.float()
    task = get_task_for(config) if hw[0] == size else None
    if task is not None and getattr(task, "input_nc", None) == nc:
        if isinstance(image, (str, os.PathLike, Path)):
            image = load_image(image, mode=None)  # keep palette / grayscale for label maps and sketches
        elif isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if getattr(task, "size", size) != size:
            task = task.with_options(size=size)
        return task.prepare_inference_input(image)
    if isinstance(image, (str, os.PathLike, Path)):
        image = load_image(image, mode="RGB" if nc == 3 else "L")
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if nc == 3:
        return pil_to_tensor(image.convert("RGB"), hw)
    if nc == 1:
        return pil_to_tensor(image.convert("L"), hw)
    raise ValueError(
        f"this model takes {nc}-channel inputs (task {config.task!r}); give a prepared tensor "
        f"[{nc}, {size}, {size}] or install the task presets that convert such files"
    )


def align_input(image: str | os.PathLike | Image.Image, size: int = 256, detector: str = "auto") -> Image.Image:
    """FFHQ-align the largest face of a photo (path or PIL image) to ``size x size``.

    Raises:
        ValueError: no face was found (the message names the file).
        instyle.alignment.AlignmentUnavailable: dlib or its landmark model is missing.
    """
    from instyle.alignment import align_face

    name = str(image) if isinstance(image, (str, os.PathLike)) else "image"
    img = load_image(image) if isinstance(image, (str, os.PathLike)) else image
    face = align_face(img, size=size, detector=detector)
    if face is None:
        raise ValueError(f"{name}: no face found to align (try `instyle align --detector cnn`)")
    return face.image


def input_preview(x: torch.Tensor, config: PSPConfig) -> Image.Image:
    """A viewable picture of a prepared network input ``[C, S, S]``: the photo, the sketch
    (task sketches are in [0, 1], other 1-channel inputs in [-1, 1]) or a label map in its palette."""
    from instyle.inference.io import tensor_to_pil

    if x.shape[0] == 3:
        return tensor_to_pil(x)
    if x.shape[0] == 1:
        return tensor_to_pil(x * 2 - 1 if config.task == "sketch2face" else x)
    from instyle.tasks.seg2face import labels_to_palette

    return labels_to_palette(x.argmax(0).cpu().numpy()).convert("RGB")
