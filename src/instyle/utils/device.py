"""Device selection without hard-coding CUDA."""

from __future__ import annotations

import torch

from instyle.utils.config import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: Where every loader (``instyle.load``, ``load_generator``, ``from_pretrained``) puts a model
#: unless told otherwise; each also accepts ``"auto"``.
DEFAULT_DEVICE = "cpu"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an unavailable explicit choice is an error."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = name.split(":")[0]
    if base not in DEVICE_CHOICES:
        raise ConfigError(f"device={device!r} is not accepted; choose one of {DEVICE_CHOICES} (or cuda:N)")
    if base == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but CUDA is not available on this machine; use --device cpu")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' was requested but MPS is not available on this machine; use --device cpu")
    return torch.device(name)
