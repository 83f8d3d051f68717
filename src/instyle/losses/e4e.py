"""e4e's extra training terms (``training/coach.py`` of omertov/encoder4editing).

* delta regularisation: ``sum_{i=1..stage} mean_b ||w_i - w_0||_p`` over the styles whose
  offsets the progressive stage has enabled;
* the non-saturating adversarial loss on the encoder's codes, averaged over the
  discriminated styles;
* the discriminator's logistic loss and its R1 gradient penalty on real codes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["delta_regularization", "encoder_adversarial_loss", "discriminator_loss", "r1_penalty"]


def delta_regularization(latent: torch.Tensor, stage: int, p: float = 2) -> tuple[torch.Tensor, dict[str, float]]:
    """``latent [B, n_styles, D]`` -> (total, ``{"delta{i}_loss": ...}``) for ``i = 1..stage``."""
    first = latent[:, 0]
    total = latent.new_zeros(())
    terms = {}
    for i in range(1, stage + 1):
        delta = torch.norm(latent[:, i] - first, p, dim=1).mean()
        terms[f"delta{i}_loss"] = float(delta.detach())
        total = total + delta
    return total, terms


def encoder_adversarial_loss(discriminator: nn.Module, latent: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """``mean_{i in dims} softplus(-D(latent[:, i])).mean()`` (the encoder wants "real")."""
    total = sum(F.softplus(-discriminator(latent[:, i])).mean() for i in dims)
    return total / len(dims)


def discriminator_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    """``softplus(-D(real)).mean() + softplus(D(fake)).mean()``."""
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def r1_penalty(real_pred: torch.Tensor, real_w: torch.Tensor) -> torch.Tensor:
    """``mean_b ||d D(real_w) / d real_w||^2`` (graph kept so it can be back-propagated)."""
    (grad,) = torch.autograd.grad(outputs=real_pred.sum(), inputs=real_w, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()
