"""Registries of encoder architectures and named model configurations (timm-style).

Adding an encoder is decorating its class with :func:`register_encoder`; adding a
named configuration is one entry made with :func:`register_config`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_ENCODERS: dict[str, type[nn.Module]] = {}
_CONFIGS: dict[str, Callable[[], object]] = {}


def register_encoder(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator registering an encoder under its official ``encoder_type`` name."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        _ENCODERS[name] = cls
        return cls

    return deco


def list_encoders() -> list[str]:
    return sorted(_ENCODERS)


def encoder_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``."""
    try:
        return _ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoder type {name!r}; registered: {list_encoders()}") from None


def build_encoder(config) -> nn.Module:
    """Build the encoder named by ``config.type`` from an ``EncoderConfig``."""
    return encoder_class(config.type)(config)


def register_config(name: str) -> Callable[[Callable[[], object]], Callable[[], object]]:
    """Decorator registering a function that returns a named ``PSPConfig``."""

    def deco(fn):
        _CONFIGS[name] = fn
        return fn

    return deco


def list_configs() -> list[str]:
    return sorted(_CONFIGS)


def get_config(name: str):
    """A fresh copy of the named ``PSPConfig``."""
    try:
        return _CONFIGS[name]()
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; available: {list_configs()}") from None
