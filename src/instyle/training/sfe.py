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

import dataclasses
import logging
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instyle.errors import CheckpointError
from instyle.inference.sfe_editing import named_edit_fn
from instyle.interop import load_generator, load_psp
from instyle.interop.nvidia_discriminator import load_nvidia_discriminator
from instyle.interop.safe_load import safe_torch_load
from instyle.interop.sfe import read_e4e_file
from instyle.losses.objective import Objective, ObjectiveOutput
from instyle.losses.weights import find_weights, read_state_dict
from instyle.models.discriminator import Discriminator
from instyle.models.own_format import is_own_format
from instyle.models.sfe import INFERENCE_FEATURE_SCALE, IRESNET50_UNITS, SFE, SFEConfig, feature_resolution
from instyle.training.distributed import average_gradients
from instyle.training.hooks import TrainingHooks, register_training
from instyle.training.step import Precision, StepOutput, backward
from instyle.utils.config import ConfigError, check_choice, check_int_range

__all__ = ["SFE_RECIPES", "SFE_PHASES", "SFE_TERMS", "check_sfe_config", "sfe_config_for", "build_sfe", "feature_scale",
           "SFEObjective", "SFEDiscriminator", "SFETraining", "init_fs_backbone_from_iresnet50", "DEFAULT_SFE_EDITS", "parse_edits", "sfe_editor_forward", "load_discriminator", "sfe_forward"]

#: The two training phases of the original: the inverter (FSEInverter), the feature editor (FSEFull).
SFE_PHASES = ("inverter", "editor")
#: Loss weights the original's SFE runners have (``configs/fse_inverter_train.yaml``); others are refused.
SFE_TERMS = ("l2_lambda", "lpips_lambda", "id_lambda", "moco_lambda")
MAX_RAMP = 10**9

#: The original's training recipes (``configs/fse_inverter_train.yaml`` over ``arguments/training_arguments.py``
#: defaults), as trainer presets on top of the ``inversion`` task (``name: (task, overrides, description)``).
SFE_RECIPES = {
    "sfe_editor": (
        "inversion",
        {
            "family": "sfe", "sfe_phase": "editor", "l2_lambda": 1.0, "lpips_lambda": 0.8, "id_lambda": 0.1,
            "feat_rec_lambda": 0.0, "adv_lambda": 0.01, "d_start_step": 45000, "d_learning_rate": 1e-4,
            "r1": 10.0, "d_reg_every": 16, "image_size": 1024, "w_norm_lambda": 0.0, "batch_size": 8,
            "optim_name": "ranger", "learning_rate": 1e-4, "max_steps": 500000, "board_interval": 500,
            "val_interval": 15000, "save_interval": 15000, "randomize_noise": False, "encoder_init": "random",
            "sfe_feature_scale_steps": 10000,
        },
        "SFE phase 2: the feature editor on synthetic editing pairs, from a phase-1 inverter (the original's recipe)",
    ),
    "sfe_inverter": (
        "inversion",
        {
            "family": "sfe", "sfe_phase": "inverter", "l2_lambda": 1.0, "lpips_lambda": 0.8, "id_lambda": 0.1,
            "feat_rec_lambda": 0.01, "adv_lambda": 0.01, "d_start_step": 45000, "d_learning_rate": 1e-4,
            "r1": 10.0, "d_reg_every": 16, "image_size": 1024, "w_norm_lambda": 0.0, "batch_size": 8, "optim_name": "ranger",
            "learning_rate": 1e-4, "max_steps": 300000, "board_interval": 500, "val_interval": 15000,
            "save_interval": 15000, "randomize_noise": False, "encoder_init": "iresnet50", "sfe_feature_scale_steps": 10000,
        },
        "face photo -> W+ and a 64x64 feature with the StyleFeatureEditor inverter (phase 1; the original's recipe)",
    ),
}

log = logging.getLogger("instyle.training")


