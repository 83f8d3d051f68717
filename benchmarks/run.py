"""Reference ops vs fast paths, side by side, in one table.

    python benchmarks/run.py            # CPU: 256 and 1024 output, batch 1 and 8 (+ GPU rows when CUDA is there)
    python benchmarks/run.py --quick    # smoke run: 256-px model, batch 1 and 2, one repetition
    python benchmarks/run.py --configs "" --train psp_256   # training step: the original loop vs instyle's
    python benchmarks/run.py --configs psp_ffhq_1024 --batches 1 --variants reference --precisions bf16  # CPU bf16
    python benchmarks/run.py backends [--batches 1,8 --threads 1,2 ...]  # PyTorch / ONNX Runtime / OpenVINO (backends.py)

Every CPU row times the plain reference path (``INSTYLE_OPS=reference``, default glibc
allocator) and the fast path (fast ops + :func:`instyle.ops.fast_memory.retain_freed_memory`)
**interleaved**: each repetition runs reference then fast, and the table reports medians,
so background load hits both alike. FLOPs are counted once per model part on the
reference path with ``torch.utils.flop_counter.FlopCounterMode`` (the useful work; a fast
path that does extra arithmetic gets no credit for it). "% peak" compares with a 4096^2
float32 matmul measured in the same run. Peak RSS is the process's resident high-water
mark during that row (weights included), reset before each row where Linux allows it.

Models have seeded random weights of the published sizes (``random_psp``): IR-SE-50 FPN
encoder at 256 px input, config-f generator at 256 or 1024 px output.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from instyle.models import get_config
from instyle.models.init import random_psp
from instyle.ops import use_backend
from instyle.ops.fast_memory import retain_freed_memory, retained_memory

PARTS = ("encoder", "generator", "pSp")


# --------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (Linux ``clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Resident high-water mark of this process in MiB (since the last reset on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 4096, reps: int = 3) -> float:
    """Median GFLOP/s of an ``n x n`` matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def count_flops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


@dataclass
class Variant:
    """One way of running the same model: ops backend + allocator policy."""

    name: str
    backend: str
    retain_memory: bool

    def context(self):
        stack = contextlib.ExitStack()
        stack.enter_context(use_backend(self.backend))
        stack.enter_context(retained_memory(self.retain_memory))
        return stack


VARIANTS = {
    "reference": Variant("reference", "reference", False),
    "fast": Variant("fast", "auto", True),
    # Decompositions of the gain, for the docs (``--variants reference,reference+mem,fast-mem,fast``).
    "reference+mem": Variant("reference+mem", "reference", True),
    "fast-mem": Variant("fast-mem", "auto", False),
}


@dataclass
class Row:
    config: str
    part: str
    device: str
    dtype: str
    batch: int
    variant: str
    seconds: float  # median per batch
    gflop_per_image: float
    peak_rss: float | None = None
    speedup: float | None = None
    note: str = ""

    @property
    def ms_per_image(self) -> float:
        return self.seconds / self.batch * 1e3

    @property
    def images_per_s(self) -> float:
        return self.batch / self.seconds

    def gflops(self) -> float:
        return self.gflop_per_image * self.images_per_s


# --------------------------------------------------------------------------- CPU rows


