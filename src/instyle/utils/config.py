"""Validation helpers for the typed dataclass configs.

Every error names the bad value and what is accepted, so a wrong config fails at
the boundary rather than deep inside a model.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from typing import Any, ClassVar

from instyle.errors import InstyleError


class ConfigError(InstyleError, ValueError):
    """A configuration value is invalid; the message names it and the accepted values."""


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not accepted; choose one of {choices}")


def check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer")


def check_int_range(name: str, value: Any, minimum: int, maximum: int) -> None:
    """``value`` is an integer in ``[minimum, maximum]`` (bounds keep crafted files from
    asking for huge models)."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(f"{name}={value!r} must be an integer in [{minimum}, {maximum}]")


def check_positive_finite(name: str, value: Any, optional: bool = False) -> None:
    """``value`` is a finite number > 0 (or None when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        none = " or null" if optional else ""
        raise ConfigError(f"{name}={value!r} must be a finite number > 0{none}")


def check_power_of_two(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> None:
    check_positive_int(name, value)
    if value & (value - 1) or value < minimum or (maximum is not None and value > maximum):
        hi = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigError(f"{name}={value!r} must be a power of two >= {minimum}{hi}")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Coerce JSON-ish ``value`` to the annotated type ``tp`` (tuples, optionals, ints)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a)
            except ConfigError:
                pass  # try the next member of the union
        raise ConfigError(f"{name}={value!r} has the wrong type; expected {tp}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r} must be a list")
        inner = args[0] if args else Any
        return tuple(_coerce(name, v, inner) for v in value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r} must be a list")
        inner = args[0] if args else Any
        return [_coerce(name, v, inner) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}={value!r} must be a mapping")
        kt, vt = args if args else (Any, Any)
        return {_coerce(name, k, kt): _coerce(name, v, vt) for k, v in value.items()}
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name}={value!r} must be a mapping")
        return from_dict(tp, value, name)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{name}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{name}={value!r} must be an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r} must be a number") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} must be a string")
        return value
    return value


def to_jsonable(value: Any) -> Any:
    """A config as JSON-ready data, generically: every dataclass field (nested ones too),
    tuples as lists, mapping keys as strings -- a new field cannot be left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass a field annotation names (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


class DictConfig:
    """Generic ``to_dict`` / ``from_dict`` for a dataclass config (``config.json``'s ``config``).

    ``to_dict`` writes every field in declaration order (nested configs as mappings, tuples as
    lists; :func:`to_jsonable`), so a new field cannot be left out of the saved file.
    ``from_dict`` checks every key against the fields (an unknown key raises a
    :class:`ConfigError` naming it and the accepted ones), coerces values to the annotated
    types (nested configs included) and leaves missing keys at their defaults. ``SECTION``
    names the config in messages (``"unknown psp key(s) ..."``).

    A subclass's ``__post_init__`` calls :meth:`_nested_from_dicts` first so that
    ``Config(generator={...})`` builds (and validates) the nested config too.
    """

    SECTION: ClassVar[str] = ""

    def to_dict(self) -> dict:
        """Every field, JSON-ready."""
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, d: dict):
        """Build and validate from a mapping (see the class docstring)."""
        return from_dict(cls, d, cls.SECTION)

    def _nested_from_dicts(self) -> None:
        """Replace mappings given for nested-config fields by validated configs."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            tp = _dataclass_in(hints[f.name]) if isinstance(value, dict) else None
            if tp is not None:
                name = f"{self.SECTION}.{f.name}" if self.SECTION else f.name
                setattr(self, f.name, from_dict(tp, value, name))


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown {prefix + ' ' if prefix else ''}key(s) {unknown}; accepted keys: {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = _coerce(f"{prefix}.{k}" if prefix else k, v, hints[k])
    return cls(**kwargs)