#: The original's training edits (``FACE_DIRECTIONS`` of ``runners/training_runners.py``) that are
#: W+ edits: InterFaceGAN ``age`` / ``rotation`` (``NAME.pt`` in ``sfe_edits_dir``) and the GANSpace
#: preset ``face_roundness`` (``ffhq_pca.pt``). Its StyleCLIP / StyleSpace / FS-boundary edits
#: (``afro``, ``purple_hair``, ``glasses``, ``fs_makeup`` ...) are not W+ edits and are not supported.
DEFAULT_SFE_EDITS = "age=-7,-5,5,7,10;face_roundness=-13,-7,7,13;rotation=-5,-3,-1,1,3,5"
MAX_EDITS = 256


def parse_edits(spec: str) -> list[tuple[str, list[float]]]:
    """``"age=-7,5;face_roundness=-13,13"`` -> ``[("age", [-7.0, 5.0]), ...]``; raises
    :class:`ConfigError` naming the bad part."""
    out: list[tuple[str, list[float]]] = []
    for part in str(spec).split(";"):
        name, sep, values = part.strip().partition("=")
        try:
            degrees = [float(v) for v in values.split(",")] if sep else []
        except ValueError:
            degrees = []
        if not name.strip() or not degrees or not all(abs(d) < 1e6 for d in degrees) or len(degrees) > MAX_EDITS:
            raise ConfigError(f"sfe_edits={spec!r}: {part.strip()!r} is not NAME=DEGREE,DEGREE,... "
                              "(e.g. 'age=-7,-5,5,7,10;face_roundness=-13,13')")
        out.append((name.strip(), degrees))
    if len(out) > MAX_EDITS:
        raise ConfigError(f"sfe_edits={spec!r}: at most {MAX_EDITS} edits")
    return out


def check_sfe_config(cfg) -> None:
    """The checks of a ``family='sfe'`` :class:`~instyle.training.config.TrainConfig`."""
    check_choice("sfe_phase", cfg.sfe_phase, SFE_PHASES)
    check_int_range("sfe_feature_scale_steps", cfg.sfe_feature_scale_steps, 0, MAX_RAMP)
    check_int_range("sfe_feature_index", cfg.sfe_feature_index, 2, 32)
    for name in ("feat_rec_lambda", "adv_lambda", "d_learning_rate", "r1"):
        if not getattr(cfg, name) >= 0:
            raise ConfigError(f"{name}={getattr(cfg, name)!r} must be >= 0")
    check_int_range("d_start_step", cfg.d_start_step, 0, MAX_RAMP)
    check_int_range("d_reg_every", cfg.d_reg_every, 1, MAX_RAMP)
    if cfg.sfe_phase == "editor":
        parse_edits(cfg.sfe_edits)
        if cfg.feat_rec_lambda > 0:
            raise ConfigError(f"feat_rec_lambda={cfg.feat_rec_lambda}: sfe_phase='editor' has no feature term (the "
                              "inverter is frozen); set feat_rec_lambda=0")
    if cfg.input_nc != 3 or cfg.source_mode != "rgb":
        raise ConfigError(f"family='sfe' trains on RGB photos: needs input_nc=3 and source_mode='rgb' "
                          f"(got {cfg.input_nc}, {cfg.source_mode!r})")
    if cfg.randomize_noise:
        raise ConfigError("family='sfe' renders with the generator's stored noise, as the original runners; "
                          "set randomize_noise=false")
    if cfg.encoder_init not in ("iresnet50", "random"):
        raise ConfigError(
            f"encoder_init={cfg.encoder_init!r}: family='sfe' starts its FS backbone from ArcFace's iresnet50 "
            "('iresnet50', the original) or at random ('random')"
        )
    extra = [k for k in ("lpips_lambda_crop", "l2_lambda_crop", "w_norm_lambda") if getattr(cfg.objective, k) > 0]
    if extra or cfg.train_decoder or cfg.learn_in_w:
        raise ConfigError(f"family='sfe' has no {extra} terms, train_decoder or learn_in_w (the original's runners use "
                          f"{list(SFE_TERMS)} and feat_rec_lambda); set them to 0/false")


