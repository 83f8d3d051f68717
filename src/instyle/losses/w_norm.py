"""W-norm regulariser: keeps the predicted latents close to the average latent."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["w_norm_loss", "WNormLoss"]


def w_norm_loss(latent: torch.Tensor, latent_avg: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_b ||latent_b - latent_avg||_F / B`` (the plain norm when ``latent_avg`` is None).

    Args:
        latent: the W+ codes fed to the generator ``[B, n_styles, 512]`` (for a W encoder
            the w repeated over the styles, so the deviation counts sqrt(n_styles)-fold,
            as in the original).
        latent_avg: ``[n_styles, 512]``, ``[1, 512]`` or ``[512]``; broadcast.

    Returns:
        0-d tensor.
    """
    if latent.ndim != 3:
        raise ValueError(f"w_norm_loss expects latents [B, n_styles, D], got {tuple(latent.shape)}")
    if latent_avg is not None:
        latent = latent - latent_avg.to(latent.dtype)
    return torch.sum(latent.norm(2, dim=(1, 2))) / latent.shape[0]


class WNormLoss(nn.Module):
    """Module form of :func:`w_norm_loss`.

    Args:
        start_from_latent_avg: subtract ``latent_avg`` (True when the model adds it to
            the encoder output); otherwise penalise the raw latent norm.
    """

    def __init__(self, start_from_latent_avg: bool = True):
        super().__init__()
        self.start_from_latent_avg = start_from_latent_avg

    def forward(self, latent: torch.Tensor, latent_avg: torch.Tensor | None = None) -> torch.Tensor:
        if self.start_from_latent_avg and latent_avg is None:
            raise ValueError("WNormLoss(start_from_latent_avg=True) needs latent_avg")
        return w_norm_loss(latent, latent_avg if self.start_from_latent_avg else None)
