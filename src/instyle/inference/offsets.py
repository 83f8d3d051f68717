"""HyperStyle's per-image generator offsets: helpers of its family (checking a file's offsets
against a model, one sample of a batch, interpolation frames). The shared tools carry them
inside an :class:`~instyle.inference.encoding.Encoding`.

For a pSp-family model the offsets are always ``None``; for a
:class:`~instyle.models.hyperstyle.HyperStyle` they are its ``weights_deltas`` (one entry
or None per generator weight layer, ``[B or 1, out, in, k, k]``). A batch-1 entry applies
to every code of a batch, which is how edited latents of one image are re-rendered on
that image's tuned generator, as HyperStyle's editing scripts do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from instyle.errors import InputError
from instyle.inference.interpolation import interpolate_path
from instyle.models.family import family_of
from instyle.models.hyperstyle import OffsetsOps

__all__ = [
    "Offsets",
    "check_offsets",
    "frame_offsets",
    "path_coefficients",
    "sample_offsets",
    "uses_offsets",
]

Offsets = list[torch.Tensor | None]


def uses_offsets(model) -> bool:
    """Whether the model's latents carry per-image generator offsets (its family's encoding)."""
    return family_of(model).encoding == "offsets"


def sample_offsets(offsets: Sequence[torch.Tensor | None] | None, i: int) -> Offsets | None:
    """The offsets of sample ``i`` of a batch, each with a batch dimension of 1."""
    if offsets is None:
        return None
    return [None if d is None else d[i : i + 1] for d in offsets]


def frame_offsets(offsets: Sequence[Sequence[torch.Tensor | None]], coefficients: torch.Tensor) -> Offsets:
    """Offsets of ``F`` frames blended from ``n`` images: ``coefficients [F, n]`` (e.g. the
    interpolation weights) -> one list with ``[F, out, in, k, k]`` entries (the family's
    :meth:`~instyle.models.hyperstyle.OffsetsOps.blend`; a layer untuned in any input stays None)."""
    return OffsetsOps.blend([list(o) for o in offsets], coefficients)


def path_coefficients(n: int, steps_per_segment: int) -> torch.Tensor:
    """``[frames, n]`` weights of the ``n`` inputs in each frame of
    :func:`~instyle.inference.interpolation.interpolate_path` (for :func:`frame_offsets`)."""

    eye = torch.eye(n, dtype=torch.float64)
    return interpolate_path([eye[j][None] for j in range(n)], steps_per_segment)[:, 0]


def check_offsets(model, offsets: Sequence[torch.Tensor | None]) -> None:
    """Raise ``InputError`` (naming the first bad layer) unless ``offsets`` fit the model's
    generator: one entry per weight layer, each ``[B, out, in, k or 1, k or 1]`` or None."""
    layers = model.decoder.weight_layers()
    if len(offsets) != len(layers):
        raise InputError(f"{len(offsets)} weight offsets, but this model's generator has {len(layers)} weight layers")
    for i, (d, layer) in enumerate(zip(offsets, layers)):
        if d is None:
            continue
        o, n, k = layer.out_channel, layer.in_channel, layer.kernel_size
        if d.ndim != 5 or tuple(d.shape[1:3]) != (o, n) or d.shape[3] not in (1, k) or d.shape[4] not in (1, k):
            raise InputError(
                f"weight offsets of layer {i} have shape {tuple(d.shape)}; this model's layer {i} needs "
                f"[B, {o}, {n}, {k} or 1, {k} or 1] (latents of another model?)"
            )
