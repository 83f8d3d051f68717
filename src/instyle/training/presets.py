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


def list_presets() -> list[str]:
    """Names of the presets: the registered tasks."""
    return list_tasks()


def get_preset(name: str) -> TrainPreset:
    """The preset of the task called ``name`` (raises :class:`ConfigError` listing the known ones)."""
    return preset_from_task(get_task(name))
