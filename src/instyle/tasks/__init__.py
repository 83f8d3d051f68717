"""The paper's image-to-image tasks as named presets.

Each task is one small declarative file registering a :class:`~instyle.tasks.base.Task`;
``get_task(name)`` finds it, ``list_tasks()`` lists them; training builds its presets from
them (:mod:`instyle.training.presets`). See ``docs/tasks.md``.
"""

# isort: off
from instyle.tasks.base import (
    LOSS_LAMBDAS,
    TRAINING_DEFAULTS,
    Task,
    TaskInputError,
    get_task,
    list_tasks,
    preview_input,
    register_task,
)

# Built-in task files register themselves on import.
from instyle.tasks import (  # noqa: F401
    frontalization,
    image2image,
    inpainting,
    inversion,
    seg2face,
    sketch2face,
    super_resolution,
)

# isort: on

__all__ = [
    "LOSS_LAMBDAS",
    "TRAINING_DEFAULTS",
    "Task",
    "TaskInputError",
    "get_task",
    "list_tasks",
    "preview_input",
    "register_task",
]