def cpu_rows(config_name: str, batches: list[int], reps: int, variants: list[Variant]) -> list[Row]:
    model = random_psp(get_config(config_name), seed=0, latent_samples=1024)
    size = model.input_size
    with torch.no_grad(), use_backend("reference"):
        x1 = torch.randn(1, model.input_nc, size, size)
        w1 = model.encode(x1)
        gflop = {
            "encoder": count_flops(lambda: model.encode(x1)) / 1e9,
            "generator": count_flops(lambda: model.decode(w1)) / 1e9,
        }
    gflop["pSp"] = gflop["encoder"] + gflop["generator"]

    rows: list[Row] = []
    with torch.no_grad():  # warm-up: oneDNN primitive caches, the weight-energy cache
        for v in variants:
            with v.context():
                model.decode(model.encode(x1))
    for batch in batches:
        x = torch.randn(batch, model.input_nc, size, size, generator=torch.Generator().manual_seed(batch))
        times = {v.name: {p: [] for p in PARTS} for v in variants}
        rss: dict[str, float | None] = {}
        with torch.no_grad():
            for rep in range(reps):
                for v in variants:
                    if rep == 0:  # the first repetition also records the peak RSS
                        retain_freed_memory(False)
                        can_reset = reset_peak_rss()
                    with v.context():
                        t0 = time.perf_counter()
                        w = model.encode(x)
                        t1 = time.perf_counter()
                        model.decode(w)
                        t2 = time.perf_counter()
                    if rep == 0:
                        rss[v.name] = peak_rss_mib() if can_reset else None
                    times[v.name]["encoder"].append(t1 - t0)
                    times[v.name]["generator"].append(t2 - t1)
                    times[v.name]["pSp"].append(t2 - t0)
        for part in PARTS:
            ref = statistics.median(times[variants[0].name][part])
            for v in variants:
                sec = statistics.median(times[v.name][part])
                rows.append(
                    Row(
                        config_name, part, "cpu", "float32", batch, v.name, sec, gflop[part],
                        peak_rss=rss[v.name] if part == "pSp" else None, speedup=ref / sec,
                    )
                )
        print(f"  measured {config_name} batch {batch}", file=sys.stderr, flush=True)
    retain_freed_memory(False)
    return rows


# --------------------------------------------------------------------------- precision rows (CPU and GPU)


