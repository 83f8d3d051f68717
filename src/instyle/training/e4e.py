"""What e4e adds to the pSp training loop (``training/coach.py`` of the original):

* the progressive schedule: stage ``i`` (offsets of styles ``1..i`` trained) from step
  ``progressive_steps[i]``; without ``progressive_start`` every offset trains from the start;
* a latent discriminator (own Adam optimiser) trained before each encoder step on the
  mapping network's w ("real") against the encoder's codes ("fake"), with an R1 penalty
  every ``d_reg_every`` steps and optional pools of past codes;
* the encoder's extra terms: adversarial loss and delta regularisation.

Everything here is saved in the training state, so a resumed run continues exactly.
"""

from __future__ import annotations

import random

import torch
from torch import nn

from instyle.losses.e4e import delta_regularization, discriminator_loss, encoder_adversarial_loss, r1_penalty
from instyle.losses.objective import Objective, ObjectiveOutput
from instyle.models.encoders.e4e import INFERENCE_STAGE
from instyle.models.latent_discriminator import LatentCodesDiscriminator
from instyle.training.config import MAX_POOL, MAX_STEPS
from instyle.training.hooks import TrainingHooks, register_training
from instyle.training.step import set_train_mode
from instyle.utils.config import ConfigError, check_choice, check_int_range

__all__ = ["E4E_TRAIN_TYPES", "LatentCodesPool", "E4ETraining", "check_e4e_config", "progressive_steps"]

#: e4e's trainable encoder types (its ``Encoder4Editing``; the W ablation has no stages).
E4E_TRAIN_TYPES = ("Encoder4Editing",)


def check_e4e_config(cfg) -> None:
    """The ``family='e4e'`` checks of a :class:`~instyle.training.config.TrainConfig`."""
    check_choice("encoder_type", cfg.encoder_type, E4E_TRAIN_TYPES)
    for name in ("d_reg_every", "progressive_step_every"):
        check_int_range(name, getattr(cfg, name), 1, MAX_STEPS)
    check_int_range("w_pool_size", cfg.w_pool_size, 0, MAX_POOL)
    if cfg.progressive_start is not None and cfg.progressive_start < 1:
        raise ConfigError(f"progressive_start={cfg.progressive_start!r} must be >= 1 (or null)")
    if min(cfg.w_discriminator_lambda, cfg.w_discriminator_lr, cfg.r1, cfg.delta_norm_lambda) < 0:
        raise ConfigError("w_discriminator_lambda, w_discriminator_lr, r1 and delta_norm_lambda must be >= 0")


def progressive_steps(n_styles: int, start: int | None, every: int) -> list[int] | None:
    """The original's ``setup_progressive_steps``: ``[0, start, start + every, ...]``."""
    if start is None:
        return None
    return [0] + [start + i * every for i in range(n_styles - 1)]


