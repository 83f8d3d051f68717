"""What the demo's tabs do, as plain functions of a model and PIL images (no Gradio here).

Every model call runs under ``torch.inference_mode``. Images come back as PIL images of the
model's output size (``config.resize_to``, 256 px for published checkpoints), latents as
``[n_styles, D]`` float32 tensors on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from instyle.alignment import AlignmentUnavailable, align_face
from instyle.demo.inputs import DemoInputError
from instyle.inference.encoding import Encoding, as_encoding, render, render_batches
from instyle.inference.encoding import encode as encode_images
from instyle.inference.io import tensor_to_pil
from instyle.inference.preprocess import prepare_input
from instyle.models.family import InversionModel, family_of
from instyle.tasks import get_task, preview_input
from instyle.utils.config import ConfigError

__all__ = [
    "Reconstruction",
    "align",
    "decode",
    "encode",
    "encode_image",
    "input_preview",
    "interpolate",
    "interpolate_encodings",
    "mix",
    "photo_size",
    "reconstruct",
    "write_animation",
    "write_latent",
]


@dataclass
class Reconstruction:
    """One encoded input: what the network saw, its reconstruction and its W+ code ``[n_styles, D]``."""

    input: Image.Image
    output: Image.Image
    latent: torch.Tensor
    #: the image's whole encoding (CPU): W+ and what its family re-renders it with
    encoding: Encoding | None = None

    @property
    def offsets(self):
        """The encoding's extra (HyperStyle: the image's generator offsets, batch 1)."""
        return None if self.encoding is None else self.encoding.extra


def align(image: Image.Image, size: int = 256) -> Image.Image:
    """The largest face of ``image``, FFHQ-aligned to ``size`` px.

    Raises:
        DemoInputError: no face found, or the face tools (dlib) are not installed.
    """
    try:
        face = align_face(image, size=size)
    except AlignmentUnavailable as e:
        raise DemoInputError(f"face alignment is unavailable on this server: {e}") from None
    if face is None:
        raise DemoInputError("no face was found in the photo; untick 'Align face' to encode it as it is")
    return face.image


def input_preview(x: torch.Tensor, task: str = "inversion") -> Image.Image:
    """A viewable picture of one network input ``[C, S, S]`` of a model trained for ``task``."""
    try:
        preset = get_task(task)
    except ConfigError:
        preset = None  # a task without a registered preset: shown by channel count
    return tensor_to_pil(preview_input(x, preset))


def photo_size(model: InversionModel) -> int:
    """The side a photo is given to the model at (and aligned to): the encoder's input, or the
    generator's output for a family that inverts photos at that size (StyleFeatureEditor)."""
    return model.output_size if family_of(model).photos_at_output_size else max(256, model.input_size)


def _prepare(model: InversionModel, image: Image.Image) -> torch.Tensor:
    """PIL image -> ``[1, input_nc, S, S]`` on the model's device, prepared for the model's task
    (a family that inverts photos at the generator's size gets them so, as its original)."""
    try:
        if family_of(model).photos_at_output_size:
            from instyle.utils.image import pil_to_tensor

            return pil_to_tensor(image.convert("RGB"), model.output_size)[None].to(next(model.parameters()).device)
        x = prepare_input(image, model.config)
    except ValueError as e:  # TaskInputError, LabelError, ...: bad content for this task
        raise DemoInputError(str(e)) from None
    return x[None].to(next(model.parameters()).device)


@torch.inference_mode()
def encode(model: InversionModel, image: Image.Image) -> torch.Tensor:
    """One input image -> its W+ code ``[n_styles, D]`` (CPU, float32)."""
    return encode_image(model, image)[0]


@torch.inference_mode()
def encode_image(model: InversionModel, image: Image.Image) -> tuple[torch.Tensor, list | None]:
    """One input image -> ``(W+ code [n_styles, D], HyperStyle offsets or None)`` (CPU, float32)."""
    enc = encode_images(model, _prepare(model, image))[0].to("cpu")
    return enc.latents[0].float(), enc.extra


@torch.inference_mode()
def decode(
    model: InversionModel, w_plus: torch.Tensor, batch_size: int = 8, offsets: list | None = None, progress=None
) -> list[Image.Image]:
    """W+ codes ``[B, n_styles, D]`` -> ``B`` images of the model's output size (``resize_to``);
    ``offsets`` (HyperStyle): batch 1 (shared by all codes) or batch B; ``progress(n done)``
    is called after each batch."""
    out: list[Image.Image] = []
    for y in render_batches(model, as_encoding(model, w_plus, offsets), resize=True, batch_size=batch_size):
        out.extend(tensor_to_pil(t) for t in y)
        if progress is not None:
            progress(len(out))
    return out


