"""Floating-point precision of inference: names, the ``auto`` choice, autocast.

    choice = resolve_precision("auto", torch.device("cpu"))
    choice.name       # "fp32" on a CPU without AMX-BF16 / AVX512-BF16, "bf16" with one
    choice.describe() # "precision auto -> fp32 (CPU without AMX-BF16 or AVX512-BF16: ...)"
    with autocast(choice.name, "cpu"):
        ...

``fp32`` is the exact path (conformance with the original within 1e-4); ``bf16`` and
``fp16`` run the matrix products and convolutions in 16-bit under ``torch.autocast``.
``auto`` picks bf16 only where the hardware runs it natively (CUDA with bfloat16, CPUs
with AMX-BF16 or AVX512-BF16): elsewhere bfloat16 is emulated and slower than fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from instyle.utils.config import check_choice

__all__ = [
    "DTYPES",
    "NATIVE_BF16_CPU_FLAGS",
    "PRECISIONS",
    "PRECISION_CHOICES",
    "PrecisionChoice",
    "autocast",
    "cpu_bf16_features",
    "float32_under_autocast",
    "resolve_precision",
]

PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_CHOICES = (*PRECISIONS, "auto")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: ``/proc/cpuinfo`` flags of CPUs that compute bfloat16 natively.
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class PrecisionChoice:
    """What a precision request resolved to: ``name`` in :data:`PRECISIONS`, and why."""

    requested: str
    name: str
    reason: str = ""

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def describe(self) -> str:
        head = f"precision {self.requested}" + (f" -> {self.name}" if self.requested != self.name else "")
        return f"{head} ({self.reason})" if self.reason else head


def _proc_cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The first ``flags`` line of ``/proc/cpuinfo`` as a set (None where there is none)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _torch_cpu_flags() -> set[str]:
    """What PyTorch's own CPU probes report (they exist in torch >= 2.3, private API)."""
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    found = set()
    for flag, probe in probes.items():
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                found.add(flag)
        except RuntimeError:
            pass
    return found


def cpu_bf16_features(flags: Iterable[str] | None = None) -> list[str]:
    """The native-bfloat16 features of this CPU (``amx_bf16``, ``avx512_bf16``), empty for none.

    Args:
        flags: CPU flags to judge instead of this machine's (``/proc/cpuinfo`` plus PyTorch's probes).
    """
    if flags is None:
        flags = (_proc_cpu_flags() or set()) | _torch_cpu_flags()
    flags = set(flags)
    return [f for f in NATIVE_BF16_CPU_FLAGS if f in flags]


def _auto(device: torch.device, cpu_flags: Iterable[str] | None) -> PrecisionChoice:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("auto", "bf16", f"{name} computes bfloat16 natively")
        return PrecisionChoice("auto", "fp32", f"{name} has no native bfloat16")
    if device.type == "cpu":
        native = cpu_bf16_features(cpu_flags)
        if native:
            return PrecisionChoice("auto", "bf16", f"CPU with {', '.join(f.upper() for f in native)}")
        return PrecisionChoice(
            "auto", "fp32", "CPU without AMX-BF16 or AVX512-BF16: bfloat16 would be emulated and slower"
        )
    return PrecisionChoice("auto", "fp32", f"no native bfloat16 path known on {device.type}")


def resolve_precision(
    precision: str, device: str | torch.device = "cpu", cpu_flags: Iterable[str] | None = None
) -> PrecisionChoice:
    """Turn ``fp32``/``bf16``/``fp16``/``auto`` into a concrete precision for ``device``.

    Args:
        precision: one of :data:`PRECISION_CHOICES`.
        device: where the model runs.
        cpu_flags: CPU flags to judge instead of this machine's (tests).

    Raises:
        instyle.utils.config.ConfigError: an unknown name.
    """
    check_choice("precision", precision, PRECISION_CHOICES)
    if precision != "auto":
        return PrecisionChoice(precision, precision)
    return _auto(torch.device(device), cpu_flags)


def float32_under_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Suspend an active ``torch.autocast`` (compute in the inputs' own dtype) for a few small
    ops whose 16-bit rounding costs quality out of proportion to their time: StyleGAN2's style
    affines and demodulation factors, each of which scales a whole feature map. Outside
    autocast (fp32, ONNX export) it is a no-op context, so traced graphs see plain code."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to the precision's dtype; a no-op context for ``fp32``."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=DTYPES[precision])
