"""Training ReStyle-pSp / ReStyle-e4e encoders over StyleGAN3 (``family='restyle3'``), as
stylegan3-editing's ``coach_restyle_psp.py`` / ``coach_restyle_e4e.py``:

* the model is a :class:`~instyle.models.restyle3.ReStyle3` around a frozen StyleGAN3
  generator (``stylegan_weights``: NVIDIA ``.pkl``, a ``.pt`` state dict or an instyle
  folder), ``latent_avg [w_dim]`` = the generator's ``mapping.w_avg``;
* each batch runs ``n_iters_per_batch`` iterations (3): iteration 0 feeds ``[photo, average
  image]`` and starts from ``latent_avg``, each later one feeds ``[photo, previous output]``
  and adds to the previous latent (both detached); every image is rendered with the identity
  transform and pooled to ``image_size``; each iteration's loss is back-propagated, the
  optimiser steps once;
* ReStyle-e4e (``ProgressiveBackboneEncoder``): the progressive stages, delta regularisation,
  and the latent discriminator with its pools of e4e (:mod:`instyle.training.e4e`); the
  discriminator's "real" codes are the mapping network's ws, its "fake" ones the encoder's
  raw output on ``[photo, average image]`` (no ``latent_avg`` added, as the original).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from instyle.interop import load_generator, load_psp
from instyle.losses.identity import read_ir_se50
from instyle.losses.objective import Objective
from instyle.models.encoders.psp_encoders import EncoderConfig
from instyle.models.restyle3 import ReStyle3, ReStyle3Config
from instyle.models.stylegan3 import StyleGAN3Generator
from instyle.training.e4e import E4EObjective, E4ETraining
from instyle.training.hooks import TrainingHooks, register_training
from instyle.training.step import Precision, StepOutput
from instyle.utils.config import ConfigError, check_choice, check_int_range

__all__ = ["RESTYLE3_TRAIN_TYPES", "average_input", "check_restyle3_config", "build_restyle3", "restyle3_architecture", "restyle3_iterations",
           "Restyle3E4ETraining", "restyle3_extras", "RESTYLE3_RECIPES"]

log = logging.getLogger("instyle.training")

#: The encoders of stylegan3-editing: ReStyle-pSp and ReStyle-e4e.
RESTYLE3_TRAIN_TYPES = ("BackboneEncoder", "ProgressiveBackboneEncoder")
FAMILY = "restyle3"


def check_restyle3_config(cfg) -> None:
    """The ``family='restyle3'`` part of :class:`TrainConfig` validation (errors name the value)."""
    check_choice("encoder_type", cfg.encoder_type, RESTYLE3_TRAIN_TYPES)
    check_int_range("n_iters_per_batch", cfg.n_iters_per_batch, 1, 100)
    if cfg.input_nc != 3 or not cfg.objective.start_from_latent_avg or cfg.learn_in_w or cfg.source_mode != "rgb":
        raise ConfigError(
            f"family='restyle3' trains on RGB photos from the average latent: needs input_nc=3 (got {cfg.input_nc}), "
            f"source_mode='rgb' (got {cfg.source_mode!r}), start_from_latent_avg=true (got {cfg.objective.start_from_latent_avg}) "
            f"and learn_in_w=false (got {cfg.learn_in_w})"
        )
    for name in ("d_reg_every", "progressive_step_every"):
        check_int_range(name, getattr(cfg, name), 1, 10**9)
    check_int_range("w_pool_size", cfg.w_pool_size, 0, 1_000_000)
    if cfg.progressive_start is not None:
        check_int_range("progressive_start", cfg.progressive_start, 1, 10**9)
    for name in ("w_discriminator_lambda", "w_discriminator_lr", "r1", "delta_norm_lambda"):
        if not getattr(cfg, name) >= 0:
            raise ConfigError(f"{name}={getattr(cfg, name)!r} must be >= 0")
    if cfg.encoder_type == "BackboneEncoder":
        extra = {k: v for k, v in (("w_discriminator_lambda", cfg.w_discriminator_lambda),
                                   ("progressive_start", cfg.progressive_start)) if v}
        if extra:
            raise ConfigError(f"{extra} belong to ReStyle-e4e: family='restyle3' with encoder_type='BackboneEncoder' "
                              "(ReStyle-pSp) has no discriminator or progressive stages; use "
                              "encoder_type='ProgressiveBackboneEncoder' or set them to 0 / null")


def _read_generator(path: str) -> StyleGAN3Generator:
    generator = load_generator(path)
    if not isinstance(generator, StyleGAN3Generator):
        raise ConfigError(f"stylegan_weights={path}: a {type(generator).__name__}, but family='restyle3' needs a "
                          "StyleGAN3 generator (NVIDIA .pkl, a .pt state dict or an instyle folder)")
    return generator


def _from_checkpoint(cfg) -> ReStyle3:
    model = load_psp(cfg.checkpoint_path)
    if not isinstance(model, ReStyle3):
        raise ConfigError(f"checkpoint_path={cfg.checkpoint_path}: a {type(model).__name__} model; family='restyle3' "
                          "continues ReStyle-over-StyleGAN3 checkpoints")
    enc = model.config.encoder
    diffs = [f"{k}: config {a!r} vs checkpoint {b!r}" for k, a, b in (
        ("encoder_type", cfg.encoder_type, enc.type), ("image_size", cfg.image_size, enc.input_size),
        ("output_size", cfg.output_size, model.output_size)) if a != b and not (k == "output_size" and a is None)]
    if diffs:
        raise ConfigError(f"{cfg.checkpoint_path}: the checkpoint's architecture differs from the config: "
                          + "; ".join(diffs))
    if cfg.stylegan_weights:
        model.replace_generator(_read_generator(cfg.stylegan_weights))
    model.config.iterations = cfg.n_iters_per_batch
    return model.train()


def restyle3_architecture(model: ReStyle3) -> dict:
    """The :class:`TrainConfig` keys a ReStyle3 checkpoint fixes (fine-tuning reads them)."""
    enc = model.config.encoder
    return {"family": FAMILY, "encoder_type": enc.type, "input_nc": 3, "label_nc": 0, "learn_in_w": False,
            "start_from_latent_avg": True, "image_size": enc.input_size, "output_size": model.output_size,
            "n_iters_per_batch": model.config.iterations, "task": model.input_spec.task}


@torch.no_grad()
def _six_channel_input_layer(encoder: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The original's input layer: ``torch.randn`` filters for the 6 channels with the IR-SE-50
    RGB filters in channels 0-2."""
    own = encoder.input_layer[0].weight
    rgb = state.get("input_layer.0.weight")
    if rgb is None or rgb.ndim != 4 or rgb.shape[1] != 3 or (rgb.shape[0], *rgb.shape[2:]) != (own.shape[0], *own.shape[2:]):
        raise ConfigError(f"the IR-SE-50 weights' input_layer.0.weight "
                          f"{None if rgb is None else tuple(rgb.shape)} does not fit the encoder's {tuple(own.shape)}")
    weight = torch.randn(own.shape, dtype=torch.float32)
    weight[:, :3] = rgb
    own.copy_(weight)


