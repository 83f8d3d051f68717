"""Training presets: a task's recipe (config overrides) and its input transform.

Tasks register presets; the trainer only reads them::

    from instyle.training.presets import TrainPreset, register_preset

    register_preset(TrainPreset(
        name="super_resolution",
        overrides={"lpips_lambda": 0.8, "l2_lambda": 1.0, "id_lambda": 0.1, "resize_factors": "1,2,4,8,16,32"},
        input_transform=lambda cfg: BilinearDownUp(cfg.resize_factors),   # an InputTransform or None
        description="low-resolution face -> face",
    ))

``get_preset`` imports :mod:`instyle.tasks` (when that package exists) so its
registrations are visible; a built-in ``inversion`` preset (the original FFHQ
encoding recipe) is always available unless a task package replaces it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from instyle.data.transforms import InputTransform
from instyle.utils.config import ConfigError

__all__ = ["TrainPreset", "register_preset", "get_preset", "list_presets"]


@dataclass(frozen=True)
class TrainPreset:
    """A named training recipe.

    Attributes:
        name: ``--preset`` name (also stored as the model's ``task``).
        overrides: ``TrainConfig`` fields this recipe sets.
        input_transform: factory ``config -> InputTransform | None`` making the encoder
            input from the source image (degradations etc.); None: the source as is.
        description: one line for ``--help`` / listings.
    """

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    input_transform: Callable[[Any], InputTransform | None] | None = None
    description: str = ""

    def make_input_transform(self, config) -> InputTransform | None:
        return self.input_transform(config) if self.input_transform is not None else None


_PRESETS: dict[str, TrainPreset] = {}

#: The original's FFHQ inversion recipe (``scripts/train.py --dataset_type=ffhq_encode``).
INVERSION = TrainPreset(
    name="inversion",
    overrides={
        "task": "inversion",
        "encoder_type": "GradualStyleEncoder",
        "start_from_latent_avg": True,
        "lpips_lambda": 0.8,
        "l2_lambda": 1.0,
        "id_lambda": 0.1,
        "w_norm_lambda": 0.0,
        "source_mode": "rgb",
        "input_nc": 3,
        "flip": True,
    },
    description="face photo -> the same face (FFHQ encoding recipe of the paper)",
)


#: e4e's FFHQ recipe (omertov/encoder4editing README training command).
E4E_INVERSION = TrainPreset(
    name="e4e_inversion",
    overrides={
        **INVERSION.overrides,
        "family": "e4e",
        "encoder_type": "Encoder4Editing",
        "id_lambda": 0.5,
        "w_discriminator_lambda": 0.1,
        "use_w_pool": True,
        "progressive_start": 20000,
        "progressive_step_every": 2000,
        "delta_norm_lambda": 2e-4,
        "batch_size": 8,
        "test_batch_size": 4,
        "val_interval": 10000,
        "max_steps": 200000,
    },
    description="face photo -> the same face with e4e (discriminator, progressive offsets; e4e README recipe)",
)

#: ReStyle-pSp's FFHQ recipe (yuval-alaluf/restyle-encoder README ``train_restyle_psp.py`` command).
RESTYLE_INVERSION = TrainPreset(
    name="restyle_inversion",
    overrides={
        **INVERSION.overrides,
        "family": "restyle",
        "encoder_type": "BackboneEncoder",
        "n_iters_per_batch": 5,
        "batch_size": 8,
        "test_batch_size": 8,
        "val_interval": 5000,
        "save_interval": 10000,
    },
    description="face photo -> the same face with ReStyle-pSp (5 refinement steps per batch; ReStyle README recipe)",
)


def register_preset(preset: TrainPreset) -> TrainPreset:
    """Add (or replace) a preset by name."""
    if not preset.name or not isinstance(preset.name, str):
        raise ValueError(f"preset name must be a non-empty string, got {preset.name!r}")
    _PRESETS[preset.name] = preset
    return preset


def _load_task_presets() -> None:
    try:
        importlib.import_module("instyle.tasks")
    except ModuleNotFoundError as e:
        if e.name not in ("instyle.tasks",):
            raise
    for preset in (INVERSION, E4E_INVERSION, RESTYLE_INVERSION):
        _PRESETS.setdefault(preset.name, preset)


def list_presets() -> list[str]:
    _load_task_presets()
    return sorted(_PRESETS)


def get_preset(name: str) -> TrainPreset:
    """The preset called ``name`` (raises :class:`ConfigError` listing the known ones)."""
    _load_task_presets()
    try:
        return _PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; available: {sorted(_PRESETS)}") from None
