"""Finding and reading the pretrained weights of the loss networks.

Nothing is ever downloaded: every network gets its weights from a file the user
names, or from torchvision's hub cache (``torch.hub.get_dir()/checkpoints``) where
a previous torchvision download left them. A missing file is a
:class:`LossWeightsError` that says where the file is expected and where to get it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from instyle.errors import CheckpointError
from instyle.interop.safe_load import safe_torch_load

__all__ = ["LossWeightsError", "hub_checkpoint_dir", "find_weights", "read_state_dict"]


class LossWeightsError(CheckpointError):
    """The weights of a loss network are missing or do not fit; the message says how to
    provide them."""


def hub_checkpoint_dir() -> Path:
    """Where torchvision keeps downloaded weights: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(path: str | os.PathLike | None, hub_names: tuple[str, ...], what: str, how_to_get: str) -> Path:
    """The weights file for a loss network.

    Args:
        path: a file the user gave (must exist), or None to search the hub cache.
        hub_names: file names torchvision uses in its cache for these weights.
        what: human name of the network, for messages.
        how_to_get: a sentence telling where the file comes from.

    Raises:
        LossWeightsError: the file is not there.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise LossWeightsError(f"{p}: no such {what} weights file. {how_to_get}")
        return p
    for name in hub_names:
        p = hub_checkpoint_dir() / name
        if p.is_file():
            return p
    looked = ", ".join(str(hub_checkpoint_dir() / n) for n in hub_names) or "nowhere"
    raise LossWeightsError(
        f"no {what} weights given and none found in torchvision's cache (looked for {looked}). "
        f"{how_to_get} Nothing is downloaded automatically."
    )


def read_state_dict(path: str | os.PathLike, what: str, unwrap: tuple[str, ...] = ("state_dict",)) -> dict:
    """Read a plain ``{name: tensor}`` dict from a PyTorch file without executing code.

    A dict wrapping the state dict under one of ``unwrap`` keys is unwrapped.
    """
    obj = safe_torch_load(path, f"{what} weights")
    for key in unwrap:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LossWeightsError(f"{path}: expected a state dict (name -> tensor) of {what} weights")
    return dict(obj)
