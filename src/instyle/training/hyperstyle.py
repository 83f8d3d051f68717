"""Building the HyperStyle model to train (official ``training/coach_hyperstyle.py``): a
frozen W-encoder and generator, a hypernetwork to train.

From scratch the model is put together from the generator (``stylegan_weights``, its
average latent), the W-encoder file (``w_encoder_checkpoint_path``: an official e4e
W-encoder ``.pt``, or a pSp model into W, official or instyle format) and a hypernetwork
seeded with ``seed``; or it continues from a HyperStyle ``checkpoint_path``.
"""

from __future__ import annotations

import dataclasses

import torch

from instyle.interop import load_generator, load_psp
from instyle.interop.hyperstyle import read_w_encoder
from instyle.interop.safe_load import safe_torch_load
from instyle.losses.weights import find_weights, read_state_dict
from instyle.models.encoders.backbone import DEFAULT_WIDTHS, RESNET34_UNITS
from instyle.models.encoders.hypernetwork import HYPERNET_TYPES, HyperNetConfig, HyperNetwork
from instyle.models.hyperstyle import HyperStyle, HyperStyleConfig
from instyle.models.own_format import is_own_format
from instyle.models.psp import PSP
from instyle.models.stylegan2 import GeneratorConfig
from instyle.training.config import MAX_ITERS_PER_BATCH, TrainConfig
from instyle.training.hooks import TrainingHooks, register_training
from instyle.training.step import hyperstyle_forward_loss
from instyle.utils.config import ConfigError, check_choice, check_int_range

__all__ = ["RESNET34_HUB_NAMES", "check_hyperstyle_config", "hyperstyle_config_for", "read_w_encoder_file", "init_hypernet_from_resnet34",
           "build_hyperstyle"]

#: torchvision's file names for its ImageNet ResNet-34 (``resnet34(weights="IMAGENET1K_V1")``; older releases).
RESNET34_HUB_NAMES = ("resnet34-b627a593.pth", "resnet34-333f7ec4.pth")


def check_hyperstyle_config(cfg: TrainConfig) -> None:
    """HyperStyle's coach: a hypernetwork (``encoder_type``) on 3-channel photos, stored
    noise, the L2 / LPIPS / ID (or MoCo) terms only."""
    check_choice("encoder_type", cfg.encoder_type, HYPERNET_TYPES)
    check_int_range("n_iters_per_batch", cfg.n_iters_per_batch, 1, MAX_ITERS_PER_BATCH)
    cfg.tuned_layers()
    if cfg.input_nc != 3 or cfg.learn_in_w or cfg.source_mode != "rgb":
        raise ConfigError(
            f"family='hyperstyle' trains on RGB photos: needs input_nc=3 (got {cfg.input_nc}), "
            f"source_mode='rgb' (got {cfg.source_mode!r}) and learn_in_w=false"
        )
    if cfg.image_size < 64:
        raise ConfigError(f"family='hyperstyle' needs image_size >= 64 (the hypernetwork's 16x smaller map is "
                          f"at least 4x4); got {cfg.image_size}")
    if cfg.randomize_noise:
        raise ConfigError("family='hyperstyle' renders with the generator's stored noise, as the official coach; "
                          "set randomize_noise=false")
    if cfg.encoder_init == "ir_se50":
        raise ConfigError(
            "family='hyperstyle' with encoder_init='ir_se50': the hypernetwork starts from ImageNet ResNet-34 "
            "(encoder_init=resnet34, the original) or a random initialisation (encoder_init=random)"
        )
    extra = {k: getattr(cfg.objective, k) for k in ("w_norm_lambda", "lpips_lambda_crop", "l2_lambda_crop")
             if getattr(cfg.objective, k)}
    if extra:
        raise ConfigError(f"family='hyperstyle' has no {sorted(extra)} terms (the official coach uses L2, LPIPS "
                          f"and ID or MoCo); set them to 0 (got {extra})")


