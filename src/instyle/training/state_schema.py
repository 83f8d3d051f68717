"""The shape of a training-state file, checked before resume uses any of it.

A malformed ``training_state.pt`` (a hand-edited or foreign file, a wrong type under a
known key) must be refused with one line naming the file and the key, not end in a
``KeyError`` traceback half-way through restoring the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from instyle.interop import CheckpointError

__all__ = ["check_training_state"]


def _is_int(v: Any, minimum: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _optional(check):
    return lambda v: v is None or check(v)


def _optimizer_ok(v: Any) -> bool:
    return (
        isinstance(v, Mapping)
        and isinstance(v.get("state"), Mapping)
        and isinstance(v.get("param_groups"), list)
        and all(isinstance(g, Mapping) and isinstance(g.get("params"), list) for g in v["param_groups"])
    )


def _rng_ok(v: Any) -> bool:
    """One ``capture_rng()`` dict per rank."""
    if not isinstance(v, list):
        return False
    for r in v:
        if not (isinstance(r, Mapping) and isinstance(r.get("torch"), torch.Tensor) and r["torch"].dtype == torch.uint8):
            return False
        numpy = r.get("numpy")
        if not (isinstance(numpy, (list, tuple)) and len(numpy) == 5 and isinstance(numpy[1], torch.Tensor)):
            return False
        python = r.get("python")
        if not (isinstance(python, (list, tuple)) and len(python) == 3 and isinstance(python[1], (list, tuple))):
            return False
        if not isinstance(r.get("cuda", []), (list, tuple)):
            return False
    return True


_FIELDS = {
    "step": (True, _is_int, "an integer >= 0"),
    "optimizer": (True, _optimizer_ok, "an optimizer state dict ({'state': {...}, 'param_groups': [...]})"),
    "scaler": (False, _optional(lambda v: isinstance(v, Mapping)), "a GradScaler state dict or null"),
    "rng": (False, _optional(_rng_ok), "a list of per-rank RNG states"),
    "best_val_loss": (
        False, _optional(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)),
        "a number or null",
    ),
    "best_step": (False, _optional(_is_int), "an integer >= 0 or null"),
    "world_size": (False, _optional(lambda v: _is_int(v, 1)), "an integer >= 1"),
    "batch_size": (False, _optional(lambda v: _is_int(v, 1)), "an integer >= 1"),
    "seed": (False, _optional(lambda v: isinstance(v, int) and not isinstance(v, bool)), "an integer"),
    "dataset_size": (False, _optional(_is_int), "an integer >= 0 or null"),
    "bad_files": (False, lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of file names"),
}


def check_training_state(state: Mapping, source: Any) -> None:
    """Raise :class:`CheckpointError` naming ``source`` and the first malformed key."""
    for key, (required, ok, expected) in _FIELDS.items():
        if key not in state:
            if required:
                raise CheckpointError(f"{source}: malformed training state: no '{key}' (expected {expected})")
            continue
        if not ok(state[key]):
            got = type(state[key]).__name__
            raise CheckpointError(f"{source}: malformed training state: '{key}' is a {got}, expected {expected}")
