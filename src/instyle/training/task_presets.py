"""What training derives from a :class:`~instyle.tasks.base.Task`: its ``TrainConfig``
overrides and the transform that makes its input (see :mod:`instyle.training.presets`).
Task files stay declarative; tasks never import training.

Data flow: without a source folder the dataset hands the (already flipped) target as the
source, and :class:`TaskInputTransform` makes the task's input from it (sketch, low-res,
masked). With prepared sources (``train_source``, from ``instyle prepare``) the transform is
off and files are read as ``source_mode`` says -- give ``val_source`` too in that case.
Frontalization: the dataset flips input and target together and the transform flips the
input alone with p=0.5, which gives the same pairs as flipping only the target; validation
pairs are not flipped at all (:meth:`TaskInputTransform.for_validation`).
"""

from __future__ import annotations

import numpy as np
import torch

from instyle.tasks.base import TRAINING_DEFAULTS, Task
from instyle.utils.image import tensor_to_pil

__all__ = ["TaskInputTransform", "preset_overrides", "transform_factory"]


class TaskInputTransform:
    """Picklable ``(source [3, S, S] in [-1, 1], torch.Generator) -> input [input_nc, S, S]``.

    Args:
        task: the task that makes the input (and says whether to flip it).
        make_input: degrade the source into the task's input (off for prepared sources).
        train: apply the training-only randomness (frontalization's input flip); the
            validation copy from :meth:`for_validation` leaves pairs unflipped, as the
            original's test transforms do.
    """

    def __init__(self, task: Task, make_input: bool = True, train: bool = True):
        self.task = task
        self.make_input = make_input
        self.train = train

    def for_validation(self) -> TaskInputTransform:
        return TaskInputTransform(self.task, self.make_input, train=False)

    def __call__(self, source: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        x = source
        if self.make_input and source.shape[0] == 3 and type(self.task).make_input_image is not Task.make_input_image:
            x = self.task.make_input(tensor_to_pil(source), rng)
        if self.train and self.task.flip_target_only and rng.random() < 0.5:
            x = x.flip(-1)
        return x


def _source_mode(task: Task) -> str:
    if task.label_nc > 1:
        return "label"
    return "gray" if task.input_nc == 1 else "rgb"


def preset_overrides(task: Task) -> dict:
    """``TrainConfig`` overrides of ``task`` (the original's option names)."""
    out = {k: v for k, v in TRAINING_DEFAULTS.items()}
    out.update(task.loss)
    out.update(
        task=task.name,
        input_nc=task.input_nc,
        label_nc=task.label_nc,
        source_mode=_source_mode(task),
        flip=bool(task.hflip_pairs or task.flip_target_only),
    )
    factors = getattr(task, "factors", None)
    if factors is not None:
        out["resize_factors"] = ",".join(str(f) for f in factors)
    return out


def transform_factory(task: Task):
    """``config -> TaskInputTransform | None`` for ``task`` (None: the source is the input)."""

    def factory(cfg):
        t = task
        if getattr(cfg, "image_size", t.size) != t.size:
            t = t.with_options(size=cfg.image_size)
        if getattr(t, "factors", None) is not None and getattr(cfg, "resize_factors", None):
            t = t.with_options(factors=tuple(int(f) for f in str(cfg.resize_factors).split(",") if f.strip()))
        prepared = bool(getattr(cfg, "train_source", None))
        makes_input = type(t).make_input_image is not Task.make_input_image
        if t.needs_source or (not t.flip_target_only and (prepared or not makes_input)):
            return None
        return TaskInputTransform(t, make_input=not prepared)

    return factory