def hyperstyle_config_for(cfg: TrainConfig, generator: GeneratorConfig, w_encoder=None) -> HyperStyleConfig:
    """The HyperStyle architecture a training config describes around a generator.

    The hypernetwork's trunk takes ``encoder_widths`` / ``encoder_units`` (default
    ResNet-34's); its heads' widths follow the trunk as in the original (code 512 =
    last width, inner 256 and shared inner 128 = the third and second widths)."""
    if cfg.output_size is not None and cfg.output_size != generator.size:
        raise ConfigError(f"output_size={cfg.output_size} but the generator produces {generator.size}px images")
    widths = tuple(cfg.encoder_widths or DEFAULT_WIDTHS)
    hypernet = HyperNetConfig.for_generator(
        generator, layers_to_tune=cfg.tuned_layers(), type=cfg.encoder_type, widths=widths,
        units=tuple(cfg.encoder_units or RESNET34_UNITS), code_dim=widths[3], inner=widths[2],
        shared_inner=widths[1], feature_size=cfg.image_size // 16,
    )
    return HyperStyleConfig(generator=generator, hypernet=hypernet, w_encoder=w_encoder, resize_to=cfg.image_size)


def read_w_encoder_file(path: str, generator: GeneratorConfig, image_size: int):
    """``(WEncoderConfig, state dict 'w_encoder.*')`` of a W-encoder file: an official
    (e4e ``WEncoder``) checkpoint, or a pSp model into W (``learn_in_w``, official or
    instyle format). Raises a project error naming the file when it does not fit."""
    if is_own_format(path):
        psp = load_psp(path)
        if not isinstance(psp, PSP) or not psp.config.learn_in_w:
            raise ConfigError(f"w_encoder_checkpoint_path={path}: not a model into W (a W-encoder or a pSp model "
                              "with learn_in_w)")
        ckpt = {"state_dict": psp.state_dict()}
    else:
        ckpt = safe_torch_load(path, "W-encoder checkpoint")
    config, state = read_w_encoder(ckpt, path, generator, "this training run")
    return dataclasses.replace(config, input_size=image_size), state


def init_hypernet_from_resnet34(hypernet: HyperNetwork, state: dict[str, torch.Tensor]) -> int:
    """The original's hypernetwork initialisation from torchvision's ImageNet ResNet-34:
    its ``layer1..layer4`` blocks become ``body.*`` (in order), ``bn1`` is copied, and
    ``conv1`` gets the RGB filters in its first 3 input channels and ``torch.randn`` (the
    global generator, unscaled, as the original) in the others. Returns the tensors copied.

    Raises:
        ConfigError: the file is not a ResNet-34 or the trunk is not ResNet-34's shape.
    """
    own = hypernet.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    index = 0
    for stage, n in enumerate(hypernet.config.units, start=1):
        for j in range(n):
            prefix = f"layer{stage}.{j}."
            mapped.update({f"body.{index}.{k[len(prefix):]}": v for k, v in state.items() if k.startswith(prefix)})
            index += 1
    mapped.update({k: v for k, v in state.items() if k.startswith("bn1.")})
    rgb = state.get("conv1.weight")
    if rgb is not None:
        conv1 = torch.randn(own["conv1.weight"].shape)
        fits = rgb.ndim == 4 and rgb.shape[1] == 3 and (rgb.shape[0], *rgb.shape[2:]) == (conv1.shape[0], *conv1.shape[2:])
        if fits:
            conv1[:, :3] = rgb
        mapped["conv1.weight"] = conv1 if fits else rgb  # a misfit is reported below
    wrong = [f"{k}: file {tuple(v.shape)} vs hypernet {tuple(own[k].shape) if k in own else None}"
             for k, v in mapped.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k.startswith(("conv1.", "bn1.", "body.")) and k not in mapped]
    blocks = sum(k.startswith("body.") for k in mapped)
    if blocks != sum(k.startswith("layer") for k in state):  # a trunk with other stage depths
        missing.append(f"{sum(k.startswith('layer') for k in state) - blocks} of the file's layer* tensors unused")
    if wrong or missing or not mapped:
        raise ConfigError(
            f"the ResNet-34 weights do not fit this hypernetwork ({len(wrong)} mismatches, e.g. {wrong[:2]}; "
            f"{len(missing)} trunk tensors missing, e.g. {missing[:2]}); use the default encoder_widths/encoder_units "
            "or encoder_init=random"
        )
    hypernet.load_state_dict(mapped, strict=False)
    return len(mapped)


