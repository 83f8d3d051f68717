"""Training StyleFeatureEditor (the original's ``runners/training_runners.py``) on the pSp trainer.

Phase 1 (``sfe_phase="inverter"``, the original's ``fse_inverter`` runner, preset
``sfe_inverter``) trains the inverter -- FS backbone and fuser -- of an inverter-only
:class:`~instyle.models.sfe.SFE` around a frozen generator. One step::

    y_inv, w, fused, w_feat = model(x, feature_scale=min(1, step / sfe_feature_scale_steps))
    y_w   = G(w)                                      # the latent alone, stored noise
    loss  = objective(cat[x, x], cat[y_inv, y_w])     # L2, LPIPS, ID on both renders (pooled)
          + feat_rec_lambda * mse(fused, w_feat)      # the fuser stays near the generator's feature

``step`` counts the optimiser steps done before this one (the original's ``global_step``
from 0), so the fused feature is blended in linearly over the first
``sfe_feature_scale_steps`` steps (10 000: the original's ``0.0001 * n_iter``). Everything
the step reads is the model, the step count and the RNG, so the trainer's checkpoints
resume it exactly.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from instyle.interop import load_generator, load_psp
from instyle.losses.objective import Objective, ObjectiveOutput
from instyle.models.sfe import IRESNET50_UNITS, SFE, SFEConfig
from instyle.utils.config import ConfigError, check_choice, check_int_range

__all__ = ["SFE_RECIPES", "SFE_PHASES", "SFE_TERMS", "check_sfe_config", "sfe_config_for", "build_sfe", "feature_scale",
           "SFEObjective", "sfe_forward"]

#: The two training phases of the original: the inverter (FSEInverter), the feature editor (FSEFull).
SFE_PHASES = ("inverter",)
#: Loss weights the original's SFE runners have (``configs/fse_inverter_train.yaml``); others are refused.
SFE_TERMS = ("l2_lambda", "lpips_lambda", "id_lambda", "moco_lambda")
MAX_RAMP = 10**9

#: The original's training recipes (``configs/fse_inverter_train.yaml`` over ``arguments/training_arguments.py``
#: defaults), as trainer presets on top of the ``inversion`` task (``name: (task, overrides, description)``).
SFE_RECIPES = {
    "sfe_inverter": (
        "inversion",
        {
            "family": "sfe", "sfe_phase": "inverter", "l2_lambda": 1.0, "lpips_lambda": 0.8, "id_lambda": 0.1,
            "feat_rec_lambda": 0.01, "w_norm_lambda": 0.0, "batch_size": 8, "optim_name": "ranger",
            "learning_rate": 1e-4, "max_steps": 300000, "board_interval": 500, "val_interval": 15000,
            "save_interval": 15000, "randomize_noise": False, "encoder_init": "random", "sfe_feature_scale_steps": 10000,
        },
        "face photo -> W+ and a 64x64 feature with the StyleFeatureEditor inverter (phase 1; the original's recipe)",
    ),
}

log = logging.getLogger("instyle.training")


def check_sfe_config(cfg) -> None:
    """The checks of a ``family='sfe'`` :class:`~instyle.training.config.TrainConfig`."""
    check_choice("sfe_phase", cfg.sfe_phase, SFE_PHASES)
    check_int_range("sfe_feature_scale_steps", cfg.sfe_feature_scale_steps, 0, MAX_RAMP)
    check_int_range("sfe_feature_index", cfg.sfe_feature_index, 2, 32)
    if not cfg.feat_rec_lambda >= 0:
        raise ConfigError(f"feat_rec_lambda={cfg.feat_rec_lambda!r} must be >= 0")
    if cfg.input_nc != 3 or cfg.source_mode != "rgb":
        raise ConfigError(f"family='sfe' trains on RGB photos: needs input_nc=3 and source_mode='rgb' "
                          f"(got {cfg.input_nc}, {cfg.source_mode!r})")
    if cfg.randomize_noise:
        raise ConfigError("family='sfe' renders with the generator's stored noise, as the original runners; "
                          "set randomize_noise=false")
    if cfg.encoder_init != "random":
        raise ConfigError(
            f"encoder_init={cfg.encoder_init!r}: family='sfe' initialises its FS backbone at random (the original's "
            "ArcFace iresnet50 initialisation is not supported yet); set encoder_init='random'"
        )
    extra = [k for k in ("lpips_lambda_crop", "l2_lambda_crop", "w_norm_lambda") if getattr(cfg, k) > 0]
    if extra or cfg.train_decoder or cfg.learn_in_w:
        raise ConfigError(f"family='sfe' has no {extra} terms, train_decoder or learn_in_w (the original's runners use "
                          f"{list(SFE_TERMS)} and feat_rec_lambda); set them to 0/false")


def sfe_config_for(cfg, generator) -> SFEConfig:
    """The inverter-only SFE architecture a training config describes around a generator:
    FS backbone widths/units from ``encoder_widths``/``encoder_units`` (default iresnet50's),
    feature ``sfe_feature_index``, input ``image_size`` (4x the feature's resolution)."""
    if cfg.output_size is not None and cfg.output_size != generator.size:
        raise ConfigError(f"output_size={cfg.output_size} but the generator produces {generator.size}px images")
    widths = tuple(cfg.encoder_widths or SFEConfig.widths)
    units = tuple(cfg.encoder_units or IRESNET50_UNITS)
    return SFEConfig(generator=generator, widths=widths, units=units, feature_index=cfg.sfe_feature_index,
                     input_size=cfg.image_size, editor=False)


def _from_checkpoint(cfg) -> SFE:
    model = load_psp(cfg.checkpoint_path)
    if not isinstance(model, SFE):
        raise ConfigError(f"{cfg.checkpoint_path}: family='sfe' needs an SFE checkpoint, this is a {type(model).__name__}")
    if model.config.editor:
        raise ConfigError(f"{cfg.checkpoint_path}: sfe_phase='inverter' continues an inverter-only model; this one has "
                          "a feature editor")
    found = {"image_size": model.config.input_size, "sfe_feature_index": model.config.feature_index}
    diffs = [f"{k}: config {getattr(cfg, k)!r} vs checkpoint {v!r}" for k, v in found.items() if getattr(cfg, k) != v]
    if diffs:
        raise ConfigError(f"{cfg.checkpoint_path}: the checkpoint's architecture differs from the config: " + "; ".join(diffs))
    model.random_weights = False
    return model.train()


def build_sfe(cfg) -> SFE:
    """The SFE model a run starts from (CPU, train mode): ``checkpoint_path``, or a new
    inverter (seeded with ``seed``) around the generator ``stylegan_weights`` and its
    average latent."""
    if cfg.checkpoint_path:
        return _from_checkpoint(cfg)
    if not cfg.stylegan_weights:
        raise ConfigError("family='sfe' from scratch needs a pretrained generator (--generator / stylegan_weights); "
                          "or give an SFE checkpoint_path")
    generator = load_generator(cfg.stylegan_weights)
    config = sfe_config_for(cfg, generator.config)
    avg = generator.latent_avg
    if avg is None:  # the original reads it from the generator file; estimate it as the pSp trainer does
        log.warning("%s has no latent_avg: estimating it from 4096 mapping samples", cfg.stylegan_weights)
        avg = generator.mean_latent(4096)
    avg = avg.reshape(-1, generator.config.style_dim).float().mean(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = SFE(config, latent_avg=avg)
    model.decoder.load_state_dict(generator.state_dict())
    model.sync_decoder_latent_avg()
    return model.train()


def trained_modules(model: SFE) -> nn.Module:
    """What phase 1 trains: the inverter (FS backbone + fuser)."""
    return model.inverter


def feature_scale(step: int, ramp: int) -> float:
    """``min(1, step / ramp)`` computed as the original's ``min(1.0, 0.0001 * n_iter)`` for ramp 10 000."""
    return 1.0 if ramp == 0 else min(1.0, (1.0 / ramp) * step)


class SFEObjective(nn.Module):
    """The pSp objective on both renders plus the feature reconstruction term; ``step`` is
    set by the loop before each step (the feature-scale ramp reads it)."""

    def __init__(self, base: Objective, cfg):
        super().__init__()
        self.base = base
        self.feat_rec_lambda = cfg.feat_rec_lambda
        self.ramp = cfg.sfe_feature_scale_steps
        self.step = 0

    def forward(self, x, y, y_hat, latent, latent_avg, fused=None, w_feat=None) -> ObjectiveOutput:
        out = self.base(x, y, y_hat, latent, latent_avg)
        if fused is None or self.feat_rec_lambda <= 0:
            return out
        rec = F.mse_loss(fused.float(), w_feat.float())
        loss = out.loss + self.feat_rec_lambda * rec
        return ObjectiveOutput(loss, {**out.terms, "loss_feat_rec": float(rec.detach()), "loss": float(loss.detach())},
                               out.id_logs)


def sfe_forward(net: nn.Module, objective: SFEObjective, x: torch.Tensor, y: torch.Tensor, precision):
    """Phase 1's forward and loss on one batch (no backward) -> ``(ObjectiveOutput, y_hat
    [B, 3, S, S] of the feature path pooled to the input size, w_recon)``."""
    model = getattr(net, "module", net)
    size = x.shape[-1]
    with precision.autocast():
        y_inv, w_recon, fused, w_feat = net(x, feature_scale=feature_scale(objective.step, objective.ramp))
        y_w, _ = model.decoder([w_recon], input_is_latent=True, randomize_noise=False)
        y_hat = F.adaptive_avg_pool2d(torch.cat([y_inv, y_w]), size)  # the original's AdaptiveAvgPool2d(256)
        x2, y2 = torch.cat([x, x]), torch.cat([y, y])
        out = objective(x2, y2, y_hat, torch.cat([w_recon, w_recon]), model.latent_avg, fused, w_feat)
    return out, y_hat[: len(x)].detach(), w_recon.detach()
