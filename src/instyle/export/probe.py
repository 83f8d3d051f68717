"""``--backend auto`` / ``--precision auto`` by measurement on the user's own machine.

A CPU flag does not tell which path is faster for a given model, batch size and machine
(on a Zen 4 with AVX512-BF16, PyTorch bf16 was 1.2x faster than fp32 idle, 1.3x slower under
load, slower at batch 1 and faster at batch 2 on the tiny model). So ``auto`` times each
candidate once on the model itself, at the batch size the job will use, picks the fastest
and remembers the answer::

    choice = choose(model, backend="auto", precision="auto", batch=4)
    print(choice.describe())
    # backend auto -> openvino, precision auto -> bf16 (measured at batch 4: openvino bf16
    # 0.41 s, torch fp32 1.20 s, ...; cached for this machine)

Candidates: PyTorch fp32 always (the baseline, which wins ties); 16-bit precisions only
where the hardware computes them natively (``instyle.utils.precision``: elsewhere they
are emulated and many times slower, not worth a probe); ONNX Runtime and OpenVINO when
installed and the model is on the CPU. A 16-bit candidate whose output falls below
:data:`MIN_PSNR` against fp32 is dropped. The choice is never a candidate that measured
slower than another.

The cache (``$INSTYLE_PROBE_CACHE``, default ``<instyle cache>/probe.json``) is keyed by the
machine (CPU model, its flags, thread count, torch / runtime versions, GPU name), the
model's fingerprint and the batch size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from instyle.export.backends import BACKEND_CHOICES, BACKEND_PRECISIONS, attach_backend, available_backends
from instyle.export.onnx import input_hw, model_fingerprint
from instyle.interop.loading import cache_dir
from instyle.models.family import family_of
from instyle.models.runtime import set_runtime
from instyle.utils.atomic import atomic_write_bytes
from instyle.utils.config import ConfigError, check_choice
from instyle.utils.precision import PRECISION_CHOICES, _proc_cpu_flags, cpu_bf16_features

__all__ = [
    "MIN_PSNR",
    "AutoChoice",
    "Candidate",
    "candidates",
    "choose",
    "configure",
    "machine_key",
    "probe_cache_path",
]

logger = logging.getLogger("instyle")

#: 16-bit candidates must reproduce the fp32 output to this PSNR (dB, images in [-1, 1]).
MIN_PSNR = 40.0
#: Cache file layout version (older entries are ignored).
CACHE_VERSION = 1


@dataclass(frozen=True)
class Candidate:
    backend: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"


@dataclass
class AutoChoice:
    """What ``auto`` picked: the backend, the precision, the measured seconds per batch of
    every candidate, and whether the answer came from the cache."""

    requested_backend: str
    requested_precision: str
    backend: str
    precision: str
    reason: str
    seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False

    def describe(self) -> str:
        parts = []
        if self.requested_backend == "auto":
            parts.append(f"backend auto -> {self.backend}")
        if self.requested_precision == "auto":
            parts.append(f"precision auto -> {self.precision}")
        if not parts:
            parts.append(f"backend {self.backend}, precision {self.precision}")
        return f"{', '.join(parts)} ({self.reason})"


def probe_cache_path() -> Path:
    env = os.environ.get("INSTYLE_PROBE_CACHE")
    if env:
        return Path(env).expanduser()
    return cache_dir() / "probe.json"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(device: torch.device | str = "cpu") -> dict:
    """What identifies this machine's speed: CPU model and flags, threads, library versions, GPU."""
    versions = {"torch": torch.__version__}
    for module in ("onnxruntime", "openvino"):
        with contextlib.suppress(ImportError, AttributeError):
            versions[module] = __import__(module).__version__
    flags = sorted(_proc_cpu_flags() or ())
    key = {
        "cpu": _cpu_model(),
        "cpu_flags": hashlib.sha256(" ".join(flags).encode()).hexdigest()[:16],
        "threads": torch.get_num_threads(),
        "versions": versions,
    }
    device = torch.device(device)
    if device.type == "cuda":
        key["gpu"] = torch.cuda.get_device_name(device)
    return key


def _native_16bit(device: torch.device) -> list[str]:
    """16-bit precisions worth measuring here (natively computed)."""
    if device.type == "cuda":
        return ["bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp16"]
    if device.type == "cpu":
        return ["bf16"] if cpu_bf16_features() else []
    return []