def sfe_config_for(cfg, generator) -> SFEConfig:
    """The inverter-only SFE architecture a training config describes around a generator:
    FS backbone widths/units from ``encoder_widths``/``encoder_units`` (default iresnet50's),
    feature ``sfe_feature_index``, encoder input 4x that feature's resolution (256 for the
    original's feature 9). Training images are read at the generator's resolution
    (``image_size``; the original's 1024 px photos) and resized for the encoder by the model."""
    if cfg.image_size != generator.size:
        raise ConfigError(f"image_size={cfg.image_size}: family='sfe' reads training images at the generator's "
                          f"resolution ({generator.size} px), as the original; set image_size={generator.size}")
    if cfg.output_size is not None and cfg.output_size != generator.size:
        raise ConfigError(f"output_size={cfg.output_size} but the generator produces {generator.size}px images")
    widths = tuple(cfg.encoder_widths or SFEConfig.widths)
    units = tuple(cfg.encoder_units or IRESNET50_UNITS)
    index = cfg.sfe_feature_index
    if index > generator.num_layers:
        raise ConfigError(f"sfe_feature_index={index}: the {generator.size} px generator has features 2..{generator.num_layers}")
    input_size = 4 * feature_resolution(index)
    if cfg.objective.id_lambda > 0 and input_size != 256:
        raise ConfigError(f"id_lambda={cfg.objective.id_lambda}: the identity loss needs the 256 px loss images of feature 9 "
                          f"(sfe_feature_index={index} gives {input_size} px); set id_lambda=0")
    return SFEConfig(generator=generator, widths=widths, units=units, feature_index=index, input_size=input_size,
                     editor=False)


def _load_sfe(cfg):
    """``checkpoint_path``: an instyle folder, or an official SFE ``.pt`` with ``stylegan_weights``
    (and ``e4e_checkpoint_path`` for an editor file)."""
    if is_own_format(cfg.checkpoint_path):
        return load_psp(cfg.checkpoint_path)
    return load_psp(cfg.checkpoint_path, generator=cfg.stylegan_weights, e4e=cfg.e4e_checkpoint_path)


def _from_checkpoint(cfg) -> SFE:
    model = _load_sfe(cfg)
    if not isinstance(model, SFE):
        raise ConfigError(f"{cfg.checkpoint_path}: family='sfe' needs an SFE checkpoint, this is a {type(model).__name__}")
    if model.config.editor:
        raise ConfigError(f"{cfg.checkpoint_path}: sfe_phase='inverter' continues an inverter-only model; this one has "
                          "a feature editor")
    found = {"image_size": model.config.generator.size, "sfe_feature_index": model.config.feature_index}
    diffs = [f"{k}: config {getattr(cfg, k)!r} vs checkpoint {v!r}" for k, v in found.items() if getattr(cfg, k) != v]
    if diffs:
        raise ConfigError(f"{cfg.checkpoint_path}: the checkpoint's architecture differs from the config: " + "; ".join(diffs))
    model.random_weights = False
    return model.train()


