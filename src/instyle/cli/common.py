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


def add_precision_args(p: argparse.ArgumentParser) -> None:
    """``--precision`` and ``--compile`` (same spelling as ``train``'s ``precision`` key)."""
    from instyle.utils.precision import PRECISION_CHOICES

    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISION_CHOICES,
        help="fp32 (default, exact), bf16, fp16, or auto = bf16 where the hardware runs it natively "
        "(CUDA with bfloat16, CPUs with AMX-BF16/AVX512-BF16), else fp32",
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the model (the first batch of each size compiles)"
    )


def apply_precision_args(model, args: argparse.Namespace) -> None:
    """Apply ``--precision`` / ``--compile`` to a loaded model; say what ``auto`` picked (stderr)."""
    from instyle.models.runtime import set_runtime

    # Commands that call others with a hand-made Namespace (quickstart -> encode) may lack the flags.
    precision, compile = getattr(args, "precision", "fp32"), getattr(args, "compile", False)
    choice = set_runtime(model, precision, compile)
    if precision != "fp32" or compile:
        print(f"instyle: {choice.describe()}" + (", torch.compile" if compile else ""), file=sys.stderr)
