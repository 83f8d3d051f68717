"""Edit directions computed from a generator: SeFa (closed-form factorisation).

SeFa (Shen & Zhou, 2021) reads the directions straight from the weights: the style of a
synthesis layer acts only through its modulation ``A`` (``style_dim -> in_channels``), so
the directions ``n`` that change the modulated styles most maximise ``‖A n‖``: the top
eigenvectors of ``Aᵀ A`` over the chosen layers (each row of ``A`` normalised first)::

    result = sefa(generator, layers=[2, 3, 4, 5])       # styles 2..5
    result.directions[0]                                 # [D], unit norm, largest eigenvalue
    result.save("dirs.npz")                              # `instyle edit -d dirs.npz --edit sefa:0=-5..5:7`

Layers are 0-based W+ style indices; style ``l`` drives ``conv1`` (``l = 0``) or
``convs[l - 1]``. The e4e port (``editings/sefa.py``) reads ``convs[l - 1]`` too but then
edits style ``l - 1``, one off; ``mode="e4e"`` reproduces that exactly for comparisons.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from instyle.utils.atomic import atomic_write_bytes

__all__ = ["SEFA_MODES", "SefaResult", "sefa", "sefa_weights"]

#: ``styles``: layers are the style indices edited (default); ``e4e``: the original port's
#: layer handling, off by one, for reproducing its results.
SEFA_MODES = ("styles", "e4e")


@dataclass
class SefaResult:
    """Directions ``[K, D]`` (rows, unit norm, by decreasing eigenvalue), their eigenvalues
    ``[K]`` and the style indices an edit moves."""

    directions: torch.Tensor
    eigenvalues: torch.Tensor
    layers: tuple[int, ...]
    mode: str = "styles"

    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` (``directions``, ``eigenvalues``, ``layers``, ``kind``, ``meta``)
        that :func:`instyle.inference.editing.load_edit` reads; atomically."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"SeFa directions are written as .npz, got {path.name!r}")
        buf = io.BytesIO()
        np.savez(
            buf,
            directions=self.directions.float().numpy(),
            eigenvalues=self.eigenvalues.float().numpy(),
            layers=np.asarray(self.layers, dtype=np.int64),
            kind=np.asarray("sefa"),
            meta=np.asarray(json.dumps({"mode": self.mode})),
        )
        atomic_write_bytes(path, buf.getvalue())
        return path


def _conv_layers(generator) -> list:
    """The synthesis convolutions in style order: style ``l`` drives ``convs_by_style[l]``."""
    return [generator.conv1, *generator.convs]


def _style_modulations(generator) -> list:
    """Per style index, the modulation weight ``[in_channels, D]`` of the convolution it
    drives, or None (a StyleGAN3 generator's style 0 drives its input transform)."""
    if hasattr(generator, "modulation_weights"):
        return generator.modulation_weights()
    return [c.conv.modulation.weight for c in _conv_layers(generator)]


def sefa_weights(generator, layers: Sequence[int] | None = None, mode: str = "styles") -> tuple[list[torch.Tensor], tuple[int, ...]]:
    """The modulation weights ``[in_channels, D]`` SeFa factorises, and the styles it edits.

    ``layers=None`` means every style that drives a convolution (``0 .. n_latent - 2``;
    the last style drives only the final ToRGB). In ``e4e`` mode ``layers`` follow the
    original's rule: ``conv1`` when 0 is listed (or all), ``convs[l - 1]`` for the other
    ``l`` (``convs[0 .. num_layers - 2]`` for all), and the styles edited are those
    ``convs`` indices, not the styles that drive them.
    """
    if mode not in SEFA_MODES:
        raise ValueError(f"SeFa mode {mode!r} is not one of {', '.join(SEFA_MODES)}")
    if hasattr(generator, "modulation_weights"):
        return _sefa_weights_by_style(generator, layers, mode)
    convs = _conv_layers(generator)
    n = len(convs)
    if mode == "e4e":
        chosen = [0] if layers is None or 0 in layers else []
        edited = list(range(generator.num_layers - 1)) if layers is None else [i - 1 for i in layers if i != 0]
        bad = [i for i in edited if not 0 <= i < n - 1]
        chosen += [i + 1 for i in edited]
    else:
        edited = list(range(n)) if layers is None else sorted(set(layers))
        bad = [i for i in edited if not 0 <= i < n]
        chosen = edited
    if bad or not chosen:
        raise ValueError(
            f"SeFa layers {list(layers or [])} do not fit: this generator's convolutions are driven by styles 0..{n - 1}"
            f"{' (e4e mode: layers 0..' + str(n) + ')' if mode == 'e4e' else ''}"
        )
    weights = [convs[i].conv.modulation.weight.detach() for i in chosen]
    return weights, tuple(edited)


def _sefa_weights_by_style(generator, layers, mode: str) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    mods = _style_modulations(generator)
    usable = [i for i, w in enumerate(mods) if w is not None]
    if mode != "styles":
        raise ValueError(f"SeFa mode {mode!r} exists for StyleGAN2 generators only; use mode 'styles'")
    edited = usable if layers is None else sorted(set(layers))
    bad = [i for i in edited if i not in usable]
    if bad or not edited:
        raise ValueError(f"SeFa layers {list(layers or [])} do not fit: this generator's convolutions are driven by styles "
                         f"{usable[0]}..{usable[-1]}")
    return [mods[i].detach() for i in edited], tuple(edited)


@torch.no_grad()
def sefa(generator, layers: Sequence[int] | None = None, mode: str = "styles") -> SefaResult:
    """SeFa directions of ``generator`` (any :class:`~instyle.models.stylegan2.Generator`).

    ``A`` stacks the chosen modulation weights' rows, each normalised to unit length; the
    directions are the eigenvectors of ``Aᵀ A`` (``[D, D]``, computed in float64), sorted by
    decreasing eigenvalue, each signed so that its largest-magnitude entry is positive.
    """
    weights, edited = sefa_weights(generator, layers, mode)
    a = torch.cat([w.double().cpu() for w in weights])  # [sum in_channels, D]
    a = a / a.norm(dim=1, keepdim=True)
    values, vectors = torch.linalg.eigh(a.T @ a)
    order = torch.argsort(values, descending=True)
    values, vectors = values[order], vectors[:, order].T  # rows are directions
    peak = vectors.gather(1, vectors.abs().argmax(1, keepdim=True))
    vectors = vectors * torch.sign(peak)
    return SefaResult(vectors.float(), values.float(), edited, mode)
