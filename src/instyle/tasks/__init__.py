"""The paper's image-to-image tasks as named presets.

Each task is one small declarative file registering a :class:`~instyle.tasks.base.Task`;
``get_task(name)`` finds it, ``list_tasks()`` lists them. See ``docs/tasks.md``.
"""

# Built-in task files register themselves on import.
from instyle.tasks import (  # noqa: E402,F401,I001
    frontalization,
    image2image,
    inpainting,
    inversion,
    seg2face,
    sketch2face,
    super_resolution,
)
from instyle.tasks.base import (
    LOSS_LAMBDAS,
    TRAINING_DEFAULTS,
    Task,
    TaskInputError,
    get_task,
    list_tasks,
    register_task,
    task_for_dataset_type,
)

__all__ = [
    "LOSS_LAMBDAS",
    "TRAINING_DEFAULTS",
    "Task",
    "TaskInputError",
    "get_task",
    "list_tasks",
    "register_task",
    "task_for_dataset_type",
]
