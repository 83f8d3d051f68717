"""Errors raised when reading model files."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A model file cannot be used: missing, corrupt, of an unknown or unsafe format, or
    not matching the expected architecture. The message names the file."""
