"""Turn user inputs (paths, PIL images, arrays, tensors) into network inputs.

Photos follow the original test transforms: resize to the encoder's input size
(bilinear), ``ToTensor``, ``Normalize(0.5, 0.5)`` -> [-1, 1]. Inputs of other tasks
(sketches, label maps, low-resolution or masked faces) are prepared by the model's
task preset (:mod:`instyle.tasks`) when it defines ``prepare_inference_input``.

What a model takes comes from its :class:`~instyle.models.family.InputSpec`: these functions
accept the model, its config (every family's has ``input_spec``) or the spec itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from instyle.alignment import align_face
from instyle.errors import InputError
from instyle.inference.io import load_image, pil_to_tensor, tensor_to_pil
from instyle.models.family import InputSpec
from instyle.tasks import get_task, preview_input
from instyle.utils.config import ConfigError

__all__ = [
    "align_input", "align_input_face", "degrade_for_super_resolution", "get_task_for", "input_preview", "input_spec_of",
    "prepare_input",
]


def input_spec_of(source) -> InputSpec:
    """The :class:`~instyle.models.family.InputSpec` of a model, a model config or a spec."""
    spec = source if isinstance(source, InputSpec) else getattr(source, "input_spec", None)
    if not isinstance(spec, InputSpec):
        raise TypeError(f"expected a model, a model config or an InputSpec, got {type(source).__name__}")
    return spec


def get_task_for(source):
    """The task preset of a model (or its config / input spec), or None for a task name no
    preset is registered for (its inputs are then prepared by channel count)."""
    spec = input_spec_of(source)
    try:
        task = get_task(spec.task)
        if spec.label_nc and getattr(task, "label_nc", 0) and task.label_nc != spec.label_nc:
            task = task.with_options(label_nc=spec.label_nc)  # e.g. an 11-class (Helen) seg2face model
        return task
    except ConfigError:
        return None


def prepare_input(
    image: str | os.PathLike | Image.Image | np.ndarray | torch.Tensor,
    config,
    resize_factor: int | None = None,
) -> torch.Tensor:
    """One input -> ``[input_nc, S, S]`` float32 tensor for a model (``config``: the model, its
    config or its :class:`~instyle.models.family.InputSpec`).

    Tensors are taken as already prepared (shape-checked). Paths are read with
    :func:`instyle.inference.io.load_image` (raising ``ImageLoadError`` on bad files).
    ``resize_factor`` (super-resolution models only; the original's ``--resize_factors``):
    the input is a full-resolution photo, down-sampled by this factor first, as in training.
    """
    spec = input_spec_of(config)
    if resize_factor is not None:
        image = degrade_for_super_resolution(image, spec, resize_factor)
    nc, size = spec.channels, spec.width  # ReStyle: 3 (its encoder sees 6)
    hw = (spec.height, size)  # the cars models take 192x256 photos
    if isinstance(image, torch.Tensor):
        t = image[0] if image.ndim == 4 and image.shape[0] == 1 else image
        if t.ndim != 3 or t.shape[0] != nc:
            raise InputError(f"expected a tensor [{nc}, H, W], got {tuple(image.shape)}")
        if tuple(t.shape[-2:]) != hw:
            t = torch.nn.functional.interpolate(t[None].float(), size=hw, mode="bilinear", align_corners=False)[0]
        return t.float()
    task = get_task_for(spec) if hw[0] == size else None
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
    raise InputError(
        f"this model takes {nc}-channel inputs (task {spec.task!r}); give a prepared tensor "
        f"[{nc}, {size}, {size}], or register a task that converts such files (instyle.tasks.register_task)"
    )


def degrade_for_super_resolution(image, config, factor: int) -> Image.Image:
    """A full-resolution photo down-sampled by ``factor`` (and back to the input size), the
    way the super-resolution task makes its training inputs (``config``: the model, its config
    or its input spec)."""
    spec = input_spec_of(config)
    task = get_task_for(spec)
    if task is None or task.name != "super_resolution":
        raise InputError(f"a resize factor applies to super-resolution models only; this model's task is {spec.task!r}")
    task = task.with_options(size=spec.width, factors=(int(factor),))
    if isinstance(image, (str, os.PathLike, Path)):
        image = load_image(image, mode="RGB")
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return task.make_input_image(image)


def align_input(image: str | os.PathLike | Image.Image, size: int = 256, detector: str = "auto") -> Image.Image:
    """FFHQ-align the largest face of a photo (path or PIL image) to ``size x size``.

    Raises:
        ValueError: no face was found (the message names the file).
        instyle.alignment.AlignmentUnavailable: dlib or its landmark model is missing.
    """
    return align_input_face(image, size, detector).image


def align_input_face(image: str | os.PathLike | Image.Image, size: int = 256, detector: str = "auto"):
    """As :func:`align_input`, but the whole :class:`~instyle.alignment.AlignedFace` (crop and
    its quad in the photo, what paste-back needs)."""
    name = str(image) if isinstance(image, (str, os.PathLike)) else "image"
    img = load_image(image) if isinstance(image, (str, os.PathLike)) else image
    face = align_face(img, size=size, detector=detector)
    if face is None:
        raise InputError(f"{name}: no face found to align (try `instyle align --detector cnn`)")
    return face


def input_preview(x: torch.Tensor, config) -> Image.Image:
    """A viewable picture of a prepared network input ``[C, S, S]`` for a model (``config``: the
    model, its config or its input spec; see :func:`instyle.tasks.preview_input`)."""
    return tensor_to_pil(preview_input(x, get_task_for(config)))
