"""The project's exception base and the errors shared across layers (a leaf module).

Every exception instyle defines derives from :class:`InstyleError`, so a command can catch
the project's own, explained failures (bad input, bad file, bad option) and let anything
else -- a bug -- surface with its traceback. Most also keep ``ValueError`` (or
``RuntimeError``) as a second base, as callers relied on before.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "InputError", "InstyleError", "MissingExtraError"]


class InstyleError(Exception):
    """Base of every instyle error; the message says what was wrong and what is accepted."""


class InputError(InstyleError, ValueError):
    """A user-supplied input (image, latent file, direction, option value) cannot be used;
    the message names it."""


class CheckpointError(InstyleError, ValueError):
    """A model file cannot be used: missing, corrupt, of an unknown or unsafe format, or
    not matching the expected architecture. The message names the file."""


class MissingExtraError(InstyleError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""
