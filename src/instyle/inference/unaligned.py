"""Unaligned inversion with a ReStyle-over-StyleGAN3 model (stylegan3-editing's workflow).

For one photo: the largest face is FFHQ-aligned (the encoders were trained on aligned faces)
and also cut out as an axis-aligned square around the same centre (the original's "crop"
mode, no rotation: the unaligned view the output reproduces). The landmarks of both crops
give the rotation and translation between them (:func:`instyle.alignment.stylegan_transform`);
the aligned crop is encoded and the last iteration is rendered with the inverse transform, so
the generator draws the face where and as rotated as it is in the unaligned crop.

The landmarks of the two crops are the photo's landmarks mapped into each crop (no second
detection); the rotated aligned landmarks are rotated geometrically.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from instyle.alignment import align_faces
from instyle.alignment.ffhq import source_to_crop, warp_quad
from instyle.alignment.stylegan3_transform import StyleGANTransform, stylegan_transform
from instyle.errors import InputError, InstyleError
from instyle.inference.io import InputFile, output_names, save_image
from instyle.inference.latents import save_latent
from instyle.inference.pipeline import prepare_output_folder
from instyle.inference.refine import RefineInput
from instyle.utils.atomic import atomic_write_bytes
from instyle.utils.image import pil_to_tensor, tensor_to_pil
from instyle.utils.image_file import load_image

__all__ = ["UnalignedInput", "crop_transform", "encode_unaligned", "encode_unaligned_files", "fixed_crop_quad", "transform_meta",
           "unaligned_input", "unaligned_preparer"]

#: The frame the landmark transform is measured in (the original's 1024 px crops).
TRANSFORM_FRAME = 1024


@dataclass(frozen=True)
class UnalignedInput:
    """``aligned``: FFHQ-aligned crop (encoder input); ``crop``: the axis-aligned crop of the
    same face; ``transform``: between them (pass ``transform.inverse_transform`` to the generator)."""

    aligned: Image.Image
    crop: Image.Image
    transform: StyleGANTransform


def fixed_crop_quad(aligned_quad: np.ndarray) -> np.ndarray:
    """The axis-aligned square (top-left, bottom-left, bottom-right, top-right) with the centre
    and side of the aligned crop's ``quad``: the two crops differ by a rotation only, which
    the landmark transform expresses exactly (the original's crop mode likewise keeps the
    alignment's centre and size and drops its rotation)."""
    q = np.asarray(aligned_quad, dtype=np.float64)
    c = q.mean(0)
    d = np.hypot(*(q[3] - q[0])) / 2
    dx, dy = np.array([d, 0.0]), np.array([0.0, d])
    return np.stack([c - dx - dy, c - dx + dy, c + dx + dy, c + dx - dy])


def unaligned_input(image: Image.Image, size: int = 256, detector: str = "auto") -> UnalignedInput | None:
    """Aligned and unaligned crops (``size`` px) of the largest face of ``image`` and the
    transform between them; None when no face is found."""
    faces = align_faces(image, size=size, detector=detector)
    if not faces:
        return None
    face = faces[0]
    quad = fixed_crop_quad(face.quad)
    crop = warp_quad(image, quad, size)
    return UnalignedInput(face.image, crop, crop_transform(face.landmarks, face.quad, quad))


def crop_transform(landmarks: np.ndarray, aligned_quad: np.ndarray, crop_quad: np.ndarray) -> StyleGANTransform:
    """The landmark transform between the aligned crop (``aligned_quad``) and another crop
    (``crop_quad``) of the same photo, from the photo's ``landmarks [68, 2]`` mapped into
    each, measured in the original's 1024 px frame (pass ``.inverse_transform`` to the generator)."""
    lm_aligned = source_to_crop(landmarks, aligned_quad, TRANSFORM_FRAME)
    lm_crop = source_to_crop(landmarks, crop_quad, TRANSFORM_FRAME)
    return stylegan_transform(lm_aligned, lm_crop, width=TRANSFORM_FRAME)


def encode_unaligned(model, face: UnalignedInput, iterations: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w_plus [n_styles, D], image [3, R, R])``: the aligned crop encoded, the last iteration
    rendered with the inverse landmark transform."""
    device = model.latent_avg.device
    x = pil_to_tensor(face.aligned, model.input_size)[None].to(device)
    t = torch.from_numpy(face.transform.inverse_transform).float()[None].to(device)
    with torch.inference_mode():
        w, image = model.invert(x, iterations, transform=t)[-1]
    return w[0], image[0]


def transform_meta(t: StyleGANTransform) -> dict:
    """What a latent file keeps of its landmark transform (``transform``: the inverse one the
    generator renders with, read back by :func:`instyle.inference.encoding.load_encoding`)."""
    return {"transform": t.inverse_transform.tolist(), "forward_transform": t.transform.tolist(),
            "rotation_angle": t.rotation_angle, "translation": t.translation.tolist()}


def unaligned_preparer(model, detector: str = "auto") -> Callable[[Path], RefineInput]:
    """``path -> RefineInput`` for ``encode --unaligned --refine``: the aligned crop is
    encoded, the unaligned crop is the image fitted, rendered under the inverse landmark
    transform (as stylegan3-editing's ``run_pti_images.py --landmarks_transforms_path``)."""

    def prepare(path: Path) -> RefineInput:
        try:
            face = unaligned_input(load_image(path, mode="RGB"), size=model.input_size, detector=detector)
        except (InstyleError, OSError) as e:
            raise InputError(str(e) if str(path) in str(e) else f"{path}: {e}") from None
        if face is None:
            raise InputError(f"{path}: no face found")
        t = torch.from_numpy(face.transform.inverse_transform).float()
        return RefineInput(pil_to_tensor(face.aligned, model.input_size), pil_to_tensor(face.crop, model.input_size), t,
                           transform_meta(face.transform))

    return prepare


def encode_unaligned_files(
    model,
    files: Sequence[InputFile],
    out: str | os.PathLike,
    *,
    iterations: int | None = None,
    full_resolution: bool = False,
    side_by_side: bool = False,
    image_format: str = "png",
    detector: str = "auto",
    log: Callable[[str], None] = print,
) -> dict:
    """Encode each photo's largest face unaligned; write ``<name>.<format>`` (crop | output with
    ``side_by_side``) and ``latents/<name>.npz`` (``w_plus`` + the transform in its meta).

    A photo without a face or that cannot be read is reported through ``log`` and skipped.
    Returns the summary also written to ``out/summary.json``."""
    outputs = lambda n: [f"{n}.{image_format}", f"latents/{n}.npz"]  # noqa: E731
    names = output_names(files, outputs, ["summary.json"])
    out = prepare_output_folder(out, files, [Path(out) / o for n in names for o in outputs(n)])
    records, t0 = [], time.perf_counter()
    for f, name in zip(files, names):
        record = {"input": str(f.path), "outputs": [], "status": "failed", "error": None}
        records.append(record)
        try:
            face = unaligned_input(load_image(f.path, mode="RGB"), size=model.input_size, detector=detector)
            if face is None:
                raise InputError(f"{f.path}: no face found")
            w, image = encode_unaligned(model, face, iterations)
        except (InstyleError, OSError) as e:
            record["error"] = str(e)
            log(f"skipped {e}")
            continue
        result = tensor_to_pil(image if full_resolution else model._pool(image[None])[0])
        if side_by_side:
            pair = Image.new("RGB", (result.width * 2, result.height))
            pair.paste(face.crop.resize(result.size, Image.Resampling.BICUBIC), (0, 0))
            pair.paste(result, (result.width, 0))
            result = pair
        meta = transform_meta(face.transform)
        save_image(result, out / f"{name}.{image_format}")
        save_latent(out / "latents" / f"{name}.npz", w.float().cpu(), meta=meta)
        record.update(status="encoded", outputs=outputs(name))
    done = sum(r["status"] == "encoded" for r in records)
    summary = {"encoded": done, "failed": len(records) - done, "seconds": round(time.perf_counter() - t0, 3),
               "iterations": iterations or model.default_iterations, "unaligned": True, "files": records}
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary
