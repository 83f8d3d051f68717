"""Run folder layout, checkpoints and the resumable training state.

::

    RUN_DIR/
      config.json                  the TrainConfig of the run
      metrics.jsonl                one JSON line per logged train/val record
      logs/                        TensorBoard events
      checkpoints/latest/          config.json + model.safetensors (instyle format)
                                   + training_state.pt (optimizer incl. Lookahead slow
                                   weights, step, RNG states of every rank, best val, ...)
      checkpoints/best/            the model with the lowest validation loss

A checkpoint folder is written completely under a temporary name and then swapped
in with renames, so a crash at any moment leaves a complete ``latest`` (or, in the
instant between the two renames, a complete ``latest.old`` that resume also uses).
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instyle.interop import CheckpointError, load_psp, save_psp
from instyle.interop.safe_load import safe_torch_load
from instyle.models.psp import PSP
from instyle.training.state_schema import check_training_state
from instyle.utils.atomic import atomic_path

__all__ = [
    "STATE_NAME",
    "RunFolder",
    "capture_rng",
    "restore_rng",
    "write_checkpoint",
    "read_training_state",
]

STATE_NAME = "training_state.pt"
STATE_FORMAT = "instyle-training-state"
STATE_VERSION = 1


@dataclass
class RunFolder:
    """Paths of a run folder."""

    root: Path

    def __post_init__(self):
        self.root = Path(self.root)

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / name

    def resumable(self) -> Path | None:
        """The ``latest`` checkpoint folder to resume from (or its ``.old`` twin), if any."""
        for name in ("latest", "latest.old"):
            p = self.checkpoint(name)
            if (p / STATE_NAME).is_file() and (p / "model.safetensors").is_file():
                return p
        return None


# ----------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """The states of torch (CPU and CUDA), numpy and Python RNGs of this process, as
    tensors and plain containers (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------- files


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _swap_in(tmp: Path, target: Path) -> None:
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def write_checkpoint(run: RunFolder, name: str, model: PSP, metadata: dict, state: dict | None = None) -> Path:
    """Write ``checkpoints/<name>`` (model in instyle's format, plus the training state
    when given) atomically. Returns the folder."""
    target = run.checkpoint(name)
    tmp = target.with_name(f".{name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_psp(model, tmp, extra=metadata)
    if state is not None:
        full = {"format": STATE_FORMAT, "version": STATE_VERSION, **state}
        with atomic_path(tmp / STATE_NAME) as f:
            torch.save(full, f)
    _fsync_dir(tmp)
    _swap_in(tmp, target)
    return target


def read_training_state(folder: Path) -> tuple[PSP, dict]:
    """The model and training state of a checkpoint folder."""
    state = safe_torch_load(folder / STATE_NAME, "training state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{folder / STATE_NAME}: not an instyle training state")
    if not isinstance(state.get("version", 0), int) or state.get("version", 0) > STATE_VERSION:
        raise CheckpointError(f"{folder / STATE_NAME}: written by a newer instyle; upgrade to resume")
    check_training_state(state, folder / STATE_NAME)
    return load_psp(folder), state