def _editor_model(cfg) -> SFE:
    """Phase 2's model: the phase-1 inverter ``checkpoint_path`` (instyle folder, or the
    official inverter ``.pt`` with ``stylegan_weights``) plus the e4e encoder
    ``e4e_checkpoint_path`` and a new feature editor seeded with ``seed``; or a full SFE
    checkpoint to continue."""
    if not cfg.checkpoint_path:
        raise ConfigError("sfe_phase='editor' starts from the phase-1 inverter: give checkpoint_path (a run's "
                          "checkpoints/best or latest, or sfe_inverter_light.pt with --generator)")
    base = _load_sfe(cfg)
    if not isinstance(base, SFE):
        raise ConfigError(f"{cfg.checkpoint_path}: family='sfe' needs an SFE checkpoint, this is a {type(base).__name__}")
    if base.config.editor:
        base.random_weights = False
        return base.train()
    if not cfg.e4e_checkpoint_path:
        raise ConfigError("sfe_phase='editor' needs the e4e encoder (e4e_checkpoint_path=e4e_ffhq_encode.pt): the "
                          "edit deltas come from its inversions, as the original")
    gen = base.config.generator
    e4e_cfg, e4e_state = read_e4e_file(cfg.e4e_checkpoint_path, gen, cfg.checkpoint_path)
    e4e_cfg = dataclasses.replace(e4e_cfg, input_size=base.config.input_size)
    config = dataclasses.replace(base.config, editor=True, e4e=e4e_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = SFE(config, latent_avg=base.latent_avg)
    state = model.state_dict()
    state.update(base.state_dict())
    state.update(e4e_state)
    model.load_state_dict(state)
    model.sync_decoder_latent_avg()
    return model.train()


def build_sfe(cfg) -> SFE:
    """The SFE model a run starts from (CPU, train mode): ``checkpoint_path``, or a new
    inverter (seeded with ``seed``) around the generator ``stylegan_weights`` and its
    average latent; phase 2: see :func:`_editor_model`."""
    if cfg.sfe_phase == "editor":
        return _editor_model(cfg)
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
    if cfg.encoder_init == "iresnet50":
        path = find_weights(cfg.iresnet50_weights, IRESNET50_NAMES, "ArcFace iresnet50",
                            "Give insightface's iresnet50 file (the original's iresnet50-7f187506.pth) with "
                            "iresnet50_weights=PATH, or set encoder_init=random.")
        n = init_fs_backbone_from_iresnet50(model.inverter.fs_backbone, read_state_dict(path, "ArcFace iresnet50"))
        log.info("FS backbone: %d tensors initialised from the iresnet50 weights", n)
    model.decoder.load_state_dict(generator.state_dict())
    model.sync_decoder_latent_avg()
    return model.train()


#: insightface's ArcFace iresnet50 file the original initialises the FS backbone from.
IRESNET50_NAMES = ("iresnet50-7f187506.pth",)


def init_fs_backbone_from_iresnet50(backbone: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """The original's FS-backbone initialisation: ArcFace iresnet50's stem (``conv1``, ``bn1``,
    ``prelu``) and ``layer1..4`` become ``conv.0/1/2`` and ``block_1..4`` (the third stage's
    first unit keeps its weights with stride 1); ``bn2``/``fc``/``features`` are not used.
    Returns the tensors copied.

    Raises:
        ConfigError: the file is not an iresnet50 of the backbone's widths and depths.
    """
    stem = {"conv1.": "conv.0.", "bn1.": "conv.1.", "prelu.": "conv.2."}
    mapped: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        for src, dst in stem.items():
            if k.startswith(src):
                mapped[dst + k[len(src):]] = v
        m = re.fullmatch(r"layer([1-4])\.(.+)", k)
        if m:
            mapped[f"block_{m.group(1)}.{m.group(2)}"] = v
    own = backbone.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)} vs backbone {tuple(own[k].shape) if k in own else None}"
             for k, v in mapped.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k.startswith(("conv.", "block_")) and k not in mapped]
    if wrong or missing or not mapped:
        raise ConfigError(
            f"the iresnet50 weights do not fit this FS backbone ({len(wrong)} mismatches, e.g. {wrong[:2]}; "
            f"{len(missing)} tensors missing, e.g. {missing[:2]}); use the default encoder_widths/encoder_units or "
            "encoder_init=random"
        )
    backbone.load_state_dict(mapped, strict=False)
    return len(mapped)


def trained_modules(model: SFE) -> nn.Module:
    """What a phase trains: the inverter (FS backbone + fuser) in phase 1, the feature editor
    in phase 2 (the rest is frozen)."""
    model.requires_grad_(False)
    return model.encoder if model.config.editor else model.inverter


def feature_scale(step: int, ramp: int) -> float:
    """``min(1, step / ramp)`` computed as the original's ``min(1.0, 0.0001 * n_iter)`` for ramp 10 000."""
    return 1.0 if ramp == 0 else min(1.0, (1.0 / ramp) * step)


