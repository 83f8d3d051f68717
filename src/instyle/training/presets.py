"""Training presets: a task's recipe (config overrides) and its input transform.

A preset is built on demand from the task of the same name (:mod:`instyle.tasks`), so there
is one registry -- the tasks'. Training imports tasks, never the reverse::

    from instyle.training.presets import get_preset

    preset = get_preset("super_resolution")          # from get_task("super_resolution")
    cfg = TrainConfig.from_dict({**preset.overrides, ...})
    transform = preset.make_input_transform(cfg)     # an InputTransform or None

A new preset is a new task: ``instyle.tasks.register_task(Task(name=..., ...))``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from instyle.data.transforms import InputTransform
from instyle.tasks import Task, get_task, list_tasks
from instyle.training.restyle3 import RESTYLE3_RECIPES
from instyle.training.sfe import SFE_RECIPES
from instyle.training.task_presets import preset_overrides, transform_factory

__all__ = ["TrainPreset", "get_preset", "list_presets", "preset_from_task"]


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


def preset_from_task(task: Task) -> TrainPreset:
    """The training recipe of ``task``: its ``TrainConfig`` overrides and input transform."""
    return TrainPreset(
        name=task.name,
        overrides=preset_overrides(task),
        input_transform=transform_factory(task),
        description=task.description,
    )


#: The successors' recipes on top of a task's (``name: (task, overrides, description)``).
FAMILY_RECIPES: dict[str, tuple[str, dict[str, Any], str]] = {
    # e4e's FFHQ recipe (omertov/encoder4editing README training command)
    "e4e_inversion": (
        "inversion",
        {
            "family": "e4e", "encoder_type": "Encoder4Editing", "id_lambda": 0.5, "w_discriminator_lambda": 0.1,
            "use_w_pool": True, "progressive_start": 20000, "progressive_step_every": 2000,
            "delta_norm_lambda": 2e-4, "batch_size": 8, "test_batch_size": 4, "val_interval": 10000,
            "max_steps": 200000,
        },
        "face photo -> the same face with e4e (discriminator, progressive offsets; e4e README recipe)",
    ),
    # ReStyle-pSp's FFHQ recipe (yuval-alaluf/restyle-encoder README train_restyle_psp.py command)
    "restyle_inversion": (
        "inversion",
        {
            "family": "restyle", "encoder_type": "BackboneEncoder", "n_iters_per_batch": 5, "batch_size": 8,
            "test_batch_size": 8, "val_interval": 5000, "save_interval": 10000,
        },
        "face photo -> the same face with ReStyle-pSp (5 refinement steps per batch; ReStyle README recipe)",
    ),
    **SFE_RECIPES,  # StyleFeatureEditor's two phases (instyle.training.sfe)
}

FAMILY_RECIPES.update(RESTYLE3_RECIPES)  # ReStyle over StyleGAN3 (stylegan3-editing)


def list_presets() -> list[str]:
    """Names of the presets: the registered tasks, then the successors' recipes."""
    return list_tasks() + sorted(FAMILY_RECIPES)


def get_preset(name: str) -> TrainPreset:
    """The preset of the task called ``name``, or one of :data:`FAMILY_RECIPES` (raises
    :class:`ConfigError` listing the known tasks)."""
    if name in FAMILY_RECIPES:
        task_name, extra, description = FAMILY_RECIPES[name]
        base = preset_from_task(get_task(task_name))
        return TrainPreset(name, {**base.overrides, **extra}, base.input_transform, description)
    return preset_from_task(get_task(name))
