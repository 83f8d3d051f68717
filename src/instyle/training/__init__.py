"""Training pSp encoders: configuration, optimisers, the step, the run loop with
resumable checkpoints, multi-process (``torchrun``) support and task presets.

Typical use::

    from instyle.training import TrainConfig, get_preset, train
    cfg = TrainConfig.from_dict({**get_preset("inversion").overrides,
                                 "stylegan_weights": "stylegan2-ffhq-config-f.pt",
                                 "ir_se50_weights": "model_ir_se50.pth",
                                 "train_target": "ffhq/", "val_target": "celeba_test/"})
    train(cfg, "runs/ffhq_encode")
"""

from instyle.losses.objective import build_objective
from instyle.training.config import PRECISIONS, TrainConfig, accepted_keys, parse_overrides
from instyle.training.loop import TrainResult, train
from instyle.training.model import (
    build_model,
    checkpoint_architecture,
    fine_tuning_base,
    init_encoder_from_ir_se50,
    prepare_for_training,
    psp_config_for,
)
from instyle.training.optim import OPTIMIZERS, Ranger, build_optimizer
from instyle.training.presets import TrainPreset, get_preset, list_presets, preset_from_task
from instyle.training.state import RunFolder
from instyle.training.step import Precision, apply_update, backward, forward_loss, train_step

__all__ = [
    "OPTIMIZERS",
    "PRECISIONS",
    "Precision",
    "Ranger",
    "RunFolder",
    "TrainConfig",
    "TrainPreset",
    "TrainResult",
    "accepted_keys",
    "apply_update",
    "backward",
    "build_model",
    "build_objective",
    "build_optimizer",
    "checkpoint_architecture",
    "fine_tuning_base",
    "forward_loss",
    "get_preset",
    "init_encoder_from_ir_se50",
    "list_presets",
    "parse_overrides",
    "preset_from_task",
    "prepare_for_training",
    "psp_config_for",
    "train",
    "train_step",
]
