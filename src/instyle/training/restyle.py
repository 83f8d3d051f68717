"""ReStyle's training hooks: its checks, its encoder's 6 input channels and its iterations on
each batch (:func:`instyle.training.step.restyle_forward_loss`)."""

from __future__ import annotations

from instyle.models.psp import RESTYLE_INPUT_NC
from instyle.training.config import MAX_ITERS_PER_BATCH
from instyle.training.hooks import TrainingHooks, register_training
from instyle.training.step import restyle_forward_loss
from instyle.utils.config import ConfigError, check_choice, check_int_range

__all__ = ["RESTYLE_TRAIN_TYPES", "check_restyle_config"]

#: ReStyle's encoder types (``utils/model_utils.py`` ENCODER_TYPES of the original).
RESTYLE_TRAIN_TYPES = (
    "BackboneEncoder", "ResNetBackboneEncoder", "GradualStyleEncoder", "ResNetGradualStyleEncoder",
    "ProgressiveBackboneEncoder", "ResNetProgressiveBackboneEncoder",
)


def check_restyle_config(cfg) -> None:
    """The ``family='restyle'`` checks of a :class:`~instyle.training.config.TrainConfig`."""
    check_choice("encoder_type", cfg.encoder_type, RESTYLE_TRAIN_TYPES)
    check_int_range("n_iters_per_batch", cfg.n_iters_per_batch, 1, MAX_ITERS_PER_BATCH)
    if cfg.input_nc != 3 or not cfg.objective.start_from_latent_avg or cfg.learn_in_w:
        raise ConfigError(
            f"family='restyle' trains on 3-channel photos from the average latent: needs input_nc=3 "
            f"(got {cfg.input_nc}), start_from_latent_avg=true (got {cfg.objective.start_from_latent_avg}) and "
            f"learn_in_w=false"
        )


register_training("restyle", TrainingHooks(
    validate=check_restyle_config,
    # the encoder sees [image, its last output]
    encoder_input_nc=lambda cfg: RESTYLE_INPUT_NC,
    forward=lambda net, objective, latent_avg, x, y, n_iters, randomize_noise, precision, scaler, train: restyle_forward_loss(
        net, objective, latent_avg, x, y, n_iters or 1, randomize_noise, precision, scaler, train),
))