@torch.inference_mode()
def reconstruct(model: InversionModel, image: Image.Image) -> Reconstruction:
    """Encode and decode one input (photo, sketch, label map, ... as the model's task takes)."""
    x = _prepare(model, image)
    enc = encode_images(model, x)
    y = render(model, enc, resize=True)
    preview = input_preview(x[0].cpu(), model.input_spec.task)
    enc = enc.to("cpu")
    return Reconstruction(preview, tensor_to_pil(y[0]), enc.latents[0].float(), enc)


def mix(
    model: InversionModel,
    latent: torch.Tensor,
    n_outputs: int,
    layers: str | Sequence[int] | None = None,
    alpha: float | None = None,
    seed: int = 0,
    truncation: float = 1.0,
    offsets: list | None = None,
    progress=None,
) -> list[Image.Image]:
    """Multi-modal variants of one code: ``layers`` (0-based, e.g. ``"8-17"``) come from random styles.

    Raises:
        DemoInputError: malformed layer range or out-of-range settings (message from the library).
    """
    from instyle.inference.mixing import style_mix

    family = family_of(model)
    if not family.editable_latents:
        raise DemoInputError(f"{family.title} models edit their own inversion (W+ and a feature map): use the Edit tab; "
                             "style mixing is not offered for them")
    try:
        codes = style_mix(model, latent[None], n_outputs, latent_mask=layers or None, alpha=alpha, seed=seed, truncation=truncation)
    except ValueError as e:
        raise DemoInputError(str(e)) from None
    return decode(model, codes[0], offsets=offsets, progress=progress)


def interpolate(
    model: InversionModel, w_a: torch.Tensor, w_b: torch.Tensor, steps: int, offsets: tuple[list, list] | None = None,
    progress=None,
) -> list[Image.Image]:
    """``steps`` frames from ``w_a`` to ``w_b`` (both included), linear in W+ (and, for
    HyperStyle, in the two images' generator offsets ``offsets = (a, b)``); ``progress(frames
    done)`` after each batch."""
    from instyle.inference.interpolation import interpolate as lerp

    try:
        lerp(w_a, w_b, steps)  # the same checks as the command (steps, shapes)
    except ValueError as e:
        raise DemoInputError(str(e)) from None
    a, b = offsets or (None, None)
    ends = [as_encoding(model, w_a[None], a), as_encoding(model, w_b[None], b)]
    return interpolate_encodings(model, ends[0], ends[1], steps, progress)


def interpolate_encodings(model: InversionModel, a: Encoding, b: Encoding, steps: int, progress=None) -> list[Image.Image]:
    """``steps`` frames from one image's encoding to another's (both included), latents and
    extras (HyperStyle's offsets, StyleFeatureEditor's features) blended alike; ``progress(frames
    done)`` after each batch."""
    if steps < 2:
        raise DemoInputError(f"number of frames must be at least 2, got {steps}")
    lam = torch.linspace(1.0, 0.0, steps, dtype=torch.float64)
    out: list[Image.Image] = []
    for i in range(0, steps, 4):  # blended extras (offsets) are large (one set per frame): a few frames at a time
        coeff = torch.stack([lam[i : i + 4], 1 - lam[i : i + 4]], 1)
        enc = Encoding.blend([a, b], coeff)
        out += [tensor_to_pil(t) for t in render(model, enc.to(model.latent_avg.device), resize=True)]
        if progress is not None:
            progress(len(out))
    return out


def write_latent(code: Encoding | torch.Tensor, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write one image's code in the file the ``instyle`` tools read, under the suffix its
    encoding asks for (the path's suffix is replaced): ``.npy`` float32 ``[n_styles, D]`` for a
    W+ code alone (a bare tensor), ``.npz`` with the family's extra (HyperStyle's offsets,
    StyleFeatureEditor's features) or a ``meta``."""
    from instyle.inference.encoding import save_encoding
    from instyle.inference.latents import save_latent

    if isinstance(code, torch.Tensor):  # a bare W+ code (no model, no extra)
        return save_latent(Path(path).with_suffix(".npz" if meta else ".npy"), code.float().cpu(), meta=meta)
    return save_encoding(Path(path).with_suffix(code.file_suffix(meta)), code.to("cpu"), meta=meta)


def write_animation(frames: Sequence[Image.Image], path: str | os.PathLike, fps: float = 8.0) -> Path:
    """Write frames as a looping GIF (forward then back)."""
    from instyle.inference.interpolation import save_animation

    return save_animation(list(frames), path, fps=fps, boomerang=True)
