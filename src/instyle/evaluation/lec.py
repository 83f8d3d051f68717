"""Latent Editing Consistency (LEC), the e4e paper's measure of how editable inversions are.

For each image: encode it (``w``), edit the code (``w' = edit(w)``), generate the edited
image, encode that image again and undo the edit on the new code; LEC is the distance
``‖w - inverse(encode(G(w')))‖₂`` over all styles, averaged. e4e's ``metrics/LEC.py``
averages it per batch, drops the batches below the 1st / above the 99th percentile and
reports the mean of the rest; :func:`latent_editing_consistency` does the same (the last,
smaller batch is kept rather than dropped). Lower is better.

The inverse of an edit is the same shift taken back: ``w' - w`` is subtracted from the
re-encoded code (``- s · d`` for a direction, the same delta for a GANSpace edit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from instyle.inference.editing import edit_codes
from instyle.inference.io import ImageLoadError, collect_inputs
from instyle.inference.preprocess import prepare_input

__all__ = ["latent_editing_consistency", "filter_outliers", "edit_function", "lec_on_folder"]


def filter_outliers(values: Iterable[float]) -> np.ndarray:
    """Values inside ``[1st percentile (lower), 99th percentile (higher)]``, as e4e filters."""
    arr = np.asarray(list(values), dtype=np.float64)
    lo = np.percentile(arr, 1, method="lower")
    hi = np.percentile(arr, 99, method="higher")
    return arr[(lo <= arr) & (arr <= hi)]


def _regenerate(model, codes: torch.Tensor) -> torch.Tensor:
    """Codes -> images at the encoder's input size (the original pools with ``face_pool``)."""
    images = model.decode(codes, resize=True)
    size = model.input_size
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return images


@torch.no_grad()
def latent_editing_consistency(
    model, batches: Iterable[torch.Tensor], edit: Callable[[torch.Tensor], torch.Tensor]
) -> dict:
    """LEC of ``model`` (a pSp-family inversion model) for one edit.

    Args:
        model: :class:`~instyle.models.psp.PSP` (photos in, photos out).
        batches: image batches ``[B, 3, S, S]`` in [-1, 1] on the model's device.
        edit: ``codes [B, n_styles, D] -> edited codes`` (same shape).

    Returns:
        ``{"lec": mean after outlier filtering, "per_batch": [...], "per_image": [...]}``.
    """
    if model.input_nc != 3:
        raise ValueError(f"LEC re-encodes generated photos; this model takes {model.input_nc}-channel inputs")
    per_batch, per_image = [], []
    for x in batches:
        codes = model.encode(x).float()
        edited = edit(codes)
        if edited.shape != codes.shape:
            raise ValueError(f"the edit returned codes of shape {tuple(edited.shape)} for {tuple(codes.shape)}")
        again = model.encode(_regenerate(model, edited)).float()
        dist = (codes - (again - (edited - codes))).flatten(1).norm(dim=1)
        per_image.extend(dist.tolist())
        per_batch.append(float(dist.mean()))
    if not per_batch:
        raise ValueError("LEC needs at least one image")
    return {"lec": float(filter_outliers(per_batch).mean()), "per_batch": per_batch, "per_image": per_image}


def edit_function(edit, spec) -> Callable[[torch.Tensor], torch.Tensor]:
    """A batch edit ``[B, n_styles, D] -> [B, n_styles, D]`` from a loaded edit file and one
    named edit with a single strength (:mod:`instyle.inference.editing`)."""

    if len(spec.strengths) != 1:
        raise ValueError(f"LEC measures one edit: give one strength, e.g. {spec.name}=3, not {len(spec.strengths)}")
    return lambda codes: torch.stack([edit_codes(c, edit, spec)[0] for c in codes])


def lec_on_folder(model, data, edit: Callable, batch_size: int = 8, max_images: int | None = None) -> dict:
    """LEC on the photos of a folder (or files / globs), prepared like ``instyle encode`` does.
    Unreadable images are skipped and counted in ``"skipped"``."""

    paths, problems = collect_inputs([data] if isinstance(data, (str, bytes)) or not isinstance(data, Iterable) else data)
    paths = paths[:max_images] if max_images else paths
    device = next(model.parameters()).device
    images, skipped = [], len(problems)
    for p in paths:
        try:
            images.append(prepare_input(p, model.config))
        except (ImageLoadError, ValueError, OSError):
            skipped += 1
    batches = (torch.stack(images[i : i + batch_size]).to(device) for i in range(0, len(images), batch_size))
    result = latent_editing_consistency(model, batches, edit)
    return {**result, "n_images": len(images), "skipped": skipped}
