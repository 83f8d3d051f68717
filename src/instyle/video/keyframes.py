"""Edit strengths over time: constant (``age=3``) or key-framed (``age=0:0,2s:3,4s:3``).

A key is ``TIME:STRENGTH``; ``TIME`` is an output frame number (``48``) or seconds on the
output's timeline (``2s``, ``1.5s``). Between keys the strength moves linearly; before the
first and after the last key it holds. The edit's name part is read as ``instyle edit``
reads it (``NAME[:COMPONENT]``, e.g. ``ganspace:54,7,8=0:0,3s:20``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from instyle.errors import InputError

__all__ = ["MAX_KEYS", "TimedEdit", "parse_timed_edit"]

#: Most keys one edit may have.
MAX_KEYS = 1000


@dataclass(frozen=True)
class TimedEdit:
    """One edit: its name, component (GANSpace / SeFa) and ``(time, strength)`` keys, where a
    time is ``(value, unit)`` with unit ``"f"`` (frames) or ``"s"`` (seconds)."""

    name: str
    component: tuple[int, ...] | None
    keys: tuple[tuple[tuple[float, str], float], ...]
    spec: str = ""

    def strengths(self, frames: int, fps: Fraction) -> np.ndarray:
        """``[frames]`` strength of each output frame (frame ``k`` is at ``k / fps`` seconds)."""
        times = np.array([v * float(fps) if unit == "s" else v for (v, unit), _ in self.keys], dtype=np.float64)
        values = np.array([s for _, s in self.keys], dtype=np.float64)
        order = np.argsort(times, kind="stable")
        if np.any(np.diff(times[order]) == 0):
            raise InputError(f"edit {self.spec!r}: two keys fall on the same frame at {fps} fps")
        return np.interp(np.arange(frames, dtype=np.float64), times[order], values[order])


def _time(text: str, spec: str) -> tuple[float, str]:
    text = text.strip()
    try:
        if text.endswith("s"):
            value, unit = float(text[:-1]), "s"
        else:
            value, unit = float(int(text)), "f"
    except ValueError:
        raise InputError(f"edit {spec!r}: key time {text!r} is neither a frame number (48) nor seconds (2s, 1.5s)") from None
    if not np.isfinite(value) or value < 0:
        raise InputError(f"edit {spec!r}: key time {text!r} must be >= 0")
    return value, unit


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"edit {spec!r}: strength {text!r} is not a number") from None
    if not np.isfinite(value):
        raise InputError(f"edit {spec!r}: strength {text!r} must be finite")
    return value


def parse_timed_edit(spec: str) -> TimedEdit:
    """``NAME[:COMP]=STRENGTH`` or ``NAME[:COMP]=T:S,T:S,...`` -> :class:`TimedEdit`."""
    name, sep, values = spec.partition("=")
    name, _, comp = name.strip().partition(":")
    if not sep or not name or not values.strip():
        raise InputError(f"edit {spec!r}: write NAME=STRENGTH or NAME=TIME:STRENGTH,..., e.g. age=3 or age=0:0,2s:3,4s:3")
    component = None
    if comp:
        try:
            component = tuple(int(c) for c in comp.split(","))
        except ValueError:
            raise InputError(f"edit {spec!r}: the component after ':' must be integers, e.g. ganspace:54,7,8=20") from None
    parts = [p for p in values.split(",") if p.strip()]
    if len(parts) > MAX_KEYS:
        raise InputError(f"edit {spec!r}: {len(parts)} keys; at most {MAX_KEYS}")
    if len(parts) == 1 and ":" not in parts[0]:
        keys = (((0.0, "f"), _number(parts[0], spec)),)
    else:
        keys = []
        for part in parts:
            t, colon, s = part.partition(":")
            if not colon:
                raise InputError(f"edit {spec!r}: key {part!r} must be TIME:STRENGTH, e.g. 2s:3")
            keys.append((_time(t, spec), _number(s, spec)))
        keys = tuple(keys)
    return TimedEdit(name, component, keys, spec)
