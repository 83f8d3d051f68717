"""Run folder layout, checkpoints and the resumable training state.

::

    RUN_DIR/
      config.json                  the TrainConfig of the run
      metrics.jsonl                one JSON line per logged train/val record
      logs/                        TensorBoard events
      checkpoints/latest/          config.json + model.safetensors (instyle format)
                                   + training_state.pt (optimizer incl. Lookahead slow
                                   weights, step, RNG states of every rank, best val, ...)
                                   + checkpoint.json (the manifest, written last)
      checkpoints/best/            the model with the lowest validation loss

The checkpoint protocol survives a crash at any point, however many times in a row:

1. a new checkpoint is written completely into a fresh hidden folder
   (``.latest.<token>.tmp``), and its manifest -- every file with its size and
   SHA-256 -- is written last (atomically), so a folder is complete exactly when its
   manifest is there and matches;
2. the current ``latest`` is renamed away (``.latest.<token>.old``), the new folder is
   renamed to ``latest``;
3. only then are the other folders of that name discarded (manifest first, so a
   half-deleted folder can never pass for a complete one).

No complete checkpoint is deleted before a newer complete one is in place. Resume
takes the complete folder with the highest step among ``latest`` and its hidden
twins, and falls back to the next one when a folder turns out corrupt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instyle.interop import CheckpointError, load_psp, save_psp
from instyle.interop.safe_load import safe_torch_load
from instyle.models.family import InversionModel
from instyle.training.state_schema import check_training_state
from instyle.utils.atomic import atomic_path, atomic_write_bytes

__all__ = [
    "MANIFEST_NAME",
    "STATE_NAME",
    "RunFolder",
    "capture_rng",
    "restore_rng",
    "write_checkpoint",
    "read_training_state",
    "read_latest_state",
]

log = logging.getLogger(__name__)

STATE_NAME = "training_state.pt"
STATE_FORMAT = "instyle-training-state"
STATE_VERSION = 1
MANIFEST_NAME = "checkpoint.json"
MANIFEST_FORMAT = "instyle-checkpoint"


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

    def candidates(self, name: str = "latest") -> list[Path]:
        """Every complete folder holding checkpoint ``name`` (the folder itself, the
        hidden copies a crash may have left, and the ``<name>.old`` of older versions),
        newest step first. Complete = its manifest matches its files' sizes (hashes are
        checked when it is read); a folder of an older version without a manifest
        counts when its model and config are there."""
        found = []
        for folder in _siblings(self.checkpoints, name):
            step = _complete_step(folder)
            if step is not None:
                found.append((step, folder.name == name, folder))
        found.sort(key=lambda t: (t[0], t[1]), reverse=True)
        return [f for _, _, f in found]

    def resumable(self) -> Path | None:
        """The newest complete ``latest`` checkpoint folder with a training state, if any."""
        for folder in self.candidates("latest"):
            if (folder / STATE_NAME).is_file():
                return folder
        return None


def _siblings(checkpoints: Path, name: str) -> list[Path]:
    if not checkpoints.is_dir():
        return []
    pattern = re.compile(rf"^(?:{re.escape(name)}|{re.escape(name)}\.old|\.{re.escape(name)}\.[^/]+\.(?:tmp|old))$")
    return sorted(p for p in checkpoints.iterdir() if pattern.match(p.name) and p.is_dir() and not p.is_symlink())


def _read_manifest(folder: Path) -> dict | None:
    try:
        doc = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("files"), dict):
        return None
    return doc


def _incomplete_reason(folder: Path) -> str:
    """Why :func:`_complete_step` refuses ``folder``: the first file that does not match its manifest."""
    manifest = _read_manifest(folder)
    if manifest is None:
        return f"no readable {MANIFEST_NAME}"
    for fname, entry in manifest["files"].items():
        try:
            size = (folder / fname).stat().st_size
        except OSError as e:
            return f"{fname}: {e.strerror or e}"
        if isinstance(entry, dict) and size != entry.get("size"):
            return f"{fname} has {size} bytes, its manifest says {entry.get('size')} (truncated or damaged)"
    return f"{MANIFEST_NAME} is malformed"


def _complete_step(folder: Path) -> int | None:
    """The step of a complete checkpoint folder, or None when it is incomplete."""
    manifest = _read_manifest(folder)
    if manifest is None:
        if (folder / MANIFEST_NAME).exists() or folder.name.startswith("."):
            return None  # a damaged manifest, or a hidden folder of this protocol without one
        try:  # a folder written before manifests existed
            step = json.loads((folder / "config.json").read_text())["metadata"]["step"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return int(step) if (folder / "model.safetensors").is_file() else None
    for fname, entry in manifest["files"].items():
        try:
            if (folder / fname).stat().st_size != int(entry["size"]):
                return None
        except (OSError, KeyError, TypeError, ValueError):
            return None
    try:
        return int(manifest["step"])
    except (KeyError, TypeError, ValueError):
        return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checkpoint(folder: Path) -> None:
    """Raise :class:`CheckpointError` unless every file named by the manifest has its
    recorded SHA-256 (folders without a manifest are not checked)."""
    manifest = _read_manifest(folder)
    if manifest is None:
        return
    for fname, entry in manifest["files"].items():
        if _sha256(folder / fname) != entry.get("sha256"):
            raise CheckpointError(f"{folder / fname}: contents do not match the checkpoint manifest (corrupt file)")


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


def _discard(folder: Path) -> None:
    """Remove a checkpoint folder, its manifest first: a crash half-way leaves a folder
    that can no longer pass for complete."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / MANIFEST_NAME)
    _fsync_dir(folder)
    shutil.rmtree(folder, ignore_errors=True)


