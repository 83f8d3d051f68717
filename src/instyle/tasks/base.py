"""The task interface and registry: what a preset is and how to find one by name.

A :class:`Task` is a small frozen dataclass: channel counts, loss weights (the original's
option names), flip behaviour, metrics, and three methods that turn images into network
inputs. The trainer and inference only *read* tasks; adding a task never touches them.

Contract used by the trainer (per sample)::

    task = get_task("super_resolution")          # or get_task(name, **overrides)
    x, y = task.make_pair(photo, rng)            # input [input_nc, S, S], target [3, S, S] in [-1, 1]
    x, y = task.make_pair(photo, rng, source=src_image)   # pairs prepared on disk

and by inference (one user image -> network input)::

    x = task.prepare_inference_input(image)      # [input_nc, S, S]

Value ranges of the input tensor follow the original's transforms: photos (and photo-like
inputs: low-resolution, masked) are in ``[-1, 1]``; sketches are ``[0, 1]`` (``ToTensor``
without normalisation); label maps are one-hot ``{0, 1}`` with ``label_nc`` channels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from instyle.errors import InstyleError
from instyle.tasks.transforms.labels import labels_to_palette_image, onehot_to_labels
from instyle.utils.config import ConfigError, check_positive_int
from instyle.utils.image import pil_to_tensor

__all__ = [
    "LOSS_LAMBDAS",
    "TRAINING_DEFAULTS",
    "Task",
    "TaskInputError",
    "register_task",
    "get_task",
    "list_tasks",
    "photo_to_tensor",
    "preview_input",
]

#: Loss weight names (the original's ``--*_lambda`` options) a task may set; unset ones are 0.
LOSS_LAMBDAS = (
    "l2_lambda",
    "lpips_lambda",
    "id_lambda",
    "w_norm_lambda",
    "lpips_lambda_crop",
    "l2_lambda_crop",
    "moco_lambda",
)

#: Settings shared by all the original's published training commands (original option names).
TRAINING_DEFAULTS = MappingProxyType(
    {
        "optim_name": "ranger",
        "learning_rate": 1e-4,
        "batch_size": 8,
        "start_from_latent_avg": True,
        "encoder_type": "GradualStyleEncoder",
    }
)


class TaskInputError(InstyleError, ValueError):
    """An image cannot serve as this task's input (wrong kind, label out of range, ...)."""


def photo_to_tensor(img: Image.Image, size: int | None = 256) -> torch.Tensor:
    """PIL image -> ``[3, size, size]`` float tensor in ``[-1, 1]`` (bilinear resize if needed)."""
    return pil_to_tensor(img.convert("RGB"), size)


def _full_loss(loss: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(loss) - set(LOSS_LAMBDAS))
    if unknown:
        raise ConfigError(f"unknown loss weight(s) {unknown}; accepted: {list(LOSS_LAMBDAS)}")
    full = {k: float(loss.get(k, 0.0)) for k in LOSS_LAMBDAS}
    bad = {k: v for k, v in full.items() if not v >= 0.0}
    if bad:
        raise ConfigError(f"loss weights must be >= 0, got {bad}")
    return full


