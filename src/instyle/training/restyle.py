"""ReStyle's training hooks: its iterations on each batch (:func:`instyle.training.step.restyle_forward_loss`)."""

from __future__ import annotations

from instyle.training.hooks import TrainingHooks, register_training
from instyle.training.step import restyle_forward_loss

__all__: list[str] = []

register_training("restyle", TrainingHooks(
    forward=lambda net, objective, latent_avg, x, y, n_iters, randomize_noise, precision, scaler, train: restyle_forward_loss(
        net, objective, latent_avg, x, y, n_iters or 1, randomize_noise, precision, scaler, train),
))
