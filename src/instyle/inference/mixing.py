"""Multi-modal synthesis by style mixing (the paper's Sec. 4.4 / the original ``style_mixing.py``).

For each input code, ``n_outputs`` variants keep the input's styles on some layers and take
the others (``latent_mask``) from random w's drawn through the mapping network::

    w_plus = model.encode(x)                                  # [B, n_styles, 512]
    mixed = style_mix(model, w_plus, n_outputs=5, seed=0)     # [B, 5, n_styles, 512]
    images = model.decode(mixed.flatten(0, 1))                # [B * 5, 3, H, W]

Indices are **0-based** exactly as the original's ``--latent_mask``; its published command
uses ``8,...,17`` (the paper's text calls these "layers 8-18" in 1-based words). With
``alpha`` the masked layers are blended, ``alpha * random + (1 - alpha) * input``, instead of
replaced -- the original's ``--mix_alpha`` (the paper mixes layers 4-7 with 0.5 for
super-resolution).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

__all__ = [
    "DEFAULT_MASK_START",
    "MAX_STYLE_LAYERS",
    "default_latent_mask",
    "mix_latents",
    "parse_latent_mask",
    "random_w_plus",
    "style_mix",
]

#: First 0-based layer taken from the random style by default (the original's published command).
DEFAULT_MASK_START = 8


def default_latent_mask(n_styles: int) -> list[int]:
    """``range(8, n_styles)``: the fine layers (the original's ``--latent_mask=8,...,17`` at 1024 px)."""
    return list(range(min(DEFAULT_MASK_START, n_styles), n_styles))


#: Largest layer count any StyleGAN2 has (18 at 1024 px); bounds ranges parsed without a model.
MAX_STYLE_LAYERS = 64

_INDEX = re.compile(r"[0-9]+")


def _check_index(i: int, part: str, n_styles: int | None) -> None:
    """Refuse an index outside ``[0, n_styles)`` (or ``MAX_STYLE_LAYERS``) before anything is expanded."""
    if n_styles is not None and not 0 <= i < n_styles:
        raise ValueError(
            f"latent mask {part!r}: index {i} is outside the model's 0-based style layers [0, {n_styles - 1}]"
        )
    if n_styles is None and not 0 <= i < MAX_STYLE_LAYERS:
        raise ValueError(f"latent mask {part!r}: index {i} must be >= 0 and at most {MAX_STYLE_LAYERS - 1}")


def parse_latent_mask(spec: str | Sequence[int], n_styles: int | None = None) -> list[int]:
    """``"8-17"``, ``"0,1,4-6"`` or a list of ints -> sorted unique 0-based layer indices.

    Ranges are inclusive at both ends; indices are plain decimal digits. Every bound is
    checked against ``[0, n_styles)`` (without ``n_styles``: ``[0, MAX_STYLE_LAYERS)``)
    *before* a range is expanded, so ``"0-1000000000"`` is refused at once.

    Raises:
        ValueError: a malformed part or an index out of range (the message names it).
    """
    out: set[int] = set()
    if isinstance(spec, str):
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            if not _INDEX.fullmatch(lo) or (sep and not _INDEX.fullmatch(hi)):
                raise ValueError(
                    f"latent mask part {part!r} is not an index or a range like '8-17' (0-based, inclusive)"
                )
            a = int(lo)
            b = int(hi) if sep else a
            if b < a:
                raise ValueError(f"latent mask range {part!r} runs backwards; write it as '{b}-{a}'")
            _check_index(a, part, n_styles)
            _check_index(b, part, n_styles)
            out.update(range(a, b + 1))
        if not out:
            raise ValueError(f"latent mask {spec!r} names no layers; give e.g. '8-17' or '0,1,4-6'")
    else:
        for i in spec:
            _check_index(int(i), str(i), n_styles)
            out.add(int(i))
    return sorted(out)


def _truncation_center(model) -> torch.Tensor:
    """``[1, D]`` mean w: the generator's ``latent_avg`` when known, else estimated (seeded)."""
    center = getattr(model.decoder, "latent_avg", None)
    if center is None:
        center = model.decoder.mean_latent(4096, seed=0)
    return center.reshape(-1, center.shape[-1]).mean(0, keepdim=True)


@torch.no_grad()
def random_w_plus(model, n: int, seed: int = 0, truncation: float = 1.0) -> torch.Tensor:
    """``n`` random W+ codes ``[n, n_styles, D]``: z ~ N(0, I) through the mapping network,
    one w repeated over all layers -- exactly ``model(z, input_code=True, return_latents=True)[1]``
    of the original -- then moved toward the mean w by ψ = ``truncation`` (1 = no truncation).

    z is drawn on the CPU from ``torch.Generator().manual_seed(seed)``, so the codes are the
    same on every device.
    """
    if n < 1:
        raise ValueError(f"n={n} random codes requested; need at least 1")
    if not 0.0 <= truncation <= 1.0:
        raise ValueError(f"truncation={truncation} must be in [0, 1] (1 = none)")
    dec = model.decoder
    device = next(dec.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    z = torch.randn(n, dec.style_dim, generator=gen).to(device)
    w = dec.style(z)
    if truncation < 1.0:
        center = _truncation_center(model).to(w)
        w = center + truncation * (w - center)
    return w[:, None].repeat(1, dec.n_latent, 1)


def mix_latents(
    w_plus: torch.Tensor, inject: torch.Tensor, latent_mask: Sequence[int], alpha: float | None = None
) -> torch.Tensor:
    """The original's ``latent_mask`` rule on codes (a new tensor; inputs are not modified).

    For each index ``i`` in ``latent_mask``: ``w[:, i] = inject[:, i]`` (``alpha`` None) or
    ``w[:, i] = alpha * inject[:, i] + (1 - alpha) * w[:, i]``. Other layers are untouched.

    Args:
        w_plus: ``[B, n_styles, D]`` codes of the inputs.
        inject: ``[B or 1, n_styles, D]`` codes to take the masked layers from.
    """
    if w_plus.ndim != 3 or inject.ndim != 3 or inject.shape[1:] != w_plus.shape[1:]:
        raise ValueError(
            f"mix_latents needs w_plus [B, n, D] and inject [B or 1, n, D]; got {tuple(w_plus.shape)} "
            f"and {tuple(inject.shape)}"
        )
    out = w_plus.clone()
    inject = inject.to(out)
    for i in latent_mask:
        if alpha is None:
            out[:, i] = inject[:, i]
        else:
            out[:, i] = alpha * inject[:, i] + (1 - alpha) * out[:, i]
    return out


@torch.no_grad()
def style_mix(
    model,
    w_plus: torch.Tensor,
    n_outputs: int = 5,
    latent_mask: Sequence[int] | str | None = None,
    alpha: float | None = None,
    seed: int = 0,
    truncation: float = 1.0,
) -> torch.Tensor:
    """Style-mixed variants of each input code.

    Args:
        model: a :class:`~instyle.models.psp.PSP` (its mapping network draws the random styles).
        w_plus: ``[B, n_styles, D]`` (or one code ``[n_styles, D]``) input codes.
        n_outputs: variants per input.
        latent_mask: 0-based layers taken from the random styles; default ``range(8, n_styles)``.
        alpha: None replaces those layers, a float blends them (``alpha`` = weight of the random style).
        seed: the random styles; the same ``n_outputs`` random codes serve every input of the
            batch (output ``k`` of every input shares one random style), so results do not
            depend on how inputs are batched.
        truncation: ψ for the random styles (1 = none).

    Returns:
        ``[B, n_outputs, n_styles, D]``.
    """
    if w_plus.ndim == 2:
        w_plus = w_plus[None]
    n_styles = model.n_styles
    if w_plus.ndim != 3 or w_plus.shape[1] != n_styles:
        raise ValueError(f"style_mix expects codes [B, {n_styles}, D], got {tuple(w_plus.shape)}")
    if latent_mask is None:
        mask = default_latent_mask(n_styles)
    else:
        mask = parse_latent_mask(latent_mask, n_styles)
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1] or None (replace)")
    randoms = random_w_plus(model, n_outputs, seed=seed, truncation=truncation).to(w_plus)
    outs = [mix_latents(w_plus, randoms[k : k + 1], mask, alpha) for k in range(n_outputs)]
    return torch.stack(outs, dim=1)