def candidates(
    backend: str, precision: str, device: torch.device | str = "cpu", installed: list[str] | None = None,
    native: list[str] | None = None,
) -> list[Candidate]:
    """The (backend, precision) pairs ``auto`` measures, PyTorch fp32 first when it is one.

    Args:
        backend: a backend or ``auto``.
        precision: a precision or ``auto``.
        device: where the model runs.
        installed: the backends to consider (default: those importable here).
        native: the 16-bit precisions computed natively (default: judged from this machine).
    """
    check_choice("backend", backend, BACKEND_CHOICES)
    check_choice("precision", precision, PRECISION_CHOICES)
    device = torch.device(device)
    installed = available_backends() if installed is None else installed
    native = _native_16bit(device) if native is None else native
    if backend == "auto":
        backends = [b for b in installed if b == "torch" or device.type == "cpu" or b == "onnxruntime"]
    else:
        backends = [backend]
    out = []
    for b in backends:
        wanted = ["fp32", *native] if precision == "auto" else [precision]
        out += [Candidate(b, p) for p in wanted if p in BACKEND_PRECISIONS[b]]
    return out


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.clamp(-1, 1) - b.clamp(-1, 1)).double().pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def apply(model: torch.nn.Module, candidate: Candidate, batch: int | None = None) -> str:
    """Make ``model`` run as ``candidate`` (PyTorch precision or an ONNX backend); returns its
    note. ``batch``: HyperStyle's fixed graph batch (the job's batch size)."""
    if candidate.backend == "torch":
        attach_backend(model, "torch")
        return set_runtime(model, candidate.precision).describe()
    set_runtime(model, "fp32")
    fixed = batch if family_of(model).fixed_batch_graphs else None
    return attach_backend(model, candidate.backend, candidate.precision, batch=fixed)


def _round_trip(model, x: torch.Tensor) -> torch.Tensor:
    out = model.encode(x)
    if isinstance(out, tuple):  # HyperStyle: (w_plus, offsets)
        return model.decode(*out)
    return model.decode(out)


def _inputs(model, batch: int) -> torch.Tensor:
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    return (torch.rand(batch, model.input_nc, *input_hw(model), generator=g) * 2 - 1).to(device)


def measure_candidate(model, candidate: Candidate, x: torch.Tensor, reps: int = 1) -> tuple[float, torch.Tensor]:
    """``(seconds per batch, output)`` of one encode + decode of ``x`` as ``candidate``
    (after one untimed warm-up call; the best of ``reps`` timed calls)."""
    apply(model, candidate, len(x))
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        out = _round_trip(model, x)
        sync()
        best = math.inf
        for _ in range(reps):
            t = time.perf_counter()
            out = _round_trip(model, x)
            sync()
            best = min(best, time.perf_counter() - t)
    return best, out.float().cpu()


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) and data.get("version") == CACHE_VERSION else {"version": CACHE_VERSION}
    except (OSError, ValueError):
        return {"version": CACHE_VERSION}


def _pick(cands: list[Candidate], seconds: dict[str, float], rejected: dict[str, str]) -> Candidate:
    """The fastest measured candidate that kept its quality; the first (fp32 baseline) wins ties."""
    usable = [c for c in cands if c.label in seconds and c.label not in rejected and math.isfinite(seconds[c.label])]
    if not usable:
        return cands[0]
    return min(usable, key=lambda c: (seconds[c.label], cands.index(c)))


