"""e4e's latent-code discriminator: an MLP telling the generator's w (mapped from z) from
the encoder's codes. Parameter names follow the original (``mlp.0`` ... ``mlp.6``)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LatentCodesDiscriminator"]


class LatentCodesDiscriminator(nn.Module):
    """``(n_mlp - 1) x [Linear(D, D), LeakyReLU(0.2)]`` then ``Linear(D, 1)``.

    ``forward(w [B, D]) -> [B, 1]`` logits (real = the mapping network's w).
    """

    def __init__(self, style_dim: int = 512, n_mlp: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(n_mlp - 1):
            layers += [nn.Linear(style_dim, style_dim), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(style_dim, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.mlp(w)