def _write_manifest(folder: Path, name: str, step: int) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".")
    }
    doc = {"format": MANIFEST_FORMAT, "name": name, "step": int(step), "files": files}
    atomic_write_bytes(folder / MANIFEST_NAME, (json.dumps(doc, indent=2) + "\n").encode())
    _fsync_dir(folder)


def write_checkpoint(run: RunFolder, name: str, model: InversionModel, metadata: dict, state: dict | None = None) -> Path:
    """Write ``checkpoints/<name>`` (model in instyle's format, plus the training state
    when given) so that a crash at any point leaves a complete checkpoint (see the
    module docstring). ``metadata["step"]`` is the step recorded in the manifest.
    Returns the folder."""
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    target = run.checkpoint(name)
    token = f"{int(time.time() * 1e6):x}-{os.getpid()}"
    tmp = run.checkpoints / f".{name}.{token}.tmp"
    tmp.mkdir()
    save_psp(model, tmp, extra=metadata)
    if state is not None:
        full = {"format": STATE_FORMAT, "version": STATE_VERSION, **state}
        with atomic_path(tmp / STATE_NAME) as f:
            torch.save(full, f)
    _write_manifest(tmp, name, int(metadata.get("step", state.get("step", 0) if state else 0)))
    if target.exists():
        os.replace(target, run.checkpoints / f".{name}.{token}.old")
    os.replace(tmp, target)
    _fsync_dir(run.checkpoints)
    for folder in _siblings(run.checkpoints, name):
        if folder != target:
            _discard(folder)
    return target


def read_training_state(folder: Path) -> tuple[InversionModel, dict]:
    """The model and training state of a checkpoint folder (hashes verified)."""
    verify_checkpoint(folder)
    state = safe_torch_load(folder / STATE_NAME, "training state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{folder / STATE_NAME}: not an instyle training state")
    if not isinstance(state.get("version", 0), int) or state.get("version", 0) > STATE_VERSION:
        raise CheckpointError(f"{folder / STATE_NAME}: written by a newer instyle; upgrade to resume")
    check_training_state(state, folder / STATE_NAME)
    return load_psp(folder), state


def read_latest_state(run: RunFolder) -> tuple[Path, InversionModel, dict] | None:
    """The newest readable ``latest`` checkpoint of a run: ``(folder, model, state)``.

    A folder that fails verification or loading is reported and the previous complete
    one is used. None when the run has no checkpoint at all; raises
    :class:`CheckpointError` (naming every folder and why) when none is readable."""
    problems = []
    broken = [f for f in _siblings(run.checkpoints, "latest") if (f / STATE_NAME).exists() and _complete_step(f) is None]
    for folder in run.candidates("latest"):
        if not (folder / STATE_NAME).is_file():
            continue
        try:
            model, state = read_training_state(folder)
        except (CheckpointError, OSError) as e:
            log.warning("checkpoint %s is unusable (%s); trying the previous one", folder, e)
            problems.append(f"{folder}: {e}")
            continue
        for b in broken:
            if not b.name.startswith("."):  # hidden ones are a crash's leftovers, expected
                log.warning("checkpoint %s is corrupt or incomplete (%s); resuming from %s", b, _incomplete_reason(b), folder)
        return folder, model, state
    for folder in broken:
        problems.append(f"{folder}: corrupt or incomplete checkpoint ({_incomplete_reason(folder)})")
    if problems:
        raise CheckpointError("no complete checkpoint to resume from: " + "; ".join(problems))
    return None
