"""Everything a GPU machine must tell us, in one call (driven by ``device_check.sh``).

    python benchmarks/device_check.py prepare [--shared ../shared]   # here: fill benchmarks/.device_fixtures
    python benchmarks/device_check.py run REPORT_DIR                  # there: all sections on CUDA
    python benchmarks/device_check.py run REPORT_DIR --dry-run        # every section on CPU, tiny config

Sections, in order, each skipped (and reported as skipped) when its estimate would pass
the time budget; ``REPORT_DIR/report.md`` and ``report.json`` are rewritten after every
section, so a run killed half-way still leaves what it measured:

1. environment: GPU, driver / CUDA / torch versions, matmul TFLOP/s (fp32 without TF32, TF32, bf16);
2. conformance: public fixtures A and B regenerated from their key lists, max abs diff
   against the original's outputs, with TF32 off (<= 1e-4 expected) and on;
3. inference (``psp_ffhq_1024``, random weights of the real size): fp32 reference, fp32 fast,
   bf16 eager, bf16 compiled; throughput at batch 32 and 128, batch-1 latency (also with
   CUDA graphs), peak memory, PSNR vs fp32 (random inputs and the conformance inputs),
   achieved TFLOP/s against the measured matmul peak, compile time;
4. ``instyle encode --precision bf16 --compile`` end to end over the fixture photos;
5. one training step, batch 8: the original loop vs instyle fp32 vs instyle bf16;
6. backends: the model exported to ONNX (parity-checked) and run on ONNX Runtime (CUDA /
   TensorRT execution providers when that build is installed, else its CPU provider) and
   OpenVINO (CPU) beside PyTorch fp32, batch 1 and the inference batch, with max abs diff.

The sections that read fixtures (conformance, its PSNR, encode) need ``prepare`` first; a
dry run prepares them itself from ``../shared`` when that exists, and otherwise those
sections are reported as skipped with the command to run (never a bare subprocess error).

The fixtures folder is git-ignored and small (key lists, npz inputs, the checkpoint writer,
the photos: ~30 MB); checkpoints are regenerated on the machine itself.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURES = HERE / ".device_fixtures"
MAX_FIXTURE_MIB = 60
CONFORMANCE_FILES = ("A.npz", "B.npz", "keys/A.txt", "keys/B.txt", "make_checkpoint.py")
CONFORMANCE_SEEDS = {"A": 1, "B": 2}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


# --------------------------------------------------------------------------- prepare (runs here)


def prepare(shared: Path, dest: Path = FIXTURES) -> dict:
    """Copy what the device needs from ``shared`` into ``dest`` (replaced as a whole)."""
    conformance = shared / "conformance"
    missing = [f for f in CONFORMANCE_FILES if not (conformance / f).is_file()]
    if missing:
        raise SystemExit(f"device_check prepare: {conformance} lacks {missing}")
    faces = shared / "data" / "faces"
    photos = sorted(p for p in faces.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if faces.is_dir() else []
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for f in CONFORMANCE_FILES:
        (tmp / "conformance" / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(conformance / f, tmp / "conformance" / f)
    for p in photos:
        target = tmp / "faces" / p.relative_to(faces)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)
    size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) / 2**20
    if size > MAX_FIXTURE_MIB:
        shutil.rmtree(tmp)
        raise SystemExit(f"device_check prepare: {size:.0f} MiB of fixtures, more than {MAX_FIXTURE_MIB} MiB travel")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return {"fixtures": str(dest), "photos": len(photos), "mib": round(size, 1)}


def missing_fixtures(fixtures: Path) -> list[str]:
    """The fixture files a run needs that ``fixtures`` lacks (empty: ready)."""
    need = [f"conformance/{f}" for f in CONFORMANCE_FILES] + ["faces"]
    return [f for f in need if not (fixtures / f).exists()]


# --------------------------------------------------------------------------- plan and report


@dataclass
class Plan:
    """What a run measures; :func:`make_plan` fills it for the device or the dry run."""

    dry_run: bool
    device: str
    budget_s: float
    infer_config: str
    infer_batches: list[int]
    latency_compile: str
    reps: int
    train_config: str
    train_batch: int
    conformance: list[str]
    matmul_n: int
    encode_batch: int
    max_photos: int
    estimates: dict[str, float] = field(default_factory=dict)


def make_plan(dry_run: bool, budget_s: float) -> Plan:
    if dry_run:
        return Plan(True, "cpu", budget_s, "tiny", [2], "default", 1, "tiny", 2, ["B"], 512, 4, 8,
                    {"environment": 5, "conformance": 40, "inference batch 2": 40,
                     "latency (compile mode default)": 10, "encode": 20, "training": 20, "backends": 60})
    return Plan(False, "cuda", budget_s, "psp_ffhq_1024", [32, 128], "reduce-overhead", 5, "psp_ffhq_1024", 8,
                ["A", "B"], 8192, 32, 1000,
                {"environment": 10, "conformance": 45, "inference batch 32": 110, "inference batch 128": 45,
                 "latency (compile mode reduce-overhead)": 60, "encode": 45, "training": 40, "backends": 120})


class Report:
    """Sections as they finish; ``write()`` renders report.md and report.json atomically."""

    def __init__(self, out_dir: Path, plan: Plan):
        self.out_dir = out_dir
        self.plan = plan
        self.started = time.perf_counter()
        self.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.sections: list[dict] = []
        out_dir.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def fits(self, name: str) -> bool:
        return self.elapsed() + self.plan.estimates.get(name, 30) <= self.plan.budget_s

    def add(self, name: str, status: str, seconds: float, result: dict | None = None, markdown: str = "") -> None:
        self.sections.append({"name": name, "status": status, "seconds": round(seconds, 1), "result": result or {},
                              "markdown": markdown})
        self.write()

    def write(self) -> None:
        data = {"created": self.created, "elapsed_s": round(self.elapsed(), 1), "plan": asdict(self.plan),
                "sections": self.sections}
        _atomic_text(self.out_dir / "report.json", json.dumps(data, indent=2, default=str) + "\n")
        _atomic_text(self.out_dir / "report.md", self.markdown())

    def markdown(self) -> str:
        mode = "DRY RUN on CPU, tiny config" if self.plan.dry_run else f"device {self.plan.device}"
        lines = [f"# instyle device check ({mode})", "", f"Started {self.created}, {self.elapsed():.0f} s so far "
                 f"(budget {self.plan.budget_s:.0f} s).", ""]
        for s in self.sections:
            lines += [f"## {s['name']} -- {s['status']} ({s['seconds']} s)", "", s["markdown"].rstrip(), ""]
        return "\n".join(lines)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_section(report: Report, name: str, fn: Callable[[], tuple[dict, str]]) -> None:
    """Run one section under the time guard; failures are reported, not raised."""
    if not report.fits(name):
        est = report.plan.estimates.get(name, 30)
        report.add(name, "skipped", 0.0, {"reason": "time budget"},
                   f"Skipped: {report.elapsed():.0f} s spent + ~{est:.0f} s estimate > budget {report.plan.budget_s:.0f} s.")
        return
    t = time.perf_counter()
    try:
        result, md = fn()
        report.add(name, "done", time.perf_counter() - t, result, md)
    except Exception as e:
        tb = traceback.format_exc(limit=6)
        report.add(name, "failed", time.perf_counter() - t, {"error": repr(e), "traceback": tb},
                   f"Failed: `{e!r}`\n\n```\n{tb[-1500:]}\n```")
    _free_memory()


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _table(head: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _bench():
    """``benchmarks/run.py`` as a module (its timing helpers and row functions)."""
    sys.path.insert(0, str(HERE))
    import run as bench

    return bench


# --------------------------------------------------------------------------- sections


def section_environment(plan: Plan, peaks: dict) -> tuple[dict, str]:
    import torch

    from instyle.utils.precision import cpu_bf16_features, resolve_precision

    device = torch.device(plan.device)
    bench = _bench()
    info = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": bench.device_name(device), "cpu": platform.processor() or platform.machine(),
        "cpu_bf16_features": cpu_bf16_features(), "threads": torch.get_num_threads(),
        "auto_precision": resolve_precision("auto", device).describe(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["compute_capability"] = f"{props.major}.{props.minor}"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = smi.stdout.strip() or None
    for label, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)):
        if label == "tf32" and device.type != "cuda":
            continue
        with _tf32(tf32):
            peaks[label] = bench.matmul_peak(device, dtype, n=plan.matmul_n, reps=5) / 1e3
        info[f"matmul_{label}_tflops"] = round(peaks[label], 4)
    md = _table(["what", "value"], [[k, v] for k, v in info.items()])
    return info, md


@contextlib.contextmanager
def _tf32(on: bool):
    import torch

    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _conformance_outputs(net, data: dict, device) -> dict:
    """The fixtures' checked forward calls (see ../shared/conformance/README.md) -> arrays."""
    import torch

    def t(key):
        return torch.from_numpy(data[key]).to(device)

    x = t("input")
    out = {"encoder_codes": net.encoder(x), "plain_images": net(x, resize=True, randomize_noise=False)}
    out["latents_images"], out["latents_latents"] = net(x, resize=False, return_latents=True, randomize_noise=False)
    out["input_code_images"], out["input_code_latents"] = net(
        t("z_code"), input_code=True, resize=True, return_latents=True, randomize_noise=False)
    if "latent_mask" in data:
        mask = [int(i) for i in data["latent_mask"]]
        out["mix_alpha_images"] = net(x, latent_mask=mask, inject_latent=t("inject_latent_1"), alpha=0.5,
                                      resize=True, randomize_noise=False)
        out["mix_replace_images"] = net(x, latent_mask=mask, inject_latent=t("inject_latent_2"), alpha=None,
                                        resize=True, randomize_noise=False)
        out["mix_alpha_latents"] = net(x, latent_mask=mask, inject_latent=t("inject_latent_2"), alpha=0.5,
                                       resize=False, return_latents=True, randomize_noise=False)[1]
    return {k: v.float().cpu().numpy() for k, v in out.items()}