def build_restyle3(cfg, init_encoder: Callable | None = None) -> ReStyle3:
    """The ReStyle3 model a run starts from (CPU, train mode): ``checkpoint_path`` (own
    format or published ``.pt``; ``stylegan_weights`` then replaces its decoder), or a new
    encoder seeded with ``seed`` around the ``stylegan_weights`` generator, its backbone
    loaded with ``init_encoder(encoder, state, input_nc)`` from ``ir_se50_weights`` when
    ``encoder_init='ir_se50'`` (:func:`instyle.training.model.init_encoder_from_ir_se50`)."""
    if cfg.checkpoint_path:
        return _from_checkpoint(cfg)
    if not cfg.stylegan_weights:
        raise ConfigError("family='restyle3' needs a StyleGAN3 generator (--generator / stylegan_weights) or a "
                          "restyle3 checkpoint_path")
    generator = _read_generator(cfg.stylegan_weights)
    gc = generator.config
    if cfg.output_size is not None and cfg.output_size != gc.img_resolution:
        raise ConfigError(f"output_size={cfg.output_size} but the generator produces {gc.img_resolution}px images")
    enc = {"type": cfg.encoder_type, "input_nc": 6, "n_styles": gc.n_latent, "style_dim": gc.w_dim,
           "input_size": cfg.image_size}
    if cfg.encoder_widths is not None:
        enc["widths"] = tuple(cfg.encoder_widths)
    if cfg.encoder_units is not None:
        enc["units"] = tuple(cfg.encoder_units)
    config = ReStyle3Config(encoder=EncoderConfig(**enc), generator=gc, iterations=cfg.n_iters_per_batch,
                            pool_size=cfg.image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = ReStyle3(config)
        if cfg.encoder_init == "ir_se50":
            if init_encoder is None:
                raise ConfigError("encoder_init='ir_se50' needs the IR-SE-50 initialiser (build through build_model)")
            state = read_ir_se50(cfg.objective.ir_se50_weights)
            n = init_encoder(model.encoder, state, 6)
            _six_channel_input_layer(model.encoder, state)
            log.info("encoder: %d tensors initialised from the IR-SE-50 weights", n + 1)
    model.decoder.load_state_dict(generator.state_dict())
    with torch.no_grad():
        model.latent_avg.copy_(generator.mapping.w_avg)  # the original: decoder.mapping.w_avg
    n = sum(p.numel() for p in model.encoder.parameters())
    log.info("restyle3: %s, input %d px, %.1fM parameters; StyleGAN3 %d px, %d ws", cfg.encoder_type, cfg.image_size,
             n / 1e6, gc.img_resolution, gc.n_latent)
    return model.train()


def average_input(model: ReStyle3, size: int) -> torch.Tensor:
    """``[1, 3, size, size]``: the average image pooled to the encoder's input (no gradient).
    Kept while the generator is frozen and ``latent_avg`` unchanged (the original computes it
    once); recomputed when the generator trains."""
    frozen = not any(p.requires_grad for p in model.decoder.parameters())
    key = (id(model.decoder), model.latent_avg.data_ptr(), model.latent_avg._version, size)
    cached = model.__dict__.get("_average_input")
    if frozen and cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        avg = F.adaptive_avg_pool2d(model.average_image()[None], size)
    model.__dict__["_average_input"] = (key, avg) if frozen else None
    return avg


def restyle3_iterations(net: nn.Module, objective: Objective, latent_avg, x: torch.Tensor, y: torch.Tensor,
                        n_iters: int, precision, scaler=None, train: bool = True):
    """The coach's ``perform_train_iteration_on_batch`` (see the module docstring), with
    ``precision`` a :class:`~instyle.training.step.Precision`. Returns the last iteration's
    ``(objective output, image, latent)``; :func:`instyle.training.step.family_forward_loss`
    wraps it."""
    model = getattr(net, "module", net)
    model.decoder.eval()  # frozen generator: no EMA updates, identical in train and eval mode
    feedback = average_input(model, x.shape[-1]).to(x.dtype).expand(x.shape[0], -1, -1, -1)
    latent = model.latent_avg.to(x.dtype).repeat(x.shape[0], 1, 1)
    out = y_hat = None
    for _ in range(n_iters):
        with precision.autocast():
            # through net (the DistributedDataParallel wrapper under torchrun): identity transform, pooled to image_size
            y_hat, codes = net(torch.cat([x, feedback.detach()], dim=1), latent=latent.detach())
            out = objective(x, y, y_hat, codes, latent_avg)
        if train:
            (scaler.scale(out.loss) if scaler is not None else out.loss).backward()
        feedback, latent = y_hat, codes
    return out, y_hat.detach(), latent.detach()


class Restyle3E4ETraining(E4ETraining):
    """e4e's discriminator / pools / stages for ReStyle-e4e over StyleGAN3: the real codes are
    the mapping network's ws ``[B, num_ws, w_dim]`` (one row kept per sample, through the pool
    as the original), the fake ones the encoder's output on ``[photo, average image]``."""

    @torch.no_grad()
    def _real_and_fake(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(x.shape[0], model.decoder.config.z_dim, device=x.device)
        real = model.decoder.mapping(z, None)
        avg = average_input(model, x.shape[-1]).to(x.dtype)
        fake = model.encoder(torch.cat([x, avg.expand(x.shape[0], -1, -1, -1)], dim=1))
        if self.steps is not None:
            fake = fake[:, self.dims(model)]
        if self.cfg.use_w_pool:
            real, fake = self.real_pool.query(real), self.fake_pool.query(fake)
        return real, fake[:, 0] if fake.ndim == 3 else fake


def restyle3_extras(cfg, model: ReStyle3, objective: Objective, device, world_size: int):
    """``(e4e_training | None, objective)`` for a restyle3 run: ReStyle-e4e gets the stages,
    discriminator and pools; ReStyle-pSp the plain objective."""
    if world_size > 1 and cfg.encoder_type == "ProgressiveBackboneEncoder":
        # its progressive stages leave the later style heads unused (DistributedDataParallel
        # needs every parameter in every backward) and its latent discriminator is per process
        raise ConfigError(f"family='restyle3' with encoder_type='ProgressiveBackboneEncoder' (ReStyle-e4e) trains in one "
                          f"process (got {world_size} processes under torchrun); ReStyle-pSp ('BackboneEncoder') "
                          "trains under torchrun")
    if cfg.encoder_type != "ProgressiveBackboneEncoder":
        return None, objective
    e4e = Restyle3E4ETraining(cfg, model.n_styles, model.config.generator.w_dim, device)
    return e4e, E4EObjective(objective, e4e, model)


#: stylegan3-editing's README commands, on top of the ``inversion`` task's recipe
#: (``name: (task, overrides, description)``, the shape of ``presets.FAMILY_RECIPES``).
RESTYLE3_RECIPES = {
    "restyle3_inversion": (
        "inversion",
        {
            "family": FAMILY, "encoder_type": "BackboneEncoder", "n_iters_per_batch": 3, "batch_size": 2,
            "test_batch_size": 2, "val_interval": 5000, "save_interval": 10000, "start_from_latent_avg": True,
            "lpips_lambda": 0.8, "l2_lambda": 1.0, "id_lambda": 0.1, "w_norm_lambda": 0.0, "moco_lambda": 0.0,
        },
        "aligned face -> the same face with ReStyle-pSp over StyleGAN3 (stylegan3-editing README recipe)",
    ),
    "restyle3_e4e_inversion": (
        "inversion",
        {
            "family": FAMILY, "encoder_type": "ProgressiveBackboneEncoder", "n_iters_per_batch": 3, "batch_size": 2,
            "test_batch_size": 2, "start_from_latent_avg": True, "lpips_lambda": 0.8, "l2_lambda": 1.0,
            "id_lambda": 0.1, "w_norm_lambda": 0.0, "moco_lambda": 0.0, "w_discriminator_lambda": 0.1,
            "use_w_pool": True, "w_pool_size": 50,
        },
        "aligned face -> the same face with ReStyle-e4e over StyleGAN3 (discriminator + pool; stylegan3-editing "
        "README recipe)",
    ),
}


register_training(FAMILY, TrainingHooks(
    validate=check_restyle3_config,
    build=build_restyle3,
    architecture=restyle3_architecture,
    forward=lambda net, objective, latent_avg, x, y, n_iters, randomize_noise, precision, scaler, train: StepOutput(
        *restyle3_iterations(net, objective, latent_avg, x, y, n_iters or 1, precision or Precision(), scaler, train)),
    extras=restyle3_extras,
))