@dataclass(frozen=True)
class Task:
    """One image-to-image task of the paper (a preset).

    Attributes:
        name: registry name (``inversion``, ``sketch2face``, ...).
        description: one line for ``--help`` and docs.
        input_nc: encoder input channels.
        label_nc: the original's ``label_nc`` (0 = RGB input, 1 = sketch, N = N-class labels).
        loss: all :data:`LOSS_LAMBDAS` (missing ones 0), from the original's training command.
        flip_target_only: training flips the target (not the input) with p=0.5 (frontalization).
        hflip_pairs: training flips input and target together with p=0.5 (photos yes,
            label maps / sketches no, as the original).
        needs_source: training inputs must be given as files (``make_pair(source=...)``);
            they cannot be made from the target photo on the fly.
        metrics: default evaluation metric names.
        size: side of input and target tensors.
    """

    name: str
    description: str = ""
    input_nc: int = 3
    label_nc: int = 0
    loss: Mapping[str, float] = field(default_factory=dict)
    flip_target_only: bool = False
    hflip_pairs: bool = True
    needs_source: bool = False
    metrics: tuple[str, ...] = ("l2", "lpips")
    size: int = 256
    #: Shared fields this task lets users set as input options (see :meth:`option_names`).
    shared_options: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ConfigError(f"task name {self.name!r} must be a non-empty identifier")
        check_positive_int(f"{self.name}.input_nc", self.input_nc)
        check_positive_int(f"{self.name}.size", self.size)
        if isinstance(self.label_nc, bool) or not isinstance(self.label_nc, int) or self.label_nc < 0:
            raise ConfigError(f"{self.name}.label_nc={self.label_nc!r} must be an integer >= 0")
        if self.flip_target_only and self.hflip_pairs:
            raise ConfigError(f"{self.name}: flip_target_only and hflip_pairs exclude each other")
        object.__setattr__(self, "loss", _full_loss(self.loss))
        object.__setattr__(self, "metrics", tuple(self.metrics))

    # --- what the trainer reads -------------------------------------------------------

    def make_pair(
        self,
        photo: Image.Image,
        rng: np.random.Generator,
        source: Image.Image | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training sample from a target photo (and its prepared input file, if any).

        Args:
            photo: the target face photo (any size; resized to ``size``).
            rng: drives every random choice (flips, degradation factors, random masks).
            source: the prepared input image (sketch, label map, degraded photo); required
                when ``needs_source``, otherwise the input is made from ``photo``.

        Returns:
            ``(x, y)``: input ``[input_nc, size, size]`` and target ``[3, size, size]`` in ``[-1, 1]``.
        """
        target = photo_to_tensor(photo, self.size)
        if source is not None:
            x = self.input_from_image(source)
        elif self.needs_source:
            raise TaskInputError(f"task {self.name!r} needs prepared input files (run `instyle prepare {self.name}`)")
        else:
            x = self.make_input(photo, rng)
        if self.hflip_pairs and rng.random() < 0.5:
            x, target = x.flip(-1), target.flip(-1)
        elif self.flip_target_only and rng.random() < 0.5:
            target = target.flip(-1)
        return x, target

    # --- per-task behaviour (overridden by task files) ---------------------------------

    def make_input_image(self, photo: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        """The input image a user would give for ``photo`` (a sketch, a low-res photo...).

        Used by ``instyle prepare`` to write inputs to disk. ``rng=None`` means the
        deterministic default (e.g. a fixed super-resolution factor).
        """
        return photo.convert("RGB")

    def input_from_image(self, image: Image.Image) -> torch.Tensor:
        """An input image (as written by :meth:`make_input_image` or given by a user) -> ``[input_nc, S, S]``."""
        return photo_to_tensor(image, self.size)

    def make_input(self, photo: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Network input made on the fly from a target photo: ``[input_nc, size, size]``."""
        return self.input_from_image(self.make_input_image(photo, rng))

    def prepare_inference_input(self, image: Image.Image) -> torch.Tensor:
        """A user's input image at inference -> ``[input_nc, size, size]`` (same as training)."""
        return self.input_from_image(image)

    def preview(self, x: torch.Tensor) -> torch.Tensor:
        """One network input ``[C, S, S]`` as a picture ``[3, S, S]`` in ``[-1, 1]``: photo-like
        inputs as they are (extra channels, e.g. a mask, dropped), one channel as grey in
        ``[-1, 1]``, label maps (``label_nc > 1`` or an unusual channel count) in their palette.
        Tasks whose inputs use another range override it (sketches: ``[0, 1]``)."""
        x = x.detach().float().cpu()
        c = x.shape[0]
        if self.label_nc > 1 or c not in (1, 3, 4):
            return pil_to_tensor(labels_to_palette_image(onehot_to_labels(x)).convert("RGB"), None)
        if c == 1:
            return x.expand(3, -1, -1).clone()
        return x[:3].clone()

    def option_names(self) -> list[str]:
        """The options of how this task makes its inputs (the fields its task file adds to
        :class:`Task`, e.g. super-resolution's ``factors``): what ``instyle prepare --option``
        accepts. The shared fields (channels, loss weights, flips...) describe the task itself,
        except those a task lists in ``shared_options`` (label maps: ``label_nc``)."""
        shared = {f.name for f in dataclasses.fields(Task)} - set(self.shared_options)
        return sorted(f.name for f in dataclasses.fields(self) if f.name not in shared)

    def with_input_options(self, **options) -> Task:
        """:meth:`with_options` restricted to :meth:`option_names` (user-facing options, e.g.
        ``prepare --option``): internal fields such as ``input_nc`` are refused, not recorded."""
        allowed = self.option_names()
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(
                f"task {self.name!r} has no option(s) {unknown}; its options: "
                + (", ".join(allowed) if allowed else "none")
            )
        return self.with_options(**options)

    def with_options(self, **overrides) -> Task:
        """A copy with some fields replaced (validated), e.g. ``factors=(4,)`` for SR inference."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"task {self.name!r} has no option(s) {unknown}; options: {sorted(names)}")
        return dataclasses.replace(self, **overrides)


_REGISTRY: dict[str, Task] = {}


def register_task(task: Task, replace: bool = False) -> Task:
    """Add ``task`` to the registry under ``task.name``.

    A name already registered (a built-in such as ``super_resolution`` included) is refused
    unless ``replace=True``; then the new task wins for every later ``get_task`` /
    ``get_preset``. Registering an equal task again is a no-op.

    Raises:
        ConfigError: the name is taken by a different task and ``replace`` is False.
    """
    if not isinstance(task, Task):
        raise TypeError(f"register_task expects a Task, got {type(task).__name__}")
    old = _REGISTRY.get(task.name)
    if old is not None and old != task and not replace:
        raise ConfigError(
            f"a task named {task.name!r} is already registered ({type(old).__name__}); choose another name or "
            f"pass replace=True to replace it; registered: {sorted(_REGISTRY)}"
        )
    _REGISTRY[task.name] = task
    return task


def list_tasks() -> list[str]:
    """Names of the registered tasks, sorted (importing ``instyle.tasks``, the parent
    package of this module, has registered the built-in ones)."""
    return sorted(_REGISTRY)


def get_task(name: str, **overrides) -> Task:
    """The task registered as ``name``, optionally with some options replaced.

    Raises:
        ConfigError: unknown name (the message lists the available ones) or bad override.
    """
    task = _REGISTRY.get(name)
    if task is None:
        raise ConfigError(f"unknown task {name!r}; available tasks: {sorted(_REGISTRY)}")
    return task.with_options(**overrides) if overrides else task


#: How inputs are shown when no task describes them: by channel count.
_GENERIC = Task("generic")


def preview_input(x: torch.Tensor, task: Task | None = None) -> torch.Tensor:
    """``[C, S, S]`` network input -> ``[3, S, S]`` in ``[-1, 1]`` to look at, as ``task`` (or,
    without one or when its channel count differs, the channel count) says; the one home of
    input previews (inference, the demo and the training logger use it)."""
    if task is None or task.input_nc != x.shape[0]:
        task = _GENERIC
    return task.preview(x)