def load_discriminator(path: str | None, generator, seed: int) -> Discriminator:
    """The image discriminator for the generator's resolution: the ``D`` of an NVIDIA ``.pkl``
    (what the original loads), a rosinality checkpoint's ``d`` entry (or a bare state dict),
    loaded strictly; without a file, seeded with ``seed``."""
    with torch.random.fork_rng(devices=[]):  # the same initial weights whatever ran before
        torch.manual_seed(seed)
        d = Discriminator(generator.size, channels=generator.channel_table())
    if path is None:
        log.warning("no discriminator_weights: the SFE discriminator starts from random weights (the original loads "
                    "the pretrained StyleGAN2 discriminator)")
        return d
    if str(path).endswith(".pkl"):  # NVIDIA's StyleGAN2-ADA pickle (the original's stylegan2-ffhq-config-f.pkl)
        d = load_nvidia_discriminator(path)
        if d.size != generator.size:
            raise CheckpointError(f"discriminator_weights={path}: a {d.size} px discriminator for a {generator.size} px generator")
        return d
    ckpt = safe_torch_load(path, "discriminator checkpoint")
    state = ckpt.get("d", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"discriminator_weights={path}: expected a rosinality StyleGAN2 checkpoint with a 'd' "
                              "state dict (or a bare discriminator state dict)")
    own = d.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or extra or wrong:
        raise CheckpointError(
            f"discriminator_weights={path}: does not fit a {generator.size} px StyleGAN2 discriminator with the "
            f"generator's channels ({len(missing)} missing, e.g. {missing[:2]}; {len(extra)} unexpected, e.g. "
            f"{extra[:2]}; {len(wrong)} shape mismatches, e.g. {wrong[:2]})"
        )
    d.load_state_dict({k: v.float() for k, v in state.items()})
    return d


