"""MoCo-v2 feature similarity: the identity loss for non-face domains.

As the original (``criteria/moco_loss.py``): a torchvision ResNet-50 whose
convolutional trunk comes from the self-supervised MoCo-v2 checkpoint
(``moco_v2_800ep_pretrain.pth.tar``: ``{'state_dict': {'module.encoder_q.*'}}``),
the final ``fc`` removed; images are resized to 224 (nearest) without further
normalisation; features are the l2-normalised 2048-D pooled outputs.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from instyle.losses.similarity import SimilarityOutput, similarity_terms
from instyle.losses.weights import LossWeightsError, find_weights, read_state_dict
from instyle.utils.config import ConfigError

__all__ = ["MOCO_HELP", "MocoLoss", "moco_trunk_state"]

MOCO_HELP = (
    "The MoCo loss needs the MoCo-v2 ResNet-50 weights 'moco_v2_800ep_pretrain.pth.tar' (from "
    "facebookresearch/moco, 'Models'); give them with --set moco_weights=PATH."
)


def moco_trunk_state(state: dict[str, torch.Tensor], source: object = "weights") -> dict[str, torch.Tensor]:
    """Keep the query encoder's trunk: ``module.encoder_q.X`` -> ``X`` (without ``fc``).

    A plain torchvision ResNet-50 state dict is accepted as is (its ``fc`` dropped).
    """
    prefix = "module.encoder_q."
    if any(k.startswith(prefix) for k in state):
        out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    else:
        out = dict(state)
    out = {k: v for k, v in out.items() if not k.startswith("fc.")}
    if "conv1.weight" not in out:
        raise LossWeightsError(f"{source}: not a MoCo / ResNet-50 checkpoint (no conv1.weight). {MOCO_HELP}")
    return out


class MocoLoss(nn.Module):
    """MoCo-v2 similarity loss.

    Args:
        weights: path of the MoCo-v2 checkpoint.
        random_init: random trunk instead (tests only).

    ``forward(y_hat, y, x)``: images ``[B, 3, H, W]`` in [-1, 1] -> :class:`SimilarityOutput`.
    """

    def __init__(self, weights: str | os.PathLike | None = None, random_init: bool = False):
        super().__init__()
        import torchvision

        resnet = torchvision.models.resnet50(weights=None)
        if not random_init:
            if weights is None:
                raise LossWeightsError(f"no MoCo weights given. {MOCO_HELP}")
            path = find_weights(weights, (), "MoCo-v2 ResNet-50", MOCO_HELP)
            state = moco_trunk_state(read_state_dict(path, "MoCo-v2"), path)
            missing, unexpected = resnet.load_state_dict(state, strict=False)
            if set(missing) != {"fc.weight", "fc.bias"} or unexpected:
                raise LossWeightsError(
                    f"{path}: does not fit a ResNet-50 (missing {missing[:3]}, unexpected {unexpected[:3]})"
                )
        self.model = nn.Sequential(*list(resnet.children())[:-1])
        self.model.eval()
        self.model.requires_grad_(False)

    def train(self, mode: bool = True) -> MocoLoss:
        super().train(mode)
        self.model.eval()
        return self

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, 2048]`` l2-normalised features."""
        feats = self.model(F.interpolate(images, size=224))
        return F.normalize(feats.flatten(1), dim=1)

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> SimilarityOutput:
        if x.shape[1] != 3:
            raise ConfigError(f"the MoCo loss needs an RGB input x, got {x.shape[1]} channels (set moco_lambda=0)")
        with torch.no_grad():
            e_x = self.embed(x)
            e_y = self.embed(y)
        return similarity_terms(self.embed(y_hat), e_y, e_x)
