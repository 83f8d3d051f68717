"""Pixel-wise L2 (mean squared error), on the full image or the inner-face crop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from instyle.losses.crop import face_crop

__all__ = ["l2_loss", "L2Loss"]


def l2_loss(y_hat: torch.Tensor, y: torch.Tensor, crop: bool = False) -> torch.Tensor:
    """Mean over all elements of ``(y_hat - y)**2`` (``F.mse_loss``, as the original).

    Args:
        y_hat: generated images ``[B, C, H, W]`` (raw generator output, unclamped).
        y: targets of the same shape in [-1, 1].
        crop: use only the inner-face window (needs 256x256, see :func:`face_crop`).

    Returns:
        0-d tensor.
    """
    if y_hat.shape != y.shape:
        raise ValueError(f"l2_loss: shapes differ: y_hat {tuple(y_hat.shape)} vs y {tuple(y.shape)}")
    if crop:
        y_hat, y = face_crop(y_hat), face_crop(y)
    return F.mse_loss(y_hat, y)


class L2Loss(nn.Module):
    """Module form of :func:`l2_loss` (``crop`` fixed at construction)."""

    def __init__(self, crop: bool = False):
        super().__init__()
        self.crop = crop

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return l2_loss(y_hat, y, crop=self.crop)
