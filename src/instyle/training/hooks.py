"""What training does differently for each model family, registered by the family's own
training module (``register_training(...)`` at the end of ``training/hyperstyle.py``,
``training/e4e.py``, ``training/restyle.py``, ``training/restyle3.py``, ``training/sfe.py``), so the trainer
(:mod:`instyle.training.loop`, :mod:`instyle.training.step`, :mod:`instyle.training.model`)
asks :func:`training_hooks` instead of testing which family it trains. A family with no
entry (pSp) trains the plain way: the pSp builder, the encoder's parameters, one forward.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["TRAINING_MODULES", "TrainingHooks", "register_training", "training_hooks"]


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
            objective)``: e.g. e4e's discriminator, saved with the run's state.
    """

    build: Callable[..., Any] | None = None
    architecture: Callable[[Any], dict] | None = None
    trained: Callable[[Any], Any] | None = None
    frozen: Callable[[Any], list] | None = None
    channels_last: Callable[[Any], Any] | None = None
    forward: Callable[..., Any] | None = None
    extras: Callable[..., Any] | None = None


#: The modules that register training hooks (imported on first use).
TRAINING_MODULES = ("instyle.training.e4e", "instyle.training.restyle", "instyle.training.hyperstyle",
                    "instyle.training.restyle3", "instyle.training.sfe")
_HOOKS: dict[str, TrainingHooks] = {}
_PLAIN = TrainingHooks()


def register_training(family: str, hooks: TrainingHooks) -> TrainingHooks:
    """Register ``family``'s training hooks (its training module calls this once)."""
    _HOOKS[family] = hooks
    return hooks


def training_hooks(family: str) -> TrainingHooks:
    """The hooks of ``family`` (a family without any trains the plain pSp way)."""
    for module in TRAINING_MODULES:
        importlib.import_module(module)
    return _HOOKS.get(family, _PLAIN)