def section_conformance(plan: Plan, fixtures: Path) -> tuple[dict, str]:
    import numpy as np
    import torch

    import instyle

    conf = fixtures / "conformance"
    device = torch.device(plan.device)
    result, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="instyle_conformance_") as tmp:
        for name in plan.conformance:
            ckpt = Path(tmp) / f"{name}.pt"
            proc = subprocess.run([sys.executable, str(conf / "make_checkpoint.py"), "--keys",
                                   str(conf / "keys" / f"{name}.txt"), "--seed", str(CONFORMANCE_SEEDS[name]),
                                   "--out", str(ckpt)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"make_checkpoint.py for {name} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
            net = instyle.load(ckpt, device=device)
            ckpt.unlink()
            with np.load(conf / f"{name}.npz") as f:
                data = {k: f[k] for k in f.files}
            for tf32 in (False, True) if device.type == "cuda" else (False,):
                with _tf32(tf32), torch.no_grad():
                    outs = _conformance_outputs(net, data, device)
                diffs = {k: float(np.abs(v.astype(np.float64) - data[k]).max()) for k, v in outs.items()}
                worst = max(diffs, key=diffs.get)
                result[f"{name}{'_tf32' if tf32 else ''}"] = diffs
                ok = "yes" if diffs[worst] <= 1e-4 else "NO"
                rows.append([name, "on" if tf32 else "off", f"{diffs[worst]:.2e}", worst, ok])
            del net
            _free_memory()
    md = _table(["config", "TF32", "max abs diff", "worst array", "<= 1e-4"], rows)
    return result, md


def _inference_table(rows, peaks: dict) -> tuple[list[dict], str]:
    out, lines = [], []
    for r in rows:
        ok = math.isfinite(r.seconds)
        tflops = r.gflops() / 1e3 if ok else math.nan
        peak = peaks.get("fp32" if r.dtype == "float32" else "bf16")
        d = {"dtype": r.dtype, "batch": r.batch, "path": r.variant, "img_per_s": r.images_per_s if ok else None,
             "ms_per_img": r.ms_per_image if ok else None, "peak_mib": r.peak_rss, "tflops": tflops if ok else None,
             "pct_of_matmul_peak": 100 * tflops / peak if ok and peak else None, "speedup": r.speedup, "note": r.note}
        out.append(d)
        lines.append([r.dtype, r.batch, r.variant, f"{r.images_per_s:.1f}" if ok else "-",
                      f"{r.ms_per_image:.2f}" if ok else "-", f"{r.peak_rss:.0f}" if r.peak_rss else "-",
                      f"{tflops:.3g}" if ok else "-", f"{d['pct_of_matmul_peak']:.0f}%" if d["pct_of_matmul_peak"] else "-",
                      f"{r.speedup:.2f}x" if r.speedup else "-", r.note])
    head = ["dtype", "batch", "path", "img/s", "ms/img", "peak MiB", "TFLOP/s", "% matmul peak", "speed-up", "note"]
    return out, _table(head, lines)


@contextlib.contextmanager
def _cheap_compile(on: bool):
    """Dry run: ``torch.compile`` through the ``eager`` backend (TorchDynamo traces the same
    graphs; inductor's C++ build of even the tiny model takes minutes on a CPU)."""
    import torch

    if not on:
        yield
        return
    real = torch.nn.Module.compile
    torch.nn.Module.compile = lambda self, mode=None: real(self, backend="eager")
    try:
        yield
    finally:
        torch.nn.Module.compile = real


def section_inference(plan: Plan, step: str, batches: list[int], compile: bool | str, latency: bool,
                      peaks: dict) -> tuple[dict, str]:
    import torch

    device = torch.device(plan.device)
    with _cheap_compile(plan.dry_run):
        rows = _bench().precision_rows(plan.infer_config, batches, plan.reps, device, ("bf16",), compile=compile,
                                       latency=latency)
    data, md = _inference_table(rows, peaks)
    return {"config": plan.infer_config, "step": step, "rows": data}, f"`{plan.infer_config}`, {step}\n\n{md}"


def section_conformance_psnr(plan: Plan, fixtures: Path) -> tuple[dict, str]:
    """bf16 vs fp32 PSNR of the real-size model on the conformance inputs (A's two images)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from instyle.models import get_config
    from instyle.models.init import random_psp
    from instyle.models.runtime import set_runtime

    bench = _bench()
    device = torch.device(plan.device)
    model = random_psp(get_config(plan.infer_config), seed=0, latent_samples=1024).to(device)
    with np.load(fixtures / "conformance" / "A.npz") as f:
        x = torch.from_numpy(f["input"]).to(device)
    if x.shape[-1] != model.input_size:
        x = F.interpolate(x, size=(model.input_size, model.input_size), mode="area")
    result = {}
    with torch.no_grad():
        ref = model.decode(model.encode(x)).clamp(-1, 1)
        for precision in ("bf16", "fp16"):
            set_runtime(model, precision)
            result[precision] = bench.psnr(model.decode(model.encode(x)).clamp(-1, 1), ref)
            set_runtime(model, "fp32")
    md = _table(["precision", "PSNR vs fp32 (dB), conformance A inputs"], [[k, f"{v:.1f}"] for k, v in result.items()])
    return result, md


def section_encode(plan: Plan, fixtures: Path, out_dir: Path) -> tuple[dict, str]:
    import torch

    from instyle.models import get_config
    from instyle.models.init import random_psp

    faces = fixtures / "faces"
    if not faces.is_dir():
        raise FileNotFoundError(f"{faces}: run `device_check.sh prepare` first")
    photos = sorted(p for p in faces.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[: plan.max_photos]
    with tempfile.TemporaryDirectory(prefix="instyle_encode_") as tmp:
        model_dir = Path(tmp) / "model"
        random_psp(get_config(plan.infer_config), seed=0, latent_samples=1024).save_pretrained(model_dir)
        flags = ["--precision", "bf16"] + ([] if plan.dry_run else ["--compile"])
        cmd = [sys.executable, "-m", "instyle.cli.main", "encode", *map(str, photos), "-c", str(model_dir), "-o",
               str(Path(tmp) / "out"), "--device", plan.device, "--batch-size", str(plan.encode_batch), *flags]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=max(60, plan.budget_s))
        wall = time.perf_counter() - t
        summary_path = Path(tmp) / "out" / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    (out_dir / "encode_stderr.txt").write_text(proc.stderr[-20000:])
    result = {"returncode": proc.returncode, "wall_s": round(wall, 2), "flags": flags, "summary": summary,
              "torch_threads": torch.get_num_threads()}
    rows = [["exit code", proc.returncode], ["flags", " ".join(flags)], ["images", summary.get("encoded")],
            ["failed", summary.get("failed")], ["img/s (summary: files in, files out, incl. compile)",
                                                 summary.get("images_per_second")],
            ["wall s (process incl. start, load)", f"{wall:.1f}"]]
    return result, _table(["encode", "value"], rows) + "\n\nstderr tail in `encode_stderr.txt`."


def section_training(plan: Plan) -> tuple[dict, str]:
    import torch

    rows = _bench().train_rows(plan.train_config, plan.train_batch, max(plan.reps, 2), torch.device(plan.device),
                               precisions=("fp32", "bf16"))
    data = [{"path": r.variant, "dtype": r.dtype, "ms_per_step": r.seconds * 1e3, "speedup": r.speedup,
             "peak_mib": r.peak_rss} for r in rows]
    lines = [[r.variant, r.dtype, r.batch, f"{r.seconds * 1e3:.0f}", f"{r.speedup:.2f}x",
              f"{r.peak_rss:.0f}" if r.peak_rss else "-"] for r in rows]
    md = _table(["path", "dtype", "batch", "ms/step", "speed-up", "peak MiB"], lines)
    return {"config": plan.train_config, "rows": data}, f"`{plan.train_config}`\n\n{md}"


def section_backends(plan: Plan) -> tuple[dict, str]:
    """PyTorch fp32 on the device beside the exported graph on every installed runtime."""
    import statistics

    import torch

    from instyle.export import export_onnx
    from instyle.export.backends import GraphSession, available_backends
    from instyle.models import get_config
    from instyle.models.init import random_psp

    device = torch.device(plan.device)
    model = random_psp(get_config(plan.infer_config), seed=0, latent_samples=1024).eval()
    rows, data = [], []
    with tempfile.TemporaryDirectory(prefix="instyle_backends_") as tmp:
        t = time.perf_counter()
        parity = export_onnx(model, tmp, graphs=("model",)).parity["model"]
        export_s = time.perf_counter() - t
        model = model.to(device)
        runners = {"torch fp32 (" + device.type + ")": None}
        installed = available_backends()
        if "onnxruntime" in installed:
            import onnxruntime as ort

            providers = ort.get_available_providers()
            if device.type == "cuda" and {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(providers):
                runners["onnxruntime " + providers[0]] = GraphSession(Path(tmp) / "model.onnx", "onnxruntime",
                                                                      device=device)
            runners["onnxruntime CPU"] = GraphSession(Path(tmp) / "model.onnx", "onnxruntime")
        if "openvino" in installed:
            runners["openvino CPU fp32"] = GraphSession(Path(tmp) / "model.onnx", "openvino", "fp32")
            runners["openvino CPU bf16"] = GraphSession(Path(tmp) / "model.onnx", "openvino", "bf16")
        for batch in sorted({1, plan.infer_batches[0]}):
            g = torch.Generator().manual_seed(batch)
            x = torch.rand(batch, 3, model.input_size, model.input_size, generator=g) * 2 - 1
            times, outs = {}, {}
            for name, session in runners.items():
                if batch > 1 and "CPU" in name and not plan.dry_run:
                    continue  # a CPU runtime at the GPU batch size would eat the budget
                def call(session=session, x=x):
                    if session is None:
                        with torch.no_grad():
                            out = model.decode(model.encode(x.to(device)))
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                        return out.float().cpu()
                    return torch.from_numpy(session({"image": x.numpy()})[0])
                try:
                    outs[name] = call()
                    runs = []
                    for _ in range(max(1, plan.reps if session is None or "CPU" not in name else 1)):
                        t = time.perf_counter()
                        call()
                        runs.append(time.perf_counter() - t)
                    times[name] = statistics.median(runs)
                except Exception as e:  # one runtime failing leaves the others' rows
                    rows.append([name, batch, "-", "-", f"failed: {e!r}"[:120]])
            base = times.get(next(iter(runners)))
            ref = outs.get(next(iter(runners)))
            for name, sec in times.items():
                diff = float((outs[name] - ref).abs().max()) if ref is not None else math.nan
                rows.append([name, batch, f"{1000 * sec / batch:.1f}", f"{base / sec:.2f}x" if base else "-",
                             f"{diff:.1e}"])
                data.append({"runtime": name, "batch": batch, "ms_per_img": 1000 * sec / batch,
                             "speedup": base / sec if base else None, "max_abs_diff": diff})
    md = (f"`{plan.infer_config}` exported in {export_s:.0f} s (parity vs PyTorch fp32 on CPU {parity:.1e}); "
          f"installed: {', '.join(installed)}\n\n"
          + _table(["runtime", "batch", "ms/img", "speed-up vs torch fp32", "max abs diff vs torch fp32"], rows))
    return {"config": plan.infer_config, "export_s": export_s, "parity": parity, "rows": data}, md


# --------------------------------------------------------------------------- main


def _fixture_section(report: Report, name: str, fn, missing: list[str]) -> None:
    """A section that reads fixtures: skipped with the command to run when they are missing."""
    if missing:
        report.add(name, "skipped", 0.0, {"reason": "fixtures missing", "missing": missing},
                   f"Skipped: the fixtures folder lacks {', '.join(missing)}. Run `benchmarks/device_check.sh prepare` "
                   "where ../shared exists (it copies them into benchmarks/.device_fixtures), then run again.")
        return
    run_section(report, name, fn)


def run_all(out_dir: Path, plan: Plan, fixtures: Path = FIXTURES, shared: Path | None = None) -> Report:
    report = Report(out_dir, plan)
    report.write()
    missing = missing_fixtures(fixtures)
    shared = ROOT.parent / "shared" if shared is None else shared
    if missing and plan.dry_run and (shared / "conformance").is_dir():
        t = time.perf_counter()
        info = prepare(shared.resolve(), fixtures)
        report.add("prepare fixtures", "done", time.perf_counter() - t, info,
                   f"The dry run prepared its fixtures from {shared} ({info['mib']} MiB, {info['photos']} photos).")
        missing = missing_fixtures(fixtures)
    peaks: dict = {}
    run_section(report, "environment", lambda: section_environment(plan, peaks))
    _fixture_section(report, "conformance", lambda: section_conformance(plan, fixtures), missing)
    for i, batch in enumerate(plan.infer_batches):
        run_section(report, f"inference batch {batch}",
                    lambda b=batch, first=i == 0: section_inference(plan, f"batch {b}", [b], True, first, peaks))
    mode = plan.latency_compile
    run_section(report, f"latency (compile mode {mode})",
                lambda: section_inference(plan, f"batch 1, compile mode {mode}", [1], mode, False, peaks))
    _fixture_section(report, "PSNR on the conformance inputs", lambda: section_conformance_psnr(plan, fixtures),
                     missing)
    _fixture_section(report, "encode", lambda: section_encode(plan, fixtures, out_dir), missing)
    run_section(report, "training", lambda: section_training(plan))
    run_section(report, "backends", lambda: section_backends(plan))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="copy fixtures from ../shared into benchmarks/.device_fixtures")
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    p.add_argument("--dest", type=Path, default=FIXTURES)
    r = sub.add_parser("run", help="run the sections, writing REPORT_DIR/report.{md,json}")
    r.add_argument("out", type=Path, metavar="REPORT_DIR")
    r.add_argument("--dry-run", action="store_true", help="every section on CPU with the tiny config")
    r.add_argument("--budget", type=float, help="seconds; later sections are skipped past it (default 330, dry run 600)")
    r.add_argument("--fixtures", type=Path, default=FIXTURES)
    args = parser.parse_args(argv)
    if args.cmd == "prepare":
        print(json.dumps(prepare(args.shared.resolve(), args.dest)))
        return 0
    import torch

    plan = make_plan(args.dry_run, args.budget or (600.0 if args.dry_run else 330.0))
    if not args.dry_run and not torch.cuda.is_available():
        print("device_check: CUDA is not available; use --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    report = run_all(args.out, plan, args.fixtures)
    print(report.markdown())
    return 1 if any(s["status"] == "failed" for s in report.sections) else 0


if __name__ == "__main__":
    sys.exit(main())