def _from_checkpoint(cfg: TrainConfig) -> HyperStyle:
    model = load_psp(cfg.checkpoint_path, w_encoder=cfg.w_encoder_checkpoint_path)
    if not isinstance(model, HyperStyle):
        raise ConfigError(f"{cfg.checkpoint_path}: family='hyperstyle' needs a HyperStyle checkpoint, this is a pSp model")
    mc = model.config
    found = {"encoder_type": mc.hypernet.type, "image_size": mc.resize_to, "layers_to_tune": mc.hypernet.layers_to_tune}
    want = {"encoder_type": cfg.encoder_type, "image_size": cfg.image_size,
            "layers_to_tune": HyperNetConfig(layer_shapes=mc.hypernet.layer_shapes, layers_to_tune=cfg.tuned_layers(),
                                             type=mc.hypernet.type).layers_to_tune}
    diffs = [f"{k}: config {want[k]!r} vs checkpoint {v!r}" for k, v in found.items() if want[k] != v]
    if mc.crop_cars:
        diffs.append("the checkpoint is a cars model (192x256 crops), which the trainer does not train yet")
    if diffs:
        raise ConfigError(f"{cfg.checkpoint_path}: the checkpoint's architecture differs from the config: " + "; ".join(diffs))
    model.random_weights = False
    return model.train()


def build_hyperstyle(cfg: TrainConfig) -> HyperStyle:
    """The HyperStyle model a run starts from (CPU, train mode): ``checkpoint_path``, or
    the generator + W-encoder files and a new hypernetwork seeded with ``seed``."""
    if cfg.checkpoint_path:
        return _from_checkpoint(cfg)
    if not cfg.stylegan_weights or not cfg.w_encoder_checkpoint_path:
        raise ConfigError(
            "family='hyperstyle' from scratch needs a pretrained generator (--generator / stylegan_weights) and a "
            "W-encoder (w_encoder_checkpoint_path); or give a HyperStyle checkpoint_path"
        )
    generator = load_generator(cfg.stylegan_weights)
    w_config, w_state = read_w_encoder_file(cfg.w_encoder_checkpoint_path, generator.config, cfg.image_size)
    config = hyperstyle_config_for(cfg, generator.config, w_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = HyperStyle(config, latent_avg=generator.latent_avg)
        if cfg.encoder_init == "resnet34":
            path = find_weights(cfg.resnet34_weights, RESNET34_HUB_NAMES, "ResNet-34",
                                "Give torchvision's ImageNet ResNet-34 file with resnet34_weights=PATH.")
            init_hypernet_from_resnet34(model.hypernet, read_state_dict(path, "ResNet-34"))
    model.decoder.load_state_dict(generator.state_dict())
    model.w_encoder.load_state_dict({k[len("w_encoder."):]: v for k, v in w_state.items()})
    model.sync_decoder_latent_avg()
    return model.train()


register_training("hyperstyle", TrainingHooks(
    validate=check_hyperstyle_config,
    encoder_inits=("resnet34", "random"),
    build=lambda cfg, init_encoder=None: build_hyperstyle(cfg),
    trained=lambda model: model.hypernet,
    frozen=lambda model: [model.w_encoder],
    forward=lambda net, objective, latent_avg, x, y, n_iters, randomize_noise, precision, scaler, train: (
        hyperstyle_forward_loss(net, objective, x, y, n_iters or 1, precision, scaler, train)),
))