def choose(
    model: torch.nn.Module,
    backend: str = "auto",
    precision: str = "auto",
    batch: int = 1,
    measure: Callable[[Candidate], tuple[float, float]] | None = None,
    cache: Path | None = None,
    log: Callable[[str], None] | None = None,
    reps: int = 1,
) -> AutoChoice:
    """Pick a backend and precision for ``model`` at ``batch`` by timing them, apply it, say why.

    Args:
        model: the loaded model (on its device).
        backend: a backend or ``auto``; precision: a precision or ``auto``.
        batch: the batch size the job will run (the probe runs at it; answers are cached per size).
        measure: ``candidate -> (seconds, PSNR dB vs fp32)`` instead of running the model
            (tests inject timings here).
        cache: the probe cache file (default :func:`probe_cache_path`).
        log: called with progress lines (the probe takes a few model calls).
        reps: timed calls per candidate after the warm-up.
    """
    device = next(model.parameters()).device
    cands = candidates(backend, precision, device)
    if not cands:
        raise ConfigError(f"backend={backend!r} does not run precision={precision!r}; see instyle.export.backends")
    if len(cands) == 1:
        note = apply(model, cands[0], batch)
        only = cands[0]
        reason = "the only candidate here"
        if precision == "auto" and only.precision == "fp32":
            reason = "no native 16-bit arithmetic here: 16-bit would be emulated and slower"
        return AutoChoice(backend, precision, only.backend, only.precision, f"{reason}; {note}")
    path = cache or probe_cache_path()
    key = hashlib.sha256(json.dumps({
        "machine": machine_key(device), "model": model_fingerprint(model), "batch": batch,
        "candidates": [c.label for c in cands],
    }, sort_keys=True).encode()).hexdigest()
    entries = _read_cache(path)
    entry = entries.get(key)
    cached = isinstance(entry, dict) and isinstance(entry.get("seconds"), dict)
    if cached:
        seconds = {k: float(v) for k, v in entry["seconds"].items()}
        rejected = dict(entry.get("rejected", {}))
    else:
        seconds, rejected = {}, {}
        x = None if measure is not None else _inputs(model, batch)
        reference = None
        for c in cands:
            if log:
                log(f"auto: timing {c.label} at batch {batch} ...")
            try:
                if measure is not None:
                    sec, quality = measure(c)
                else:
                    sec, out = measure_candidate(model, c, x, reps)
                    if reference is None:
                        reference = out  # the first candidate is PyTorch (or the backend's) fp32
                    quality = _psnr(out, reference)
            except Exception as e:  # a candidate that fails is reported, not chosen
                logger.warning("auto: %s failed: %r", c.label, e)
                rejected[c.label] = f"failed: {type(e).__name__}"
                continue
            seconds[c.label] = sec
            if c.precision != "fp32" and quality < MIN_PSNR:
                rejected[c.label] = f"PSNR {quality:.1f} dB < {MIN_PSNR:g}"
        entries[key] = {"seconds": seconds, "rejected": rejected, "batch": batch, "measured": time.time(),
                        "machine": machine_key(device)}
        try:
            atomic_write_bytes(path, (json.dumps(entries, indent=1) + "\n").encode())
        except OSError as e:  # a read-only cache costs a probe next time, nothing else
            logger.warning("auto: could not write the probe cache %s: %s", path, e)
    pick = _pick(cands, seconds, rejected)
    apply(model, pick, batch)
    timings = ", ".join(f"{label} {s:.3g} s" for label, s in sorted(seconds.items(), key=lambda kv: kv[1]))
    dropped = "".join(f"; {label} dropped ({why})" for label, why in rejected.items())
    reason = (f"measured at batch {batch}: {timings}{dropped}; "
              + ("cached for this machine" if cached else f"cached in {path}"))
    return AutoChoice(backend, precision, pick.backend, pick.precision, reason, seconds, cached)


def configure(
    model: torch.nn.Module,
    backend: str = "torch",
    precision: str = "fp32",
    compile: bool | str = False,
    batch: int = 1,
    log: Callable[[str], None] | None = None,
) -> str:
    """Apply a backend / precision / compile request to ``model`` (measuring ``auto``); returns
    what was chosen and why (also ``model.runtime.note`` for pSp-family models).

    Raises:
        instyle.utils.config.ConfigError: ``compile`` with a non-PyTorch backend, an unknown
            name, a precision the backend does not run.
    """
    if backend == "torch" and precision != "auto":
        attach_backend(model, "torch")
        return set_runtime(model, precision, compile).describe() + (", torch.compile" if compile else "")
    if compile and backend != "torch":
        raise ConfigError(f"compile={compile!r} is a PyTorch option; backend {backend!r} runs exported graphs")
    picked = choose(model, backend, precision, batch=batch, log=log)
    if compile:
        set_runtime(model, picked.precision, compile)
    note = picked.describe()
    if family_of(model).runtime:
        model.runtime.note = note
    return note + (", torch.compile" if compile else "")
