"""PyTorch, ONNX Runtime and OpenVINO side by side: backend x precision x threads x batch.

    python benchmarks/backends.py                  # psp_ffhq_1024, batch 1 and 8, 1 and 2 threads
    python benchmarks/backends.py --tiny           # dry run in seconds: tiny config, batch 1 and 2, 1 thread
    python benchmarks/backends.py --config psp_256 --batches 1 --threads 2 --parts generator,pSp

The model has seeded random weights of the config's size (``random_psp``). It is exported
once (``instyle.export.export_onnx``, parity-checked) into a temporary folder; every row then
times the same inputs on one backend and precision:

* ``torch fp32``: instyle's fast path (the baseline of the speed-up column);
* ``torch bf16`` / ``fp16``: the user option (autocast);
* ``onnxruntime fp32``: the exported graph on ONNX Runtime's CPU provider;
* ``openvino fp32`` / ``bf16`` / ``fp16``: the graph on OpenVINO's CPU plugin with that
  ``INFERENCE_PRECISION_HINT`` (16-bit where the CPU computes it natively, else it stays fp32);
  in 16 bits only the convolutions, as instyle runs it (``instyle.export.openvino_precision``);
* ``openvino bf16-all`` / ``fp16-all``: the plain hint, every operation in 16 bits.

Rows of one (part, threads, batch) alternate within each repetition (medians reported), so
background load hits them alike. GFLOP are counted once per part on PyTorch's reference path;
"% peak" compares with a 4096^2 float32 matmul measured at the same thread count in the same
run (before and after the rows; the larger is used). Peak MiB is the process's resident
high-water mark during the row's first call (reset before it where Linux allows; all
backends' copies of the weights are resident). "max |diff|" and PSNR compare with torch fp32.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import count_flops, matmul_peak, peak_rss_mib, reset_peak_rss  # noqa: E402

from instyle.export.backends import GraphSession, available_backends  # noqa: E402
from instyle.export.onnx import ExportError, export_onnx, input_hw, model_fingerprint, read_export  # noqa: E402
from instyle.export.probe import machine_key  # noqa: E402
from instyle.models import get_config  # noqa: E402
from instyle.models.init import random_psp  # noqa: E402
from instyle.models.runtime import set_runtime  # noqa: E402
from instyle.ops import use_backend  # noqa: E402
from instyle.ops.fast_memory import retain_freed_memory  # noqa: E402
from instyle.utils.precision import cpu_bf16_features  # noqa: E402

#: Parts and the exported graph each one times.
GRAPH_OF = {"encoder": "encoder", "generator": "generator", "pSp": "model"}
DEFAULT_VARIANTS = "torch:fp32,torch:bf16,onnxruntime:fp32,openvino:fp32,openvino:bf16,openvino:bf16-all"


@dataclass
class Row:
    config: str
    part: str
    threads: int
    batch: int
    backend: str
    precision: str
    seconds: float
    gflop_per_image: float
    peak_mib: float | None
    speedup: float | None = None
    max_diff: float | None = None
    psnr: float | None = None
    note: str = ""


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.clamp(-1, 1) - b.clamp(-1, 1)).double().pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def _torch_fn(model, part: str, precision: str):
    def fn(x):
        set_runtime(model, precision)
        if part == "encoder":
            return model.encode(x)
        if part == "generator":
            return model.decode(x)
        return model.decode(model.encode(x))

    return fn


def _graph_fn(session: GraphSession, name: str):
    return lambda x: torch.from_numpy(session({name: x.numpy()})[0])


def rows_for(model, config: str, directory: Path, part: str, threads: int, batch: int, variants, reps: int,
             settle: float = 0.0) -> list[Row]:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(batch)
    x = torch.rand(batch, model.input_nc, *input_hw(model), generator=g) * 2 - 1
    if part == "generator":
        with torch.no_grad():
            x = model.encode(x)
    # Per image, counted on one: the reference path at batch 8 needs ~25 GB at 1024 px.
    with use_backend("reference"), torch.no_grad():
        gflop = count_flops(lambda: _torch_fn(model, part, "fp32")(x[:1])) / 1e9
    fns, notes = {}, {}
    graph = GRAPH_OF[part]
    input_name = "w_plus" if part == "generator" else "image"
    for backend, precision in variants:
        key = f"{backend} {precision}"
        try:
            if backend == "torch":
                fns[key] = _torch_fn(model, part, precision)
            else:
                plain = precision.endswith("-all")  # the hint alone, without instyle's float32 operations
                session = GraphSession(directory / f"{graph}.onnx", backend, precision.removesuffix("-all"),
                                       keep_fp32_ops=not plain)
                fns[key] = _graph_fn(session, input_name)
        except Exception as e:  # a missing runtime is a row note, not the end of the run
            notes[key] = f"unavailable: {e!r}"[:80]
    outputs, times, peaks = {}, {k: [] for k in fns}, {}
    with torch.no_grad():
        for key, fn in fns.items():  # warm-up (graph compilation, first-call allocations)
            try:
                outputs[key] = fn(x).float()
            except Exception as e:
                notes[key] = f"failed: {e!r}"[:80]
        live = [k for k in fns if k in outputs]
        for rep in range(reps):
            for key in live:
                ok = reset_peak_rss() if rep == 0 else False
                time.sleep(settle)  # the previous runtime's worker threads stop spinning first
                t = time.perf_counter()
                fns[key](x)
                times[key].append(time.perf_counter() - t)
                if rep == 0:
                    peaks[key] = peak_rss_mib() if ok else None
    set_runtime(model, "fp32")
    base_key = "torch fp32"
    base = statistics.median(times[base_key]) if times.get(base_key) else None
    ref = outputs.get(base_key)
    rows = []
    for backend, precision in variants:
        key = f"{backend} {precision}"
        sec = statistics.median(times[key]) if times.get(key) else math.nan
        row = Row(config, part, threads, batch, backend, precision, sec, gflop, peaks.get(key), note=notes.get(key, ""))
        if base and math.isfinite(sec):
            row.speedup = base / sec
        if ref is not None and key in outputs:
            row.max_diff = float((outputs[key] - ref).abs().max())
            row.psnr = _psnr(outputs[key], ref) if part != "encoder" else None
        rows.append(row)
    print(f"  measured {part} batch {batch} with {threads} thread(s)", file=sys.stderr, flush=True)
    return rows


def print_table(rows: list[Row], peak: dict[int, float]) -> None:
    head = ["config", "part", "threads", "batch", "backend", "precision", "ms/image", "images/s", "GFLOP/s", "% peak",
            "speed-up", "peak MiB", "max |diff|", "PSNR dB", "note"]
    lines = []
    for r in rows:
        ok = math.isfinite(r.seconds)
        per_image = r.seconds / r.batch if ok else math.nan
        gfs = r.gflop_per_image / per_image if ok else math.nan
        lines.append([
            r.config, r.part, str(r.threads), str(r.batch), r.backend, r.precision,
            f"{1000 * per_image:.0f}" if ok else "-", f"{1 / per_image:.2f}" if ok else "-",
            f"{gfs:.0f}" if ok else "-", f"{100 * gfs / peak[r.threads]:.0f}%" if ok and peak.get(r.threads) else "-",
            f"{r.speedup:.2f}x" if r.speedup else "-", f"{r.peak_mib:.0f}" if r.peak_mib else "-",
            f"{r.max_diff:.1e}" if r.max_diff is not None else "-",
            ("inf" if math.isinf(r.psnr) else f"{r.psnr:.1f}") if r.psnr is not None else "-", r.note,
        ])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*head))
    print("-+-".join("-" * w for w in widths))
    for line in lines:
        print(fmt.format(*line))


def _peaks(threads: list[int], reps: int, n: int, dtype: torch.dtype = torch.float32) -> dict[int, float]:
    out = {}
    for t in threads:
        torch.set_num_threads(t)
        out[t] = matmul_peak(torch.device("cpu"), dtype=dtype, reps=reps, n=n)
    return out


def _reused_parity(folder: Path, model, graphs: tuple[str, ...]) -> dict[str, float] | None:
    """The parity of an export in ``folder`` made from exactly this model with these graphs, else None."""
    try:
        meta = read_export(folder)
    except (OSError, ExportError):
        return None
    same = meta.get("source", {}).get("sha256") == model_fingerprint(model)
    if not same or any(g not in meta.get("graphs", {}) for g in graphs):
        return None
    return {g: float(meta["graphs"][g].get("parity_max_abs", math.nan)) for g in graphs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="psp_ffhq_1024", help="a registered pSp config (default: psp_ffhq_1024)")
    parser.add_argument("--tiny", action="store_true", help="dry run: tiny config, batch 1 and 2, 1 thread, one repetition")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default: 1,8)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: 1,2)")
    parser.add_argument("--parts", default="pSp", help="comma-separated parts: encoder, generator, pSp (default: pSp)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"backend:precision pairs (default: {DEFAULT_VARIANTS})")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per row (median reported)")
    parser.add_argument("--settle", type=float, default=0.5,
                        help="seconds of rest before each timed call, so one runtime's spinning worker threads "
                             "do not slow the next (default 0.5)")
    parser.add_argument("--export-dir", type=Path, default=None,
                        help="keep the export here and reuse it when it holds this model's graphs (same config and "
                             "seed: same fingerprint), e.g. to run batch 8 variants in separate processes")
    args = parser.parse_args(argv)
    config, reps = args.config, args.reps
    batches = [int(b) for b in args.batches.split(",") if b]
    threads = [int(t) for t in args.threads.split(",") if t]
    if args.tiny:
        config, batches, threads, reps, args.settle = "tiny", [1, 2], [1], 1, 0.0
    parts = [p for p in args.parts.split(",") if p]
    if any(p not in GRAPH_OF for p in parts):
        parser.error(f"--parts={args.parts!r}: accepted are {', '.join(GRAPH_OF)}")
    variants = [tuple(v.split(":", 1)) for v in args.variants.split(",") if v]
    if variants[0] != ("torch", "fp32"):
        variants.insert(0, ("torch", "fp32"))  # the baseline of every comparison

    load0 = os.getloadavg()
    mm_n, mm_reps = (1024, 1) if args.tiny else (4096, 3)
    peak_runs = [_peaks(threads, mm_reps, mm_n)]
    model = random_psp(get_config(config), seed=0, latent_samples=256 if args.tiny else 4096).eval()
    rows: list[Row] = []
    graphs = tuple(dict.fromkeys(GRAPH_OF[p] for p in parts))
    with tempfile.TemporaryDirectory(prefix="instyle-bench-onnx-") as tmp:
        folder = args.export_dir or Path(tmp)
        t = time.perf_counter()
        parity = _reused_parity(folder, model, graphs)
        reused = parity is not None
        if not reused:
            parity = export_onnx(model, folder, graphs=graphs).parity
        export_s = time.perf_counter() - t
        retain_freed_memory()  # instyle's batch-job setting for the PyTorch rows (after the export's peak)
        for part in parts:
            for n_threads in threads:
                for batch in batches:
                    rows += rows_for(model, config, folder, part, n_threads, batch, variants, reps, args.settle)
    peak_runs.append(_peaks(threads, mm_reps, mm_n))
    load1 = os.getloadavg()
    # What 16-bit rows can reach at most: the bfloat16 matmul (PyTorch's native kernels).
    bf16_peak = _peaks(threads, mm_reps, mm_n, torch.bfloat16) if cpu_bf16_features() else None
    peak = {t: max(run[t] for run in peak_runs) for t in threads}
    machine = machine_key()
    print(f"instyle backends benchmark: CPU {machine['cpu']} ({os.cpu_count()} logical CPUs; native 16-bit: "
          f"{', '.join(cpu_bf16_features()) or 'none'}); available backends: {', '.join(available_backends())}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()))
    print(f"{mm_n}^2 float32 matmul GFLOP/s: " + "; ".join(
        f"{t} thread(s) {', '.join(f'{run[t]:.0f}' for run in peak_runs)}" for t in threads))
    if bf16_peak:
        print(f"{mm_n}^2 bfloat16 matmul GFLOP/s: " + "; ".join(f"{t} thread(s) {bf16_peak[t]:.0f}" for t in threads)
              + " (the ceiling of the 16-bit rows; their % peak column is against float32)")
    # The end reading includes the benchmark's own threads; only load beyond them is someone else's.
    cpus = os.cpu_count() or 1
    busy = load0[0] > 0.5 * cpus or load1[0] - max(threads) > 0.5 * cpus
    print(f"load average (1 min): {load0[0]:.2f} at start, {load1[0]:.2f} at end"
          + (" -- UNDER LOAD: absolute times are inflated, compare ratios within one (part, threads, batch)" if busy else ""))
    made = f"reused from {folder}" if reused else f"in {export_s:.0f} s"
    print(f"export of {', '.join(parity)} {made}; parity vs PyTorch fp32 (max abs): "
          + ", ".join(f"{k} {v:.1e}" for k, v in parity.items()))
    print(f"rows alternate within each repetition; medians of {reps}; GFLOP counted on the reference path")
    print_table(rows, peak)
    return 0


if __name__ == "__main__":
    sys.exit(main())
