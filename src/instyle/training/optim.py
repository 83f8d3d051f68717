"""Optimisers: Ranger (the original pSp default) and Adam.

Ranger = gradient centralisation + RAdam + Lookahead, exactly as the official
``training/ranger.py`` behaves (its defaults are all used by pSp):

* GC: every gradient with more than one dimension (conv *and* linear weights) gets
  its mean over all dims but dim 0 subtracted, in place, before anything else. The
  original's ``use_gc`` flag is never read, so GC is always on.
* RAdam, per parameter with its own step counter ``t`` (float32 state):
  ``m = b1*m + (1-b1)*g``, ``v = b2*v + (1-b2)*g**2``, ``N_max = 2/(1-b2) - 1``,
  ``N_t = N_max - 2t*b2**t/(1-b2**t)``. If ``N_t > 5`` (from t = 6 on):
  ``w -= lr * sqrt((1-b2**t)(N_t-4)/(N_max-4)*(N_t-2)/N_t*N_max/(N_max-2)) / (1-b1**t) * m/(sqrt(v)+eps)``;
  else ``w -= lr/(1-b1**t) * m`` (the SGD warm-up: step 1 is plain SGD).
* Lookahead: the slow weights start as the parameter before the first step; every
  ``k``-th step ``slow += alpha*(w - slow)`` and ``w = slow``.

The slow weights live in the optimiser state, so ``state_dict()`` /
``load_state_dict()`` carry them and a resumed run continues bit-exactly.

(``pytorch_optimizer.Ranger`` matches this only with ``degenerated_to_sgd=True``.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim import Optimizer

from instyle.utils.config import check_choice

__all__ = ["OPTIMIZERS", "Ranger", "build_optimizer", "centralize_gradient"]

OPTIMIZERS = ("ranger", "adam")


def centralize_gradient(grad: torch.Tensor) -> torch.Tensor:
    """Subtract the mean over all dims but 0 from a >1-dim gradient, in place."""
    if grad.dim() > 1:
        grad.sub_(grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True))
    return grad


def radam_step_size(step: int, beta1: float, beta2: float, n_sma_threshold: float) -> tuple[bool, float]:
    """``(adaptive, step_size)`` of RAdam at step ``t`` (1-based), in float64 as the original."""
    beta2_t = beta2**step
    n_sma_max = 2 / (1 - beta2) - 1
    n_sma = n_sma_max - 2 * step * beta2_t / (1 - beta2_t)
    if n_sma > n_sma_threshold:
        rect = (1 - beta2_t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2) / n_sma * n_sma_max / (n_sma_max - 2)
        return True, math.sqrt(rect) / (1 - beta1**step)
    return False, 1.0 / (1 - beta1**step)


class Ranger(Optimizer):
    """RAdam + Lookahead + gradient centralisation (the official pSp optimiser).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (pSp's code default 1e-4; the paper text says 1e-3).
        alpha: Lookahead interpolation factor.
        k: Lookahead period in steps.
        n_sma_threshold: RAdam's variance-rectification threshold (5).
        betas: Adam betas (0.95, 0.999).
        eps: added to ``sqrt(v)`` (1e-5).
        weight_decay: ``w -= weight_decay*lr*w`` before the update (0 in pSp).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        alpha: float = 0.5,
        k: int = 6,
        n_sma_threshold: float = 5,
        betas: tuple[float, float] = (0.95, 0.999),
        eps: float = 1e-5,
        weight_decay: float = 0.0,
    ):
        if not lr > 0:
            raise ValueError(f"Ranger lr={lr!r} must be > 0")
        if not 0 <= alpha <= 1:
            raise ValueError(f"Ranger alpha={alpha!r} must be in [0, 1]")
        if int(k) != k or k < 1:
            raise ValueError(f"Ranger k={k!r} must be a positive integer")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"Ranger betas={betas!r} must be in [0, 1)")
        defaults = dict(
            lr=lr, alpha=alpha, k=int(k), n_sma_threshold=n_sma_threshold, betas=tuple(betas), eps=eps,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Ranger does not support sparse gradients")
                self._update(p, group, lr, beta1, beta2)
        return loss

    def _update(self, p: torch.Tensor, group: dict, lr: float, beta1: float, beta2: float) -> None:
        # Math in float32 as the original (half-precision parameters get an fp32 copy).
        grad = p.grad if p.grad.dtype == torch.float32 else p.grad.float()
        w = p if p.dtype == torch.float32 else p.float()
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(w)
            state["exp_avg_sq"] = torch.zeros_like(w)
            state["slow_buffer"] = p.detach().clone()
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

        centralize_gradient(grad)
        state["step"] += 1
        t = state["step"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        adaptive, step_size = radam_step_size(t, beta1, beta2, group["n_sma_threshold"])
        if group["weight_decay"] != 0:
            w.add_(w, alpha=-group["weight_decay"] * lr)
        if adaptive:
            w.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size * lr)
        else:
            w.add_(exp_avg, alpha=-step_size * lr)
        if w is not p:
            p.copy_(w)
        if t % group["k"] == 0:
            slow = state["slow_buffer"]
            slow.add_(p - slow, alpha=group["alpha"])
            p.copy_(slow)


def build_optimizer(params: Iterable, name: str = "ranger", lr: float = 1e-4) -> Optimizer:
    """``ranger`` (official defaults) or ``adam`` (``torch.optim.Adam`` defaults), at ``lr``."""
    check_choice("optim_name", name, OPTIMIZERS)
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return Ranger(params, lr=lr)
