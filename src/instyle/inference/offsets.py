"""HyperStyle's per-image generator offsets in the shared tools (encode, edit, mix,
interpolate): one way to encode and decode for every model.

For a pSp-family model the offsets are always ``None``; for a
:class:`~instyle.models.hyperstyle.HyperStyle` they are its ``weights_deltas`` (one entry
or None per generator weight layer, ``[B or 1, out, in, k, k]``). A batch-1 entry applies
to every code of a batch, which is how edited latents of one image are re-rendered on
that image's tuned generator, as HyperStyle's editing scripts do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from instyle.errors import InputError
from instyle.inference.interpolation import interpolate_path
from instyle.models.family import family_of

__all__ = [
    "Offsets",
    "batch_slice",
    "check_offsets",
    "blend_offsets",
    "decode_with_offsets",
    "encode_with_offsets",
    "frame_offsets",
    "path_coefficients",
    "sample_offsets",
    "uses_offsets",
]

Offsets = list[torch.Tensor | None]


def uses_offsets(model) -> bool:
    """Whether the model's latents carry per-image generator offsets (its family's encoding)."""
    return family_of(model).encoding == "offsets"


def encode_with_offsets(model, x: torch.Tensor, iterations: int | None = None) -> tuple[torch.Tensor, Any]:
    """Images ``[B, C, S, S]`` -> ``(w_plus [B, n_styles, D], extra or None)``: the family's
    ``invert`` (extra: HyperStyle's offsets, StyleFeatureEditor's encoding, else None).

    ``iterations``: refinement steps of an iterative family (default the model's); other
    models take one step (None or 1)."""
    return model.encode_for_render(x, iterations=iterations)


def decode_with_offsets(model, w_plus: torch.Tensor, offsets: Any = None, resize: bool = False) -> torch.Tensor:
    """W+ ``[B, n_styles, D]`` -> images, with what the encoding carried (the family's ``synthesize``)."""
    return model.synthesize(w_plus, offsets, resize=resize)


def sample_offsets(offsets: Sequence[torch.Tensor | None] | None, i: int) -> Offsets | None:
    """The offsets of sample ``i`` of a batch, each with a batch dimension of 1."""
    if offsets is None:
        return None
    return [None if d is None else d[i : i + 1] for d in offsets]


def batch_slice(offsets: Sequence[torch.Tensor | None] | None, start: int, stop: int) -> Offsets | None:
    """Rows ``start:stop`` of per-sample offsets; batch-1 offsets (shared) are kept whole."""
    if offsets is None:
        return None
    return [d if d is None or d.shape[0] == 1 else d[start:stop] for d in offsets]


def blend_offsets(offsets: Sequence[Sequence[torch.Tensor | None]], weights: Sequence[float]) -> Offsets:
    """``sum_j weights[j] * offsets[j]`` layer by layer (batch-1 offsets of several images,
    e.g. for the frames of an interpolation); a layer untuned in any input stays None."""
    out: Offsets = []
    for layer in zip(*offsets):
        if any(d is None for d in layer):
            out.append(None)
            continue
        k = max(d.shape[-1] for d in layer)
        out.append(sum(float(wj) * d.expand(*d.shape[:-2], k, k) for wj, d in zip(weights, layer)))
    return out


def frame_offsets(offsets: Sequence[Sequence[torch.Tensor | None]], coefficients: torch.Tensor) -> Offsets:
    """Offsets of ``F`` frames blended from ``n`` images: ``coefficients [F, n]`` (e.g. the
    interpolation weights) -> one list with ``[F, out, in, k, k]`` entries."""
    frames = [blend_offsets(offsets, row.tolist()) for row in coefficients]
    return [None if layer[0] is None else torch.cat(layer) for layer in zip(*frames)]


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
