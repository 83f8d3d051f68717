"""The pSp training objective: a weighted sum of the loss terms (``calc_loss``).

``loss = id_lambda*loss_id + l2_lambda*mse + lpips_lambda*lpips + lpips_lambda_crop*lpips(crop)
+ l2_lambda_crop*mse(crop) + w_norm_lambda*w_norm + moco_lambda*loss_moco``, summed in
this order; a term is computed only when its lambda is > 0. The returned ``terms``
dict has exactly the original's ``loss_dict`` keys and values (Python floats).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from instyle.losses.identity import IDLoss
from instyle.losses.lpips import LPIPS_NETS, LPIPSLoss
from instyle.losses.moco import MocoLoss
from instyle.losses.pixel import l2_loss
from instyle.losses.w_norm import WNormLoss
from instyle.utils.config import ConfigError, DictConfig, check_choice

__all__ = ["LAMBDAS", "ObjectiveConfig", "ObjectiveOutput", "Objective", "build_objective"]

#: The weights of the objective, in the order the terms are added.
LAMBDAS = (
    "id_lambda",
    "l2_lambda",
    "lpips_lambda",
    "lpips_lambda_crop",
    "l2_lambda_crop",
    "w_norm_lambda",
    "moco_lambda",
)


@dataclass
class ObjectiveConfig(DictConfig):
    """Weights of the loss terms and where the loss networks' weights come from.

    Defaults are the original's command-line defaults (its FFHQ inversion recipe adds
    ``id_lambda=0.1``, see the ``inversion`` training preset).

    Attributes:
        id_lambda: ArcFace identity loss (faces only; needs ``ir_se50_weights``).
        l2_lambda, lpips_lambda: full-image pixel L2 and LPIPS.
        lpips_lambda_crop, l2_lambda_crop: the same on the inner-face window 35:223, 32:220.
        w_norm_lambda: ``||w - latent_avg||`` regulariser.
        moco_lambda: MoCo-v2 similarity (non-face identity loss; needs ``moco_weights``).
        start_from_latent_avg: w-norm measures the distance to ``latent_avg`` (else the norm).
        lpips_net: ``alex`` (pSp) or ``vgg``.
        lpips_weights: backbone weights file (None: torchvision's hub cache).
        ir_se50_weights: ``model_ir_se50.pth``.
        moco_weights: ``moco_v2_800ep_pretrain.pth.tar``.
        random_loss_networks: random LPIPS backbone / ArcFace / MoCo weights (tests only).
    """

    SECTION = 'objective'

    id_lambda: float = 0.0
    l2_lambda: float = 1.0
    lpips_lambda: float = 0.8
    lpips_lambda_crop: float = 0.0
    l2_lambda_crop: float = 0.0
    w_norm_lambda: float = 0.0
    moco_lambda: float = 0.0
    start_from_latent_avg: bool = False
    lpips_net: str = "alex"
    lpips_weights: str | None = None
    ir_se50_weights: str | None = None
    moco_weights: str | None = None
    random_loss_networks: bool = False

    def __post_init__(self):
        for name in LAMBDAS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"{name}={value!r} must be a number >= 0")
        check_choice("lpips_net", self.lpips_net, sorted(LPIPS_NETS))
        if self.id_lambda > 0 and self.moco_lambda > 0:
            raise ConfigError(
                f"id_lambda={self.id_lambda} and moco_lambda={self.moco_lambda} are both > 0; pick one identity "
                "loss (ArcFace for faces, MoCo for other domains)"
            )


class ObjectiveOutput(NamedTuple):
    """``loss``: 0-d tensor to backpropagate; ``terms``: the original's ``loss_dict``
    (floats); ``id_logs``: per-sample similarity logs (None without id/moco loss)."""

    loss: torch.Tensor
    terms: dict[str, float]
    id_logs: list[dict[str, float]] | None


class Objective(nn.Module):
    """The weighted pSp objective. Loss networks are built only for terms in use and are
    frozen (no parameter gradients) and always in eval mode.

    ``forward(x, y, y_hat, latent, latent_avg)``:
        x: encoder input ``[B, input_nc, 256, 256]`` (RGB when an identity loss is used);
        y: targets ``[B, 3, 256, 256]`` in [-1, 1];
        y_hat: generator output pooled to the target size (``resize=True``), unclamped;
        latent: W+ codes fed to the generator ``[B, n_styles, 512]``;
        latent_avg: the model's average latent (for w-norm).
    """

    def __init__(
        self,
        config: ObjectiveConfig,
        lpips: LPIPSLoss | None = None,
        identity: IDLoss | None = None,
        moco: MocoLoss | None = None,
    ):
        super().__init__()
        self.config = c = config
        rand = c.random_loss_networks
        # Random loss networks (tests) are seeded, so every process builds the same ones.
        with torch.random.fork_rng(devices=[], enabled=rand):
            if rand:
                torch.manual_seed(0)
            if c.lpips_lambda > 0 or c.lpips_lambda_crop > 0:
                lpips = lpips or LPIPSLoss(c.lpips_net, c.lpips_weights, random_backbone=rand)
            if c.id_lambda > 0:
                identity = identity or IDLoss(c.ir_se50_weights, random_init=rand)
            if c.moco_lambda > 0:
                moco = moco or MocoLoss(c.moco_weights, random_init=rand)
        self.lpips = lpips
        self.identity = identity
        self.moco = moco
        self.w_norm = WNormLoss(c.start_from_latent_avg)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        y_hat: torch.Tensor,
        latent: torch.Tensor,
        latent_avg: torch.Tensor | None = None,
    ) -> ObjectiveOutput:
        c = self.config
        terms: dict[str, float] = {}
        id_logs = None
        total: torch.Tensor | float = 0.0

        def add(name: str, value: torch.Tensor, weight: float) -> None:
            nonlocal total
            terms[name] = float(value.detach())
            total = total + value.float() * weight

        if c.id_lambda > 0:
            out = self.identity(y_hat, y, x)
            terms["loss_id"] = float(out.loss.detach())
            terms["id_improve"] = float(out.improvement)
            total = out.loss.float() * c.id_lambda
            id_logs = out.logs
        if c.l2_lambda > 0:
            add("loss_l2", l2_loss(y_hat, y), c.l2_lambda)
        if c.lpips_lambda > 0:
            add("loss_lpips", self.lpips(y_hat, y), c.lpips_lambda)
        if c.lpips_lambda_crop > 0:
            add("loss_lpips_crop", self.lpips(y_hat, y, crop=True), c.lpips_lambda_crop)
        if c.l2_lambda_crop > 0:
            add("loss_l2_crop", l2_loss(y_hat, y, crop=True), c.l2_lambda_crop)
        if c.w_norm_lambda > 0:
            add("loss_w_norm", self.w_norm(latent, latent_avg), c.w_norm_lambda)
        if c.moco_lambda > 0:
            out = self.moco(y_hat, y, x)
            add("loss_moco", out.loss, c.moco_lambda)
            terms["id_improve"] = float(out.improvement)
            id_logs = out.logs
        if not isinstance(total, torch.Tensor):
            raise ConfigError(f"every loss weight is 0 ({', '.join(LAMBDAS)}); nothing to optimise")
        terms["loss"] = float(total.detach())
        return ObjectiveOutput(total, terms, id_logs)


def build_objective(config: ObjectiveConfig, device: torch.device | str = "cpu") -> Objective:
    """Build the objective (and load its loss networks) on ``device``."""
    return Objective(config).to(device)