class LatentCodesPool:
    """A pool of past codes (the original's ``LatentCodesPool``): once full, each query code
    is swapped with a random stored one with probability 1/2 (Python's ``random``)."""

    def __init__(self, size: int):
        self.size = size
        self.codes: list[torch.Tensor] = []

    def query(self, ws: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` or ``[B, n, D]`` (one random row per sample) -> ``[B, D]``."""
        if self.size == 0:
            return ws
        out = []
        for w in ws:
            if w.ndim == 2:
                w = w[random.randint(0, len(w) - 1)]
            if len(self.codes) < self.size:
                self.codes.append(w)
                out.append(w)
            elif random.uniform(0, 1) > 0.5:
                i = random.randint(0, self.size - 1)
                out.append(self.codes[i].clone())
                self.codes[i] = w
            else:
                out.append(w)
        return torch.stack(out, 0)

    def state_dict(self) -> dict:
        return {"codes": torch.stack(self.codes) if self.codes else None}

    def load_state_dict(self, state: dict) -> None:
        codes = state.get("codes")
        self.codes = [] if codes is None else list(codes.unbind(0))


class E4ETraining:
    """The discriminator, its optimiser, the pools and the schedule of one e4e run (the
    loop's :class:`~instyle.training.hooks.FamilyTrainingState`)."""

    key = "e4e"

    def __init__(self, cfg, n_styles: int, style_dim: int, device: torch.device):
        self.cfg = cfg
        self.steps = progressive_steps(n_styles, cfg.progressive_start, cfg.progressive_step_every)
        self.discriminator = None
        if cfg.w_discriminator_lambda > 0:
            with torch.random.fork_rng(devices=[]):  # the same initial weights whatever ran before
                torch.manual_seed(cfg.seed + 1)
                self.discriminator = LatentCodesDiscriminator(style_dim, 4).to(device)
            self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.w_discriminator_lr)
            self.discriminator.requires_grad_(False)
        pool = cfg.w_pool_size if cfg.use_w_pool else 0
        self.real_pool, self.fake_pool = LatentCodesPool(pool), LatentCodesPool(pool)

    def stage(self, step: int) -> int:
        if self.steps is None:
            return INFERENCE_STAGE
        return max(i for i, s in enumerate(self.steps) if s <= step)

    def dims(self, model: nn.Module) -> list[int]:
        """The styles the discriminator judges: the enabled ones (all without a schedule)."""
        return list(range(min(model.encoder.progressive_stage + 1, model.n_styles)))

    @torch.no_grad()
    def _real_and_fake(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(x.shape[0], model.decoder.style_dim, device=x.device)
        real = model.decoder.get_latent(z)
        fake = model.encoder(x)
        if model.config.start_from_latent_avg:
            fake = fake + model.latent_avg[None]
        if self.steps is not None:
            fake = fake[:, self.dims(model)]
        if self.cfg.use_w_pool:
            real, fake = self.real_pool.query(real), self.fake_pool.query(fake)
        return real, fake[:, 0] if fake.ndim == 3 else fake

    def train_discriminator(self, model: nn.Module, x: torch.Tensor, step: int) -> dict[str, float]:
        """One discriminator update (+ R1 every ``d_reg_every`` steps); the encoder runs in
        train mode under no_grad, as the original."""
        if self.discriminator is None:
            return {}
        d, opt = self.discriminator, self.d_optimizer
        d.requires_grad_(True)
        real, fake = self._real_and_fake(model, x)
        loss = discriminator_loss(d(real), d(fake))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        terms = {"discriminator_loss": float(loss.detach())}
        if step % self.cfg.d_reg_every == 0:
            real = real.detach().requires_grad_(True)
            pred = d(real)
            r1 = self.cfg.r1 / 2 * r1_penalty(pred, real) * self.cfg.d_reg_every + 0 * pred[0]
            d.zero_grad(set_to_none=True)
            r1.sum().backward()
            opt.step()
            terms["discriminator_r1_loss"] = float(r1.detach())
        d.requires_grad_(False)
        return terms

    def before_step(self, model: nn.Module, x: torch.Tensor, step: int) -> dict[str, float]:
        """Before the encoder step: the progressive stage for this step, then one
        discriminator update (the original's order)."""
        model.encoder.set_progressive_stage(self.stage(step))
        set_train_mode(model, self.cfg.freeze_batchnorm)
        return self.train_discriminator(model, x, step)

    def after_step(self, model: nn.Module, x: torch.Tensor, step: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        state = {"real_pool": self.real_pool.state_dict(), "fake_pool": self.fake_pool.state_dict()}
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["d_optimizer"] = self.d_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.real_pool.load_state_dict(state["real_pool"])
        self.fake_pool.load_state_dict(state["fake_pool"])
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])


class E4EObjective(nn.Module):
    """The pSp objective plus e4e's adversarial and delta terms (the original's ``calc_loss``)."""

    def __init__(self, base: Objective, e4e: E4ETraining, model: nn.Module):
        super().__init__()
        self.base, self.e4e = base, e4e
        self._model = [model]  # not a submodule: its parameters belong to the trainer

    def forward(self, x, y, y_hat, latent, latent_avg) -> ObjectiveOutput:
        out = self.base(x, y, y_hat, latent, latent_avg)
        model, cfg = self._model[0], self.e4e.cfg
        loss, terms = out.loss, {}
        if self.e4e.discriminator is not None:
            adv = encoder_adversarial_loss(self.e4e.discriminator, latent, self.e4e.dims(model))
            terms["encoder_discriminator_loss"] = float(adv.detach())
            loss = loss + cfg.w_discriminator_lambda * adv
        stage = model.encoder.progressive_stage
        if self.e4e.steps is not None and stage != INFERENCE_STAGE:
            total, deltas = delta_regularization(latent, min(stage, model.n_styles - 1), cfg.delta_norm)
            terms.update(deltas, total_delta_loss=float(total.detach()))
            loss = loss + cfg.delta_norm_lambda * total
        return ObjectiveOutput(loss, {**out.terms, **terms, "loss": float(loss.detach())}, out.id_logs)


def _e4e_extras(cfg, model, objective: Objective, device, world_size: int):
    e4e = E4ETraining(cfg, model.n_styles, model.config.generator.style_dim, device)
    return e4e, E4EObjective(objective, e4e, model)


register_training("e4e", TrainingHooks(extras=_e4e_extras, validate=check_e4e_config))
