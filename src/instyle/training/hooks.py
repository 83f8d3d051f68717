"""What training does differently for each model family, registered by the family's own
training module (``register_training(...)`` at the end of ``training/hyperstyle.py``,
``training/e4e.py``, ``training/restyle.py``, ``training/restyle3.py``, ``training/sfe.py``), so the trainer
(:mod:`instyle.training.loop`, :mod:`instyle.training.step`, :mod:`instyle.training.model`)
asks :func:`training_hooks` instead of testing which family it trains. A family with no
entry (pSp) trains the plain way: the pSp builder, the encoder's parameters, one forward.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["TRAINING_MODULES", "FamilyTrainingState", "TrainingHooks", "register_training", "training_families",
           "training_hooks"]


class FamilyTrainingState(Protocol):
    """What a family trains besides its model (e4e's latent discriminator, SFE's image
    discriminator), as the loop drives it: ``before_step`` ahead of each encoder step,
    ``after_step`` after it (``step``: the optimizer steps done before this one; both return
    loss terms to log), and its state under ``key`` in the run's training state."""

    #: Its entry in ``training_state.pt`` (``"e4e"``, ``"sfe"``).
    key: str

    def before_step(self, model: Any, x: Any, step: int) -> dict[str, float]: ...

    def after_step(self, model: Any, x: Any, step: int) -> dict[str, float]: ...

    def state_dict(self) -> dict | None: ...

    def load_state_dict(self, state: dict | None) -> None: ...


@dataclass(frozen=True)
class TrainingHooks:
    """One family's training hooks (None: the plain pSp way).

    Attributes:
        build: ``(cfg, init_encoder) -> model`` (CPU, train mode); ``init_encoder`` is the
            IR-SE-50 initialiser of :mod:`instyle.training.model`.
        architecture: ``(model) -> dict``: the config keys fine-tuning from a checkpoint takes.
        trained: ``(model) -> nn.Module``: the module whose parameters are optimised.
        frozen: ``(model) -> list[nn.Module]``: modules kept frozen besides the decoder.
        channels_last: ``(model) -> nn.Module``: the convolutions ``channels_last`` applies to
            (default: the trained module).
        forward: ``(net, objective, latent_avg, x, y, n_iters, randomize_noise, precision,
            scaler, train) -> StepOutput``: one batch's forward (and, with ``train``, backward).
        extras: ``(cfg, model, objective, device, world_size) -> (extra state or None,
            objective)``: e.g. e4e's or SFE's discriminator; the extra state is a
            :class:`FamilyTrainingState`, run around each step and saved with the run's state.
        validate: ``(cfg) -> None``: the family's own checks of a
            :class:`~instyle.training.config.TrainConfig` (encoder types, channels, its
            options), raising :class:`~instyle.utils.config.ConfigError` naming the value;
            default: the pSp checks (:func:`instyle.training.config.check_psp_options`).
        encoder_inits: the ``encoder_init`` values the family starts its encoder from.
        encoder_input_nc: ``(cfg) -> int``: the channels the pSp builder gives the encoder
            (default ``cfg.input_nc``; ReStyle's encoder also sees its last output).
        objective_at_image_size: the objective sees the images at ``image_size`` (so the
            identity loss and the crops need 256 px); False: the family pools them to its
            encoder's input size first (SFE).
    """

    build: Callable[..., Any] | None = None
    architecture: Callable[[Any], dict] | None = None
    trained: Callable[[Any], Any] | None = None
    frozen: Callable[[Any], list] | None = None
    channels_last: Callable[[Any], Any] | None = None
    forward: Callable[..., Any] | None = None
    extras: Callable[..., Any] | None = None
    validate: Callable[[Any], None] | None = None
    encoder_inits: tuple[str, ...] = ("ir_se50", "random")
    encoder_input_nc: Callable[[Any], int] | None = None
    objective_at_image_size: bool = True


#: The modules that register training hooks (imported on first use).
TRAINING_MODULES = ("instyle.training.e4e", "instyle.training.restyle", "instyle.training.hyperstyle",
                    "instyle.training.restyle3", "instyle.training.sfe")
_HOOKS: dict[str, TrainingHooks] = {}
_MODULE_OF: dict[str, str] = {}  # family -> the module that registered it (for a stable order)
_PLAIN = TrainingHooks()
#: The family trained the plain way (no hooks of its own).
PLAIN_FAMILY = "psp"


def register_training(family: str, hooks: TrainingHooks) -> TrainingHooks:
    """Register ``family``'s training hooks (its training module calls this once)."""
    _HOOKS[family] = hooks
    _MODULE_OF[family] = sys._getframe(1).f_globals.get("__name__", "")
    return hooks


def _import_training_modules() -> None:
    # On first use, not at import: the family modules import the training config.
    for module in TRAINING_MODULES:
        importlib.import_module(module)


def training_families() -> tuple[str, ...]:
    """The families the trainer implements: the plain pSp one, then every registered family in
    :data:`TRAINING_MODULES` order."""
    _import_training_modules()

    def order(family: str) -> int:
        module = _MODULE_OF[family]
        return TRAINING_MODULES.index(module) if module in TRAINING_MODULES else len(TRAINING_MODULES)

    return (PLAIN_FAMILY, *sorted(_HOOKS, key=order))


def training_hooks(family: str) -> TrainingHooks:
    """The hooks of ``family`` (a family without any trains the plain pSp way)."""
    _import_training_modules()
    return _HOOKS.get(family, _PLAIN)
