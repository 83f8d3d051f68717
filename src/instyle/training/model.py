"""Building the pSp model to train: from scratch (pretrained generator + ArcFace
backbone) or from an existing pSp checkpoint."""

from __future__ import annotations

import logging

import torch
from torch import nn

from instyle.interop import load_generator, load_psp
from instyle.losses.identity import read_ir_se50
from instyle.models.encoders import EncoderConfig
from instyle.models.family import InversionModel, family_of
from instyle.models.psp import PSP, PSPConfig
from instyle.models.stylegan2 import GeneratorConfig
from instyle.training.config import TrainConfig
from instyle.training.hooks import training_hooks
from instyle.training.presets import get_preset, list_presets
from instyle.utils.config import ConfigError

__all__ = [
    "psp_config_for",
    "build_model",
    "checkpoint_architecture",
    "fine_tuning_base",
    "init_encoder_from_ir_se50",
    "prepare_for_training",
    "trained_module",
    "channels_last_module",
]

log = logging.getLogger("instyle.training")


def psp_config_for(cfg: TrainConfig, generator: GeneratorConfig) -> PSPConfig:
    """The pSp architecture a training config describes around a given generator."""
    if cfg.output_size is not None and cfg.output_size != generator.size:
        raise ConfigError(f"output_size={cfg.output_size} but the generator produces {generator.size}px images")
    input_nc = training_hooks(cfg.family).encoder_input_nc
    enc = {
        "type": cfg.encoder_type,
        "input_nc": input_nc(cfg) if input_nc is not None else cfg.input_nc,
        "n_styles": generator.n_latent,
        "style_dim": generator.style_dim,
        "input_size": cfg.image_size,
    }
    if cfg.encoder_widths is not None:
        enc["widths"] = cfg.encoder_widths
    if cfg.encoder_units is not None:
        enc["units"] = cfg.encoder_units
    return PSPConfig(
        encoder=EncoderConfig(**enc),
        generator=generator,
        start_from_latent_avg=cfg.objective.start_from_latent_avg,
        learn_in_w=cfg.learn_in_w,
        task=cfg.task,
        label_nc=cfg.label_nc,
        resize_to=cfg.image_size,
        family=cfg.family,
    )


def init_encoder_from_ir_se50(encoder: nn.Module, state: dict[str, torch.Tensor], input_nc: int) -> int:
    """Copy the ArcFace IR-SE-50 weights into the encoder's ``input_layer`` / ``body``
    (the original's ``load_state_dict(strict=False)``); the input layer is left at its
    random initialisation when the input is not RGB. Returns the number of tensors copied.

    Raises:
        ConfigError: a shared name has a different shape (a non-standard encoder) or
            nothing matched.
    """
    own = encoder.state_dict()
    picked = {k: v for k, v in state.items() if k in own and not (input_nc != 3 and k.startswith("input_layer."))}
    wrong = [f"{k}: file {tuple(v.shape)} vs encoder {tuple(own[k].shape)}" for k, v in picked.items() if v.shape != own[k].shape]
    if wrong:
        raise ConfigError(
            f"the IR-SE-50 weights do not fit this encoder ({len(wrong)} shape mismatches, e.g. {wrong[:2]}); "
            "use the standard 50-layer IR-SE encoder or set encoder_init=random"
        )
    if not picked:
        raise ConfigError("the IR-SE-50 weights file shares no tensor names with the encoder (wrong file?)")
    encoder.load_state_dict(picked, strict=False)
    return len(picked)


def architecture_keys(mc: PSPConfig) -> dict:
    """The :class:`TrainConfig` keys a pSp model's architecture fixes, with its values."""
    return {
        "encoder_type": mc.encoder.type,
        "family": mc.family,
        "input_nc": mc.image_nc,
        "label_nc": mc.label_nc,
        "learn_in_w": mc.learn_in_w,
        "start_from_latent_avg": mc.start_from_latent_avg,
        "image_size": mc.encoder.input_size,
        "output_size": mc.output_size,
    }


def checkpoint_architecture(path: str) -> dict:
    """The architecture keys of the pSp checkpoint at ``path`` (any format ``load_psp``
    reads) plus its ``task``: what fine-tuning from it needs no ``--set`` for."""
    model = load_psp(path)
    own = training_hooks(family_of(model).name).architecture
    if own is not None:
        return own(model)
    mc = model.config
    return {**architecture_keys(mc), "task": mc.task}


def fine_tuning_base(checkpoint: str, base: dict) -> dict:
    """Config values for fine-tuning from ``checkpoint``: ``base`` (a preset's or a config
    file's values) with the checkpoint's architecture on top. Without a ``task`` in
    ``base`` the checkpoint's task is used, with its recipe underneath when that task is
    registered. Values the user sets explicitly go on top of this; ones contradicting the
    checkpoint are refused by :func:`build_model`."""
    arch = checkpoint_architecture(checkpoint)
    task = arch.pop("task")
    if "task" not in base:
        recipe = get_preset(task).overrides if task in list_presets() else {}
        base = {**recipe, **base, "task": task}
    return {**base, **arch}


