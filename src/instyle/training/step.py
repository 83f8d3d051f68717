"""One optimisation step, split into its parts (so tests can inspect gradients between
``backward`` and the update):

``zero_grad -> forward_loss -> backward -> apply_update`` = :func:`train_step`.

The model runs in train mode (encoder BatchNorms use batch statistics and update
their running stats, as the original); the forward is ``net(x, resize=True,
return_latents=True, randomize_noise=...)`` on the (possibly DDP-wrapped) pSp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from instyle.losses.objective import Objective, ObjectiveOutput
from instyle.models.family import family_of
from instyle.models.iterative import average_image
from instyle.training.hooks import training_hooks
from instyle.utils.config import ConfigError
from instyle.utils.precision import PRECISIONS, autocast

__all__ = [
    "Precision", "StepOutput", "set_train_mode", "forward_loss", "restyle_forward_loss", "hyperstyle_forward_loss",
    "family_forward_loss", "backward", "apply_update",
    "train_step",
]


@dataclass
class Precision:
    """Autocast setting of the forward pass (and the fp16 gradient scaler)."""

    name: str = "fp32"
    device_type: str = "cpu"

    def __post_init__(self):
        if self.name not in PRECISIONS:
            raise ConfigError(f"precision={self.name!r} is not accepted; choose one of {list(PRECISIONS)}")
        if self.name == "fp16" and self.device_type != "cuda":
            raise ConfigError("precision=fp16 needs CUDA (it relies on a gradient scaler); use bf16 on this device")

    def autocast(self):
        return autocast(self.name, self.device_type)

    def make_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None


@dataclass
class StepOutput:
    """``objective``: loss, terms (the original's loss_dict), id_logs; ``y_hat``:
    the output images ``[B, 3, S, S]``; ``latent``: the W+ codes fed to the generator
    ``[B, n_styles, 512]`` (both detached)."""

    objective: ObjectiveOutput
    y_hat: torch.Tensor
    latent: torch.Tensor


def forward_loss(
    net: nn.Module,
    objective: Objective,
    latent_avg: torch.Tensor | None,
    x: torch.Tensor,
    y: torch.Tensor,
    randomize_noise: bool = True,
    precision: Precision | None = None,
) -> StepOutput:
    """Forward the pSp ``net`` on ``x`` and evaluate the objective against ``y``.

    Args:
        net: the pSp model (or its DDP wrapper).
        latent_avg: the model's average latent (w-norm).
        x: encoder inputs ``[B, input_nc, S, S]``; y: targets ``[B, 3, S, S]`` in [-1, 1].
        randomize_noise: fresh StyleGAN noise (original training) or the stored buffers.
    """
    precision = precision or Precision()
    with precision.autocast():
        y_hat, latent = net(x, resize=True, return_latents=True, randomize_noise=randomize_noise)
        out = objective(x, y, y_hat, latent, latent_avg)
    return StepOutput(out, y_hat.detach(), latent.detach())


def restyle_forward_loss(
    net: nn.Module,
    objective: Objective,
    latent_avg: torch.Tensor | None,
    x: torch.Tensor,
    y: torch.Tensor,
    n_iters: int,
    randomize_noise: bool = True,
    precision: Precision | None = None,
    scaler: torch.amp.GradScaler | None = None,
    train: bool = True,
) -> StepOutput:
    """ReStyle's iterations on one batch (``perform_train_iteration_on_batch`` of its coach):
    iteration 0 feeds ``cat(x, average image)`` and starts from latent_avg; each later one
    feeds ``cat(x, previous output)`` and adds to the previous latent, both detached; every
    iteration's loss is back-propagated (``train``) so the gradients add up. Returns the
    last iteration (its terms are what the original logs)."""
    model = getattr(net, "module", net)
    precision = precision or Precision()
    with torch.no_grad():
        avg = F.adaptive_avg_pool2d(average_image(model)[None].to(x.dtype), x.shape[-1])
    y_hat, latent = avg.expand(x.shape[0], -1, -1, -1), None
    out = None
    for _ in range(n_iters):
        with precision.autocast():
            y_hat, latent = net(torch.cat([x, y_hat.detach()], dim=1), latent=None if latent is None else latent.detach(),
                                resize=True, return_latents=True, randomize_noise=randomize_noise)
            out = objective(x, y, y_hat, latent, latent_avg)
        if train:
            backward(out.loss, scaler)
    return StepOutput(out, y_hat.detach(), latent.detach())


def hyperstyle_forward_loss(
    net: nn.Module,
    objective: Objective,
    x: torch.Tensor,
    y: torch.Tensor,
    n_iters: int,
    precision: Precision | None = None,
    scaler: torch.amp.GradScaler | None = None,
    train: bool = True,
) -> StepOutput:
    """HyperStyle's iterations on one batch (``perform_forward_on_batch`` of its coach):
    iteration 0 starts from the frozen W-encoder's inversion (no gradient), each iteration
    feeds ``[x, current reconstruction]`` to the hypernetwork and adds its offsets to the
    previous ones; from iteration 1 on the previous offsets and reconstruction are detached,
    so every iteration's loss (``objective(y, y, ...)``, as the coach's ``calc_loss(x=y,
    y=y)``) back-propagates into its own hypernetwork output only (``train``: the gradients
    add up). Stored noise throughout, as the coach. Returns the last iteration."""
    model = getattr(net, "module", net)
    model.w_encoder.eval()  # the coach keeps the W-encoder in eval mode (its BatchNorm statistics)
    precision = precision or Precision()
    y_hat = codes = deltas = None
    out = None
    for i in range(n_iters):
        if i > 0:
            y_hat = y_hat.detach()
            deltas = [None if d is None else d.detach() for d in deltas]
        with precision.autocast():
            y_hat, latent, deltas, codes, _ = net(
                x, y_hat=y_hat, codes=codes, weights_deltas=deltas, return_latents=True, randomize_noise=False,
                return_weight_deltas_and_codes=True, resize=True,
            )
            out = objective(y, y, y_hat, latent, model.latent_avg)
        if train:
            backward(out.loss, scaler)
    return StepOutput(out, y_hat.detach(), latent.detach())


def family_forward_loss(
    net: nn.Module,
    objective: Objective,
    latent_avg: torch.Tensor | None,
    x: torch.Tensor,
    y: torch.Tensor,
    n_iters: int | None = None,
    randomize_noise: bool = True,
    precision: Precision | None = None,
    scaler: torch.amp.GradScaler | None = None,
    train: bool = True,
) -> StepOutput:
    """The forward (and, with ``train``, backward) of one batch for the model's family: its
    training hook (ReStyle's, HyperStyle's iterations, ...) or pSp's one pass."""
    model = getattr(net, "module", net)
    forward = training_hooks(family_of(model).name).forward
    if forward is not None:
        return forward(net, objective, latent_avg, x, y, n_iters, randomize_noise, precision, scaler, train)
    out = forward_loss(net, objective, latent_avg, x, y, randomize_noise, precision)
    if train:
        backward(out.objective.loss, scaler)
    return out


def set_train_mode(net: nn.Module, freeze_batchnorm: bool = False) -> None:
    """Train mode for the whole model; with ``freeze_batchnorm`` the BatchNorm layers stay
    in eval mode (running statistics, not updated) -- for small-batch fine-tuning, and what
    makes a multi-process CPU run equal to one process on the combined batch."""
    net.train()
    if freeze_batchnorm:
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None = None) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def apply_update(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def train_step(
    net: nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    latent_avg: torch.Tensor | None,
    x: torch.Tensor,
    y: torch.Tensor,
    randomize_noise: bool = True,
    precision: Precision | None = None,
    scaler: torch.amp.GradScaler | None = None,
    freeze_batchnorm: bool = False,
    n_iters: int | None = None,
) -> StepOutput:
    """The body of the original training loop: ``net.train(); zero_grad(); forward;
    calc_loss; backward; step``. ``n_iters``: the iterations per batch of ReStyle and
    HyperStyle models (see :func:`family_forward_loss`)."""
    set_train_mode(net, freeze_batchnorm)
    optimizer.zero_grad(set_to_none=True)
    out = family_forward_loss(net, objective, latent_avg, x, y, n_iters, randomize_noise, precision, scaler)
    apply_update(optimizer, scaler)
    return out