def psnr(a: torch.Tensor, b: torch.Tensor, peak_to_peak: float = 2.0) -> float:
    """PSNR in dB of ``a`` against ``b`` for images in [-1, 1]."""
    mse = (a.float() - b.float()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(peak_to_peak**2 / mse)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def reset_peak(device: torch.device) -> bool:
    """Start a peak-memory measurement: GPU allocator peak on CUDA, resident set on CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return reset_peak_rss()


def read_peak(device: torch.device, ok: bool = True) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib() if ok else None


DTYPE_LABELS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def precision_rows(
    config_name: str, batches: list[int], reps: int, device: torch.device, precisions=("bf16",),
    compile: bool | str = False, latency: bool = False,
) -> list[Row]:
    """The user-facing precision options (:func:`instyle.models.runtime.set_runtime`) on one
    device: the float32 reference path as the baseline, the fast path in float32, then each
    16-bit precision eager and, with ``compile`` (True or a ``torch.compile`` mode), compiled. Per ``batch``: throughput, peak
    memory, PSNR against the float32 fast output; with ``latency`` also batch-1 rows.
    The time of the first (compiling) call is in the note. Runs on CPU as on CUDA."""
    from instyle.models.runtime import set_runtime

    model = random_psp(get_config(config_name), seed=0, latent_samples=1024).to(device)
    size = model.input_size
    with torch.no_grad(), use_backend("reference"):
        x1 = torch.randn(1, model.input_nc, size, size, device=device)
        gflop = count_flops(lambda: model.decode(model.encode(x1))) / 1e9
    name = device_name(device)

    def full(inp):
        out = model.decode(model.encode(inp))
        sync(device)
        return out

    def timed(inp) -> tuple[float, float | None]:
        """(median seconds, peak MiB) of ``full(inp)``, after one untimed call."""
        full(inp)
        ok = reset_peak(device)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            full(inp)
            ts.append(time.perf_counter() - t)
        return statistics.median(ts), read_peak(device, ok)

    variants = [("fp32", False)] + [(p, False) for p in precisions] + [(p, compile) for p in precisions if compile]
    rows: list[Row] = []
    for batch in batches:
        gen = torch.Generator().manual_seed(batch)
        xb = torch.randn(batch, model.input_nc, size, size, generator=gen).to(device)
        with torch.no_grad():
            try:
                with use_backend("reference"):
                    base, mem = timed(xb)
            except Exception as e:  # e.g. out of memory: no baseline, no rows for this batch
                rows.append(Row(config_name, "pSp", name, "float32", batch, "reference", math.nan, gflop,
                                note=f"failed: {e!r}"[:80]))
                continue
            rows.append(Row(config_name, "pSp", name, "float32", batch, "reference", base, gflop, mem, 1.0))
            with use_backend("auto"):
                ref_out = full(xb).clamp(-1, 1)
                for precision, compiled in variants:
                    try:
                        rows += _variant_rows(model, full, timed, xb, ref_out, precision, compiled, latency, base,
                                              (config_name, "pSp", name, DTYPE_LABELS[precision]), gflop)
                    except Exception as e:  # report in the table, keep the other rows
                        variant = _variant_name(compiled)
                        rows.append(Row(config_name, "pSp", name, DTYPE_LABELS[precision], batch, variant, math.nan,
                                        gflop, note=f"failed: {e!r}"[:80]))
                    finally:
                        set_runtime(model, "fp32")
        print(f"  measured precisions {config_name} batch {batch} on {name}", file=sys.stderr, flush=True)
    return rows


def _variant_name(compiled: bool | str) -> str:
    if not compiled:
        return "fast"
    return "fast+compile" if compiled is True else f"fast+compile:{compiled}"


def _variant_rows(model, full, timed, xb, ref_out, precision, compiled, latency, base, head, gflop) -> list[Row]:
    """Throughput (and latency) rows of one precision / compile setting."""
    from instyle.models.runtime import set_runtime

    set_runtime(model, precision, compiled)
    t = time.perf_counter()
    out = full(xb)  # compiles when asked
    first = time.perf_counter() - t
    quality = psnr(out.clamp(-1, 1), ref_out)
    sec, mem = timed(xb)
    notes = [] if math.isinf(quality) else [f"PSNR {quality:.1f} dB vs fp32"]
    if compiled:
        notes.append(f"1st call {first:.1f} s")
    variant = _variant_name(compiled)
    rows = [Row(*head, len(xb), variant, sec, gflop, mem, base / sec, ", ".join(notes))]
    if latency and len(xb) > 1:
        lat, _ = timed(xb[:1])
        rows.append(Row(*head, 1, variant, lat, gflop, None, None, "latency"))
    return rows


# --------------------------------------------------------------------------- training rows


def _loss_networks_grad(objective, on: bool) -> None:
    """What the original training loop leaves on: gradients of the ArcFace network's
    weights (its ``IDLoss`` never freezes them). LPIPS was frozen there too."""
    if objective.identity is not None:
        objective.identity.facenet.requires_grad_(on)


def train_rows(
    config_name: str, batch: int, reps: int, device: torch.device, precisions: tuple[str, ...] | None = None
) -> list[Row]:
    """One pSp training step (forward, L2 + LPIPS + ID loss, backward, Ranger update),
    ``batch`` images, the original's loop against instyle's, interleaved.

    * ``original loop``: reference ops, float32, and the work the original does but never
      uses -- weight gradients of the frozen decoder and of the ArcFace network.
    * ``instyle``: fast ops, decoder and loss networks frozen (``prepare_for_training``);
      on CUDA also bfloat16 autocast with a channels-last encoder.
    * ``precisions`` (e.g. ``("fp32", "bf16")``): one instyle row per precision
      (``instyle fp32``, ...) instead of the single ``instyle`` row.

    GFLOP are those of the instyle step on the reference path (the useful work).
    """
    from instyle.losses import Objective, ObjectiveConfig
    from instyle.training import TrainConfig, build_optimizer, prepare_for_training, train_step
    from instyle.training.step import Precision

    model = random_psp(get_config(config_name), seed=0, latent_samples=1024).to(device).train()
    out_size = model.config.resize_to
    with_id = out_size == 256  # the ArcFace crop is defined on 256x256 outputs (tiny configs go without)
    objective = Objective(  # builds seeded random LPIPS / ArcFace networks of the real sizes
        ObjectiveConfig(id_lambda=0.1 if with_id else 0.0, l2_lambda=1.0, lpips_lambda=0.8,
                        start_from_latent_avg=True, random_loss_networks=True)
    ).to(device)
    optimizer = build_optimizer(prepare_for_training(model, TrainConfig(optim_name="ranger")), "ranger", 1e-4)
    gen = torch.Generator().manual_seed(batch)
    size = model.input_size
    x = (torch.rand(batch, model.input_nc, size, size, generator=gen) * 2 - 1).to(device)
    y = (torch.rand(batch, 3, out_size, out_size, generator=gen) * 2 - 1).to(device)
    fp32 = Precision("fp32", device.type)
    if precisions is None:
        named = {"instyle": Precision("bf16" if device.type == "cuda" else "fp32", device.type)}
    else:
        named = {f"instyle {p}": Precision(p, device.type) for p in precisions}

    @contextlib.contextmanager
    def original_loop():
        model.decoder.requires_grad_(True)
        _loss_networks_grad(objective, True)
        try:
            with use_backend("reference"):
                yield fp32
        finally:
            model.decoder.requires_grad_(False)
            _loss_networks_grad(objective, False)
            for p in model.decoder.parameters():
                p.grad = None

    @contextlib.contextmanager
    def instyle_loop(precision):
        fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        model.encoder.to(memory_format=fmt)
        try:
            with use_backend("auto"):
                yield precision
        finally:
            model.encoder.to(memory_format=torch.contiguous_format)

    loops = {"original loop": original_loop}
    loops.update({name: functools.partial(instyle_loop, p) for name, p in named.items()})

    def step(precision):
        train_step(model, objective, optimizer, model.latent_avg, x, y, True, precision)
        sync(device)

    with use_backend("reference"):
        gflop = count_flops(lambda: step(fp32)) / 1e9 / batch
    for loop in loops.values():  # warm-up
        with loop() as precision:
            step(precision)
    times, peak = _time_interleaved(loops, step, reps, device)
    dev_name = device_name(device)
    base = statistics.median(times["original loop"])
    rows = []
    for name in loops:
        sec = statistics.median(times[name])
        dtype = "float32" if name == "original loop" else DTYPE_LABELS[named[name].name]
        rows.append(Row(config_name, "train step", dev_name, dtype, batch, name, sec, gflop, peak[name], base / sec))
    print(f"  measured training {config_name} batch {batch} on {dev_name}", file=sys.stderr, flush=True)
    return rows


def _time_interleaved(loops: dict, step, reps: int, device: torch.device) -> tuple[dict, dict]:
    """Seconds per ``step`` under each loop context, loops alternating within each
    repetition; the first repetition also records each loop's peak memory."""
    times: dict[str, list[float]] = {name: [] for name in loops}
    peak: dict[str, float | None] = {}
    for rep in range(reps):
        for name, loop in loops.items():
            with loop() as precision:
                ok = reset_peak(device) if rep == 0 else False
                t = time.perf_counter()
                step(precision)
                times[name].append(time.perf_counter() - t)
                if rep == 0:
                    peak[name] = read_peak(device, ok)
    return times, peak


# --------------------------------------------------------------------------- table


def print_table(rows: list[Row], peak: dict[str, float]) -> None:
    head = ["model config", "part", "device", "dtype", "batch", "path", "images/s", "ms/image", "GFLOP/s",
            "% peak", "speed-up", "peak MiB", "note"]
    lines = []
    for r in rows:
        ok = math.isfinite(r.seconds)
        gf = r.gflops() if ok else math.nan
        pk = peak.get((r.device, "float32" if r.dtype == "float32" else "16-bit"))
        lines.append([
            r.config, r.part, r.device, r.dtype, str(r.batch), r.variant,
            f"{r.images_per_s:.2f}" if ok else "-",
            f"{r.ms_per_image:.0f}" if ok else "-",
            f"{gf:.0f}" if ok else "-",
            f"{100 * gf / pk:.0f}%" if ok and pk else "-",
            f"{r.speedup:.2f}x" if r.speedup else "-",
            f"{r.peak_rss:.0f}" if r.peak_rss else "-",
            r.note,
        ])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*head))
    print("-+-".join("-" * w for w in widths))
    for line in lines:
        print(fmt.format(*line))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["backends"]:  # backend x precision x threads x batch rows: benchmarks/backends.py
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from backends import main as backends_main

        return backends_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 256-px model, batch 1 and 2, one repetition")
    parser.add_argument("--configs", default="psp_256,psp_ffhq_1024", help="comma-separated registered pSp configs")
    parser.add_argument("--batches", default="1,8", help="comma-separated CPU batch sizes")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per path (median reported)")
    parser.add_argument("--variants", default="reference,fast", help=f"paths to compare, first is the baseline; of {list(VARIANTS)}")
    parser.add_argument("--gpu-batch", type=int, default=32, help="batch size of the GPU throughput rows")
    parser.add_argument("--precisions", default="", metavar="P[,P]",
                        help="also CPU rows of these precisions (bf16, fp16) through the user option, with PSNR vs fp32")
    parser.add_argument("--compile", action="store_true", help="with --precisions: also compiled rows (CPU)")
    parser.add_argument("--no-gpu", action="store_true", help="skip GPU rows even when CUDA is available")
    parser.add_argument("--train", default="", metavar="CONFIG[,CONFIG]",
                        help="also time training steps of these configs: the original loop vs instyle's "
                             "(e.g. psp_256; CPU at --train-batch, GPU at --gpu-train-batch)")
    parser.add_argument("--train-batch", type=int, default=2, help="CPU batch size of the training rows")
    parser.add_argument("--gpu-train-batch", type=int, default=8, help="GPU batch size of the training rows")
    args = parser.parse_args(argv)

    configs = [c for c in args.configs.split(",") if c]
    batches = [int(b) for b in args.batches.split(",") if b]
    reps = args.reps
    if args.quick:
        configs, batches, reps = ["psp_256"], [1, 2], 1
    try:
        variants = [VARIANTS[v] for v in args.variants.split(",") if v]
    except KeyError as e:
        parser.error(f"unknown variant {e}; accepted: {', '.join(VARIANTS)}")
    precisions = [p for p in args.precisions.split(",") if p]
    if any(p not in DTYPE_LABELS for p in precisions):
        parser.error(f"--precisions={args.precisions!r}: accepted are {', '.join(DTYPE_LABELS)}")

    torch.manual_seed(0)
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    cpu = torch.device("cpu")
    mm_reps = 1 if args.quick else 3
    peak_runs = [matmul_peak(cpu, reps=mm_reps)]
    rows: list[Row] = []
    for config in configs:
        rows += cpu_rows(config, batches, reps, variants)
        if precisions:
            rows += precision_rows(config, batches, reps, cpu, precisions, compile=args.compile)
    train_configs = [c for c in args.train.split(",") if c]
    for config in train_configs:
        rows += train_rows(config, args.train_batch, reps, cpu)
    peak_runs.append(matmul_peak(cpu, reps=mm_reps))  # again after the rows: load may have changed
    peak = {("cpu", "float32"): max(peak_runs)}
    gpu_names = []
    if torch.cuda.is_available() and not args.no_gpu:
        dev = torch.device("cuda")
        name = torch.cuda.get_device_name(dev)
        gpu_names.append(name)
        peak[(name, "float32")] = matmul_peak(dev, torch.float32, reps=5)
        peak[(name, "16-bit")] = matmul_peak(dev, torch.bfloat16, reps=5)
        for config in configs:
            try:
                rows += precision_rows(config, [args.gpu_batch], max(reps, 5), dev, ("bf16", "fp16"), compile=True,
                                       latency=True)
            except Exception as e:
                print(f"GPU rows for {config} failed: {e!r}", file=sys.stderr)
        for config in train_configs:
            try:
                rows += train_rows(config, args.gpu_train_batch, max(reps, 5), dev)
            except Exception as e:
                print(f"GPU training rows for {config} failed: {e!r}", file=sys.stderr)
    load1 = os.getloadavg() if hasattr(os, "getloadavg") else None

    print(f"instyle benchmark: torch {torch.__version__}, CPU {platform.processor() or platform.machine()} "
          f"with {torch.get_num_threads()} threads, 4096^2 float32 matmul {peak[('cpu', 'float32')]:.0f} GFLOP/s "
          f"(runs: {', '.join(f'{p:.0f}' for p in peak_runs)})")
    for name in gpu_names:
        print(f"GPU {name}: 4096^2 matmul float32 {peak[(name, 'float32')]:.0f}, "
              f"bfloat16 {peak[(name, '16-bit')]:.0f} GFLOP/s")
    if load0 and load1:
        print(f"load average (1 min): {load0[0]:.2f} at start, {load1[0]:.2f} at end; paths alternate, "
              f"medians of {reps} repetitions; GFLOP counted on the reference path")
    print_table(rows, peak)
    return 0


if __name__ == "__main__":
    sys.exit(main())