def _check_checkpoint_matches(cfg: TrainConfig, model: PSP) -> None:
    found = architecture_keys(model.config)
    if cfg.output_size is None:
        del found["output_size"]
    flat = cfg.to_flat_dict()
    diffs = [f"{k}: config {flat[k]!r} vs checkpoint {v!r}" for k, v in found.items() if flat[k] != v]
    if diffs:
        raise ConfigError(
            f"{cfg.checkpoint_path}: the checkpoint's architecture differs from the config: " + "; ".join(diffs)
            + " (leave these keys unset: fine-tuning reads them from the checkpoint)"
        )


def _describe(model: PSP, generator: GeneratorConfig) -> None:
    """Say what was built: a default encoder is a full IR-SE backbone, whatever the generator."""
    enc = model.config.encoder
    n = sum(p.numel() for p in model.encoder.parameters())
    log.info(
        "encoder: %s, %d-layer %s backbone, widths %s, input %d px x %d channels: %.1fM parameters (%.0f MB); "
        "generator: %d px, %d styles", enc.type, enc.num_layers, enc.mode, list(enc.widths), enc.input_size,
        enc.input_nc, n / 1e6, n * 4 / 2**20, generator.size, generator.n_latent,
    )
    if enc.input_size > generator.size:
        log.warning(
            "the encoder reads %d px inputs but the generator makes %d px images: set image_size=%d (and "
            "encoder_widths / encoder_units for a small encoder) to match it", enc.input_size, generator.size,
            max(generator.size, 32),
        )


def build_model(cfg: TrainConfig) -> PSP:
    """The model a run starts from (on the CPU, train mode).

    * ``checkpoint_path``: that pSp checkpoint (official or own format); its architecture
      must agree with the config.
    * else ``stylegan_weights``: a new pSp around that generator: ``latent_avg`` from the
      generator (estimated with 4096 samples when the file has none), encoder seeded
      with ``seed`` and its backbone loaded from ``ir_se50_weights`` (``encoder_init``).
    * ``family='hyperstyle'``: see :func:`instyle.training.hyperstyle.build_hyperstyle`.
    """
    build = training_hooks(cfg.family).build
    if build is not None:  # a family with a builder of its own (HyperStyle, ReStyle over StyleGAN3)
        return build(cfg, init_encoder_from_ir_se50)
    if cfg.checkpoint_path:
        model = load_psp(cfg.checkpoint_path)  # every tensor in its own storage (load_state_checked)
        found = family_of(model)
        if training_hooks(found.name).build is not None:
            raise ConfigError(f"{cfg.checkpoint_path}: a {found.title} checkpoint; train it with family={found.name}")
        _check_checkpoint_matches(cfg, model)
        model.random_weights = False  # a random-weight start (quickstart) is trained from here on
        return model.train()
    if not cfg.stylegan_weights:
        raise ConfigError("give a pretrained generator (--generator / stylegan_weights) or a pSp checkpoint_path")
    generator = load_generator(cfg.stylegan_weights)
    config = psp_config_for(cfg, generator.config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = PSP(config)
    model.decoder.load_state_dict(generator.state_dict())
    model.set_latent_avg(generator.latent_avg, generator_average=True)
    _describe(model, generator.config)
    if cfg.encoder_init == "ir_se50":
        n = init_encoder_from_ir_se50(model.encoder, read_ir_se50(cfg.objective.ir_se50_weights), model.config.encoder.input_nc)
        log.info("encoder: %d tensors initialised from the IR-SE-50 weights", n)
    return model.train()


def trained_module(model) -> nn.Module:
    """The module whose parameters a run optimises (the encoder; a family's hook may say otherwise)."""
    own = training_hooks(family_of(model).name).trained
    return own(model) if own is not None else model.encoder


def channels_last_module(model) -> nn.Module:
    """The module whose convolutions ``channels_last`` applies to (the trained one unless a hook says)."""
    own = training_hooks(family_of(model).name).channels_last
    return own(model) if own is not None else trained_module(model)


def prepare_for_training(model: InversionModel, cfg: TrainConfig) -> list[nn.Parameter]:
    """Freeze what is not trained and return the parameters to optimise (encoder -- for
    HyperStyle the hypernetwork, its W-encoder frozen --, plus the decoder with
    ``train_decoder``), in a fixed order."""
    hooks = training_hooks(family_of(model).name)
    trained = trained_module(model)
    for part in hooks.frozen(model) if hooks.frozen is not None else []:
        part.requires_grad_(False)
    trained.requires_grad_(True)
    model.decoder.requires_grad_(cfg.train_decoder)
    params = list(trained.parameters())
    if cfg.train_decoder:
        params += list(model.decoder.parameters())
    return params