class SFEDiscriminator:
    """The original's image discriminator on the feature path: from step ``d_start_step``
    the encoder gets ``adv_lambda * softplus(-D(renders)).mean()``, and after each encoder
    step D takes one Adam step on ``(softplus(-D(x)).mean() + softplus(D(renders)).mean()) / 2``
    plus, every ``d_reg_every`` steps, ``r1 / 2 * R1 * d_reg_every`` (one backward, as the original).

    Under ``torchrun`` (``world_size`` > 1) its gradients are averaged over the processes before
    each update, as DDP does the encoder's, so every process keeps the same discriminator: the
    one of a single process on the combined batch (its minibatch-stddev layer groups the images
    of one process, as the original's under DDP)."""

    def __init__(self, cfg, generator, device: torch.device, world_size: int = 1):
        self.cfg = cfg
        self.world_size = world_size
        self.d = load_discriminator(cfg.discriminator_weights, generator, cfg.seed + 1).to(device)
        self.optimizer = torch.optim.Adam(self.d.parameters(), lr=cfg.d_learning_rate, betas=(0.9, 0.999))
        self.d.requires_grad_(False)
        self.fake: torch.Tensor | None = None

    def active(self, step: int) -> bool:
        return step >= self.cfg.d_start_step

    def train_step(self, x: torch.Tensor, step: int) -> dict[str, float]:
        """One discriminator update on real ``x`` and the renders of the last encoder step."""
        if self.fake is None or not self.active(step):
            return {}
        d, cfg = self.d, self.cfg
        d.requires_grad_(True)
        loss = (F.softplus(-d(x)).mean() + F.softplus(d(self.fake)).mean()) / 2
        terms = {"disc/main_loss": float(loss.detach())}
        if step % cfg.d_reg_every == 0:
            real = x.detach().requires_grad_(True)
            pred = d(real).view(real.shape[0], -1).mean(1, keepdim=True)
            (grad,) = torch.autograd.grad(pred.sum(), real, create_graph=True)
            r1 = cfg.r1 / 2 * grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean() * cfg.d_reg_every + 0 * pred[0]
            terms["disc/r1_reg"] = float(r1.detach().sum())
            loss = loss + r1.sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(d, self.world_size)
        self.optimizer.step()
        d.requires_grad_(False)
        self.fake = None
        return terms

    def state_dict(self) -> dict:
        return {"discriminator": self.d.state_dict(), "d_optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.d.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["d_optimizer"])


class SFEObjective(nn.Module):
    """The pSp objective on both renders plus the feature reconstruction term and, once
    active, the adversarial term; ``step`` is set by the loop before each step (the
    feature-scale ramp and the discriminator's start read it)."""

    def __init__(self, base: Objective, cfg, generator=None, device: torch.device | None = None, world_size: int = 1):
        super().__init__()
        self.base = base
        self.feat_rec_lambda = cfg.feat_rec_lambda
        self.adv_lambda = cfg.adv_lambda
        self.ramp = cfg.sfe_feature_scale_steps
        self.step = 0
        self.disc = (SFEDiscriminator(cfg, generator, device or torch.device("cpu"), world_size) if cfg.adv_lambda > 0
                     else None)
        self.edits = parse_edits(cfg.sfe_edits) if cfg.sfe_phase == "editor" else []
        self.edits_dir = cfg.sfe_edits_dir
        self._edit_fns: dict = {}

    def sample_edit(self):
        """A random training edit as the original's ``get_random_edit`` (NumPy's global RNG:
        a direction uniformly, then one of its degrees) -> ``(name, degree, W+ edit function)``."""
        names = [n for n, _ in self.edits]
        name = str(np.random.choice(names))
        degree = float(np.random.choice(dict(self.edits)[name]))
        if (name, degree) not in self._edit_fns:
            if self.edits_dir is None:
                raise ConfigError("sfe_phase='editor' needs sfe_edits_dir: the folder with the edit files "
                                  "(age.pt, rotation.pt, ffhq_pca.pt)")
            try:
                self._edit_fns[(name, degree)] = named_edit_fn(name, degree, self.edits_dir)
            except ValueError as e:
                raise ConfigError(f"sfe_edits: {e}") from None
        return name, degree, self._edit_fns[(name, degree)]

    def forward(self, x, y, y_hat, latent, latent_avg, fused=None, w_feat=None, renders=None) -> ObjectiveOutput:
        out = self.base(x, y, y_hat, latent, latent_avg)
        loss, terms = out.loss, {}
        if fused is not None and self.feat_rec_lambda > 0:
            rec = F.mse_loss(fused.float(), w_feat.float())
            terms["loss_feat_rec"] = float(rec.detach())
            loss = loss + self.feat_rec_lambda * rec
        if renders is not None and self.disc is not None and self.disc.active(self.step):
            adv = F.softplus(-self.disc.d(renders)).mean()
            terms["loss_adv"] = float(adv.detach())
            loss = loss + self.adv_lambda * adv
            if torch.is_grad_enabled():
                self.disc.fake = renders.detach().float()
        if not terms:
            return out
        return ObjectiveOutput(loss, {**out.terms, **terms, "loss": float(loss.detach())}, out.id_logs)

    def train_discriminator(self, x: torch.Tensor, step: int) -> dict[str, float]:
        return {} if self.disc is None else self.disc.train_step(x, step)

    def training_state(self) -> dict | None:
        return None if self.disc is None else self.disc.state_dict()

    def load_training_state(self, state: dict | None) -> None:
        if self.disc is not None:
            self.disc.load_state_dict(state)


class SFETraining:
    """The loop's :class:`~instyle.training.hooks.FamilyTrainingState` of an SFE run: the
    objective learns the step count (feature-scale ramp, discriminator start) before each
    encoder step, the discriminator takes its step after it; saved under ``"sfe"``."""

    key = "sfe"

    def __init__(self, objective: SFEObjective):
        self.objective = objective

    def before_step(self, model: nn.Module, x: torch.Tensor, step: int) -> dict[str, float]:
        self.objective.step = step
        return {}

    def after_step(self, model: nn.Module, x: torch.Tensor, step: int) -> dict[str, float]:
        return self.objective.train_discriminator(x, step)

    def state_dict(self) -> dict | None:
        return self.objective.training_state()

    def load_state_dict(self, state: dict | None) -> None:
        self.objective.load_training_state(state)


def _sfe_extras(cfg, model: SFE, objective: Objective, device, world_size: int):
    sfe = SFEObjective(objective, cfg, model.config.generator, device, world_size)
    return SFETraining(sfe), sfe


def sfe_editor_forward(net: nn.Module, objective: SFEObjective, x: torch.Tensor, y: torch.Tensor, precision):
    """Phase 2 (the original's ``fse_editor`` runner) on one batch: the inversion of ``x``
    with a zero delta, and a synthetic editing pair -- the e4e reconstruction ``x_E`` of ``x``
    as input, the e4e render of the edited e4e latent ``y_E`` as target, the delta between
    their generator features -- rendered from the inverter's edited latent of ``x_E``; the
    losses on both against ``cat[x, y_E]``, the discriminator on the inversion."""
    model = getattr(net, "module", net)
    k, avg = model.config.feature_index, model.latent_avg
    _, _, fn = objective.sample_edit()
    size = model.config.input_size
    with precision.autocast():
        with torch.no_grad():
            w_e4e = model.e4e_encoder(model.resize_input(x)) + avg
            x_e, fx = model.decoder.feature_list(w_e4e)
            y_e, fy = model.decoder.feature_list(fn(w_e4e))
            delta = fx[k] - fy[k]
            w_raw, predicted = model.inverter.fs_backbone(model.resize_input(x_e))
            w_xe = w_raw + avg
            fused_e = model.inverter.fuser(torch.cat([predicted, model.generator_feature(w_xe)], 1))
        y_inv, w_recon, _, _, y_edit = net(x, feature_scale=INFERENCE_FEATURE_SCALE, edit=(fused_e, delta, fn(w_xe)))
        y_hat = F.adaptive_avg_pool2d(torch.cat([y_inv, y_edit]), size)
        x2 = F.adaptive_avg_pool2d(torch.cat([x, y_e.to(x.dtype)]), size)
        y2 = F.adaptive_avg_pool2d(torch.cat([y, y_e.to(y.dtype)]), size)
        out = objective(x2, y2, y_hat, torch.cat([w_recon, w_recon]), avg, renders=y_inv)
    return out, y_inv.detach(), w_recon.detach()


def sfe_forward(net: nn.Module, objective: SFEObjective, x: torch.Tensor, y: torch.Tensor, precision):
    """Phase 1's forward and loss on one batch (no backward) -> ``(ObjectiveOutput, y_hat
    [B, 3, S, S] of the feature path pooled to the input size, w_recon)``; phase 2: see
    :func:`sfe_editor_forward`."""
    model = getattr(net, "module", net)
    if model.config.editor:
        return sfe_editor_forward(net, objective, x, y, precision)
    size = model.config.input_size  # the original's AdaptiveAvgPool2d(256) of images and targets
    with precision.autocast():
        y_inv, w_recon, fused, w_feat = net(x, feature_scale=feature_scale(objective.step, objective.ramp))
        y_w, _ = model.decoder([w_recon], input_is_latent=True, randomize_noise=False)
        y_hat = F.adaptive_avg_pool2d(torch.cat([y_inv, y_w]), size)
        x2 = F.adaptive_avg_pool2d(torch.cat([x, x]), size)
        y2 = F.adaptive_avg_pool2d(torch.cat([y, y]), size)
        renders = torch.cat([y_inv, y_w])
        out = objective(x2, y2, y_hat, torch.cat([w_recon, w_recon]), model.latent_avg, fused, w_feat, renders)
    return out, y_inv.detach(), w_recon.detach()


def _sfe_step(net, objective, latent_avg, x, y, n_iters, randomize_noise, precision, scaler, train) -> StepOutput:
    out, y_hat, latent = sfe_forward(net, objective, x, y, precision or Precision())
    if train:
        backward(out.loss, scaler)
    return StepOutput(out, y_hat, latent)


register_training("sfe", TrainingHooks(
    validate=check_sfe_config,
    encoder_inits=("iresnet50", "random"),
    objective_at_image_size=False,  # it pools images to the encoder's input size (256 px at feature 9)
    build=lambda cfg, init_encoder=None: build_sfe(cfg),
    trained=trained_modules,
    channels_last=lambda model: model.inverter,
    forward=_sfe_step,
    extras=_sfe_extras,
))
