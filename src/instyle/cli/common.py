"""Helpers shared by CLI commands: error reporting and common options."""

from __future__ import annotations

import argparse
import sys

from instyle.utils.device import DEVICE_CHOICES


def error(msg: str) -> None:
    """Print one clear line to stderr (no traceback)."""
    print(f"instyle: error: {msg}", file=sys.stderr)


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help=f"where to run: {', '.join(DEVICE_CHOICES)} or cuda:N (default: auto = CUDA, then MPS, then CPU)",
    )
