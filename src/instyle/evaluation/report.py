"""Evaluate a pSp model (or saved outputs) on a folder of faces; write and compare reports.

    summary = evaluate("psp_ffhq_encode.pt", "celeba_hq/test", out_dir="report/")
    compare("report/report.json", "other/report.json")

Per image and on average: MSE (on [-1, 1] images, as the paper), LPIPS (AlexNet), PSNR,
SSIM, identity similarity and runtime; FID over the set when Inception weights are given.
Outputs are pooled to ``resize_to`` (256) and quantised to 8 bits, i.e. measured as the
saved images the original's ``calc_losses_on_images.py`` reads. Written files:
``report.json`` (everything), ``per_image.csv``, ``report.md`` (the paper's Table 1 layout)
and ``best_worst.png`` (target | output rows, best cases on top).

Data layout: a folder of photos (targets; each is also the input for inversion, or the
task makes the input from it, e.g. a low-resolution copy), or ``inputs/`` + ``targets/``
subfolders matched by relative path without suffix (sketches, label maps).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from instyle.evaluation.metrics import mse, psnr, ssim
from instyle.utils.atomic import atomic_write_bytes

__all__ = ["METRICS", "Sample", "find_samples", "evaluate", "compare", "markdown_table", "load_report"]

#: Report columns: key -> (header, higher is better, format).
METRICS: dict[str, tuple[str, bool, str]] = {
    "identity": ("↑ Similarity", True, "{:.4f}"),
    "lpips": ("↓ LPIPS", False, "{:.4f}"),
    "mse": ("↓ MSE", False, "{:.4f}"),
    "runtime_s": ("↓ Runtime (s)", False, "{:.4f}"),
    "psnr": ("↑ PSNR (dB)", True, "{:.2f}"),
    "ssim": ("↑ SSIM", True, "{:.4f}"),
}


@dataclass(frozen=True)
class Sample:
    """One evaluation case: a name (relative path without suffix), the target photo, the
    input file (same as the target when the input is made from it) and a saved prediction."""

    name: str
    target: Path
    input: Path
    prediction: Path | None = None


def _index(folder: Path) -> dict[str, Path]:
    from instyle.inference.io import collect_inputs

    paths, _ = collect_inputs([folder])
    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in paths}


def find_samples(data_dir: str | os.PathLike, predictions_dir: str | os.PathLike | None = None) -> tuple[list[Sample], list[str]]:
    """The cases of ``data_dir`` (see the module docstring) and problems found (one line each)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no such folder")
    problems: list[str] = []
    paired = (data_dir / "targets").is_dir()
    targets = _index(data_dir / "targets" if paired else data_dir)
    inputs = _index(data_dir / "inputs") if paired and (data_dir / "inputs").is_dir() else {}
    preds = _index(Path(predictions_dir)) if predictions_dir is not None else None
    samples = []
    for name, target in sorted(targets.items()):
        inp = target
        if paired and inputs:
            if name not in inputs:
                problems.append(f"{target}: no matching input in {data_dir / 'inputs'}")
                continue
            inp = inputs[name]
        pred = None
        if preds is not None:
            pred = preds.get(name) or preds.get(Path(name).name)
            if pred is None:
                problems.append(f"{target}: no prediction named {name}.* in {predictions_dir}")
                continue
        samples.append(Sample(name, target, inp, pred))
    if not targets:
        problems.append(f"{data_dir}: no images found")
    return samples, problems


# --------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock times measure the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or device.type


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [-1, 1] and round to 8-bit levels (what saving and re-reading an image does)."""
    levels = ((images.float().clamp(-1, 1) + 1) * 127.5).round()
    return levels / 255.0 * 2.0 - 1.0


def _summary(values: list) -> dict:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    arr = np.array(vals, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return {"mean": float(arr.mean()), "std": float(arr.std()) if np.isfinite(arr).all() else None, "n": len(vals)}


def _jsonable(obj):
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _num(v) -> float | None:
    if v is None:
        return None
    return float(v) if not isinstance(v, str) else float(v.replace("inf", "Infinity"))


class _Cases:
    """The best and worst ``k`` cases by a score (lower is better) with their images."""

    def __init__(self, k: int):
        self.k = k
        self.items: list[tuple[float, str, Image.Image, Image.Image]] = []

    def add(self, score: float, name: str, target: Image.Image, pred: Image.Image) -> None:
        if self.k <= 0 or math.isnan(score):
            return
        self.items.append((score, name, target, pred))
        self.items.sort(key=lambda t: t[0])
        if len(self.items) > 2 * self.k:
            self.items = self.items[: self.k] + self.items[-self.k :]

    def grid(self) -> Image.Image | None:
        from instyle.inference.io import make_grid

        if not self.items:
            return None
        rows = [[t, p] for _, _, t, p in self.items]
        return make_grid(rows, cell=min(256, self.items[0][2].size[1]))


# --------------------------------------------------------------------------- measurement


class _Measures:
    """Optional networks (LPIPS, identity, FID), each with a description or the reason it is off."""

    def __init__(self, device, lpips_weights, lpips_net, identity, face_box, inception_weights):
        self.networks: dict[str, str] = {}
        self.unavailable: dict[str, str] = {}
        self.lpips = self._try("lpips", lambda: self._lpips(lpips_net, lpips_weights, device))
        self.identity = self._try("identity", lambda: self._identity(identity, face_box, device))
        self.fid = None
        if inception_weights is None:
            self.unavailable["fid"] = "no Inception weights given (--inception-weights PATH); FID not computed"
        else:
            self.fid = self._try("fid", lambda: self._fid(inception_weights, device))
        self.fid_features: tuple[list, list] = ([], [])

    def _try(self, key: str, build: Callable):
        try:
            return build()
        except Exception as e:  # a missing optional network must not stop the evaluation
            self.unavailable[key] = f"{type(e).__name__}: {e}"
            return None

    def _lpips(self, net, weights, device):
        from instyle.losses.lpips import LPIPSLoss

        m = LPIPSLoss(net=net, weights=weights).to(device)
        self.networks["lpips"] = f"LPIPS v0.1 ({net}) via the lpips package"
        return m

    def _identity(self, spec, face_box, device):
        from instyle.evaluation.identity import build_identity

        m = build_identity(spec, face_box=face_box, device=device)
        if m is None:
            raise RuntimeError("identity similarity switched off")
        self.networks["identity"] = m.name
        return m

    def _fid(self, weights, device):
        from instyle.evaluation.fid import InceptionFeatures

        m = InceptionFeatures(weights).to(device)
        self.networks["fid"] = f"torchvision Inception-v3 pool features from {os.path.basename(m.weights)}"
        return m

    @torch.no_grad()
    def batch(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, list]:
        """Per-image metrics of a batch ``[B, 3, S, S]`` in [-1, 1] (both on one device)."""
        from instyle.inference.io import tensor_to_pil

        out = {
            "mse": mse(pred, target).tolist(),
            "psnr": psnr(pred, target, data_range=2.0).tolist(),
            "ssim": ssim(pred, target, data_range=2.0).tolist(),
        }
        if self.lpips is not None:
            out["lpips"] = self.lpips.per_sample(pred, target).double().cpu().tolist()
        if self.identity is not None:
            preds = [tensor_to_pil(p) for p in pred]
            targets = [tensor_to_pil(t) for t in target]
            out["identity"] = self.identity.similarity(preds, targets)
        if self.fid is not None:
            self.fid_features[0].append(self.fid(pred).double().cpu().numpy())
            self.fid_features[1].append(self.fid(target).double().cpu().numpy())
        return out

    def fid_value(self) -> float | None:
        if self.fid is None or not self.fid_features[0]:
            return None
        from instyle.evaluation.fid import feature_stats, frechet_distance

        p, t = (np.concatenate(f) for f in self.fid_features)
        if len(p) < 2:
            self.unavailable["fid"] = "FID needs at least 2 images"
            return None
        return frechet_distance(*feature_stats(p), *feature_stats(t))


def _load_model(model, device):
    if model is None:
        return None
    from instyle.models.psp import PSP

    if not isinstance(model, PSP):
        from instyle.interop import load_psp

        model = load_psp(model, device=device)
    return model.to(device).eval()


def _input_maker(model, task_name: str | None):
    """``path -> network input [input_nc, S, S]`` for this model and task."""
    from instyle.inference.io import load_image
    from instyle.inference.preprocess import prepare_input

    name = task_name or model.config.task
    try:
        from instyle.tasks import get_task

        task = get_task(name)
    except (ImportError, ValueError):
        task = None
    if task is None or task.name == "inversion" or task.input_nc != model.input_nc:
        return lambda s: prepare_input(s.input, model.config)

    task = task.with_options(size=model.input_size) if task.size != model.input_size else task

    def make(s: Sample) -> torch.Tensor:
        if s.input != s.target:
            return prepare_input(s.input, model.config)
        if task.needs_source:
            raise ValueError(f"task {task.name!r} needs prepared inputs: lay the data out as inputs/ + targets/")
        return task.make_input(load_image(s.target), rng=None)

    return make


# --------------------------------------------------------------------------- evaluate


def evaluate(
    model,
    data_dir: str | os.PathLike,
    task: str | None = None,
    batch_size: int = 4,
    device: str | torch.device = "auto",
    out_dir: str | os.PathLike | None = None,
    *,
    predictions_dir: str | os.PathLike | None = None,
    size: int = 256,
    lpips_weights: str | os.PathLike | None = None,
    lpips_net: str = "alex",
    identity: str | None = "dlib",
    face_box: str = "aligned",
    inception_weights: str | os.PathLike | None = None,
    max_images: int | None = None,
    warmup: int = 1,
    grid_cases: int = 4,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Measure reconstructions against targets; write the report files when ``out_dir`` is set.

    Args:
        model: a :class:`~instyle.models.psp.PSP`, a checkpoint path, or None together with
            ``predictions_dir`` to score saved outputs (no runtime then).
        data_dir: targets (and inputs), see the module docstring.
        task: task preset making inputs from targets (default: the model's).
        batch_size: images per forward pass (reported with the runtime).
        device: ``auto``, ``cpu``, ``cuda``, ``mps``.
        predictions_dir: saved outputs matched to targets by relative path without suffix.
        size: side at which images are compared without a model (with one: its ``resize_to``).
        lpips_weights: torchvision AlexNet/VGG weights for LPIPS (default: torchvision's cache).
        identity: ``"dlib"``, a path to ArcFace/CurricularFace weights, or None.
        face_box: dlib face box, ``"aligned"`` (known box of aligned crops) or ``"detect"``.
        inception_weights: torchvision Inception-v3 weights; FID only when given.
        max_images: evaluate at most this many cases.
        warmup: untimed forward passes of the first batch before timing.
        grid_cases: best and worst cases shown in ``best_worst.png``.
        log: called with one line per skipped file (default: stderr).

    Returns:
        The report dict (also ``report.json``): ``metrics`` (mean/std/n per metric), ``fid``,
        ``per_image``, ``failed`` and the settings.
    """
    from instyle.inference.io import ImageLoadError, load_image, pil_to_tensor, tensor_to_pil
    from instyle.utils.device import resolve_device

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if model is None and predictions_dir is None:
        raise ValueError("give a model (checkpoint) or predictions_dir with saved outputs")
    log = log or (lambda msg: print(f"instyle: skipped {msg}", file=sys.stderr))
    device = resolve_device(device)
    net = _load_model(model, device)
    samples, failed = find_samples(data_dir, predictions_dir if net is None else None)
    for msg in failed:
        log(msg)
    if max_images is not None:
        samples = samples[:max_images]
    eval_size = net.config.resize_to if net is not None else size
    make_input = _input_maker(net, task) if net is not None else None
    measures = _Measures(device, lpips_weights, lpips_net, identity, face_box, inception_weights)
    cases = _Cases(grid_cases)
    rows: list[dict] = []
    warm = net is None or warmup <= 0

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(samples), unit="img", desc="evaluate", file=sys.stderr, disable=None)
    for start in range(0, len(samples), batch_size):
        chunk, xs, ys = [], [], []
        for s in samples[start : start + batch_size]:
            try:
                y = pil_to_tensor(load_image(s.target), eval_size)
                x = load_image(s.prediction) if net is None else make_input(s)
            except (ImageLoadError, ValueError, OSError) as e:
                msg = str(e) if str(s.target) in str(e) or str(s.input) in str(e) else f"{s.target}: {e}"
                log(msg)
                failed.append(msg)
                continue
            chunk.append(s)
            xs.append(pil_to_tensor(x, eval_size) if net is None else x)
            ys.append(y)
        if bar is not None:
            bar.update(len(samples[start : start + batch_size]))
        if not chunk:
            continue
        target = torch.stack(ys).to(device)
        x = torch.stack(xs).to(device)
        runtime = None
        if net is not None:
            with torch.inference_mode():
                if not warm:
                    for _ in range(warmup):
                        net.decode(net.encode(x), resize=True)
                    warm = True
                _sync(device)
                t0 = time.perf_counter()
                pred = net.decode(net.encode(x), resize=True)
                _sync(device)
                runtime = (time.perf_counter() - t0) / len(chunk)
            if pred.shape[-1] != eval_size:
                pred = F.interpolate(pred, size=(eval_size, eval_size), mode="area")
            pred = quantize(pred)
        else:
            pred = x
        values = measures.batch(pred.float(), target.float())
        key = "lpips" if "lpips" in values else "mse"
        for i, s in enumerate(chunk):
            row = {"name": s.name, "target": str(s.target)}
            row.update({k: v[i] for k, v in values.items()})
            row["runtime_s"] = runtime
            rows.append(row)
            cases.add(float(values[key][i]), s.name, tensor_to_pil(target[i]), tensor_to_pil(pred[i]))
    if bar is not None:
        bar.close()

    report = {
        "instyle_version": _version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": _method_name(model, predictions_dir),
        "checkpoint": None if model is None or not isinstance(model, (str, os.PathLike)) else str(model),
        "predictions": None if predictions_dir is None else str(predictions_dir),
        "data": str(data_dir),
        "task": (task or net.config.task) if net is not None else task,
        "family": net.config.family if net is not None else None,
        "device": str(device),
        "device_name": _device_name(device),
        "batch_size": batch_size,
        "eval_size": eval_size,
        "n_images": len(rows),
        "failed": failed,
        "runtime_note": (
            f"model forward (encode + decode) per image, batch {batch_size}, after {warmup} warm-up pass(es)"
            + (", CUDA-synchronised" if device.type == "cuda" else "")
            if net is not None
            else "not measured (saved predictions)"
        ),
        "networks": measures.networks,
        "unavailable": measures.unavailable,
        "metrics": {k: _summary([r.get(k) for r in rows]) for k in METRICS},
        "fid": measures.fid_value(),
        "grid_order": [name for _, name, _, _ in cases.items],
        "per_image": rows,
    }
    if net is None:
        report["metrics"]["runtime_s"] = {"mean": None, "std": None, "n": 0}
    if out_dir is not None:
        write_report(report, out_dir, cases.grid())
    return report


def _version() -> str:
    from instyle import __version__

    return __version__


def _method_name(model, predictions_dir) -> str:
    if isinstance(model, (str, os.PathLike)):
        return Path(model).name
    if model is not None:
        return type(model).__name__
    return Path(predictions_dir).name if predictions_dir is not None else "?"


# --------------------------------------------------------------------------- writing


def write_report(report: dict, out_dir: str | os.PathLike, grid: Image.Image | None = None) -> Path:
    """``report.json``, ``per_image.csv``, ``report.md`` and ``best_worst.png`` in ``out_dir``."""
    from instyle.inference.io import save_image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "report.json", (json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n").encode())
    cols = ["name", "target", *METRICS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in report["per_image"]:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    atomic_write_bytes(out / "per_image.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "report.md", markdown_report(report).encode())
    if grid is not None:
        save_image(grid, out / "best_worst.png")
    return out


def _fmt(key: str, value) -> str:
    v = _num(value)
    if v is None:
        return "n/a"
    if math.isinf(v):
        return "∞"
    return METRICS[key][2].format(v) if key in METRICS else f"{v:.4g}"


def _row(report: dict) -> list[str]:
    cells = [report.get("method", "?")]
    for key in METRICS:
        cells.append(_fmt(key, (report["metrics"].get(key) or {}).get("mean")))
    fid = _num(report.get("fid"))
    cells.append("n/a" if fid is None else f"{fid:.2f}")
    return cells


def markdown_table(reports: list[dict]) -> str:
    """The paper's Table 1 layout (Method, Similarity, LPIPS, MSE, Runtime) plus PSNR, SSIM, FID."""
    header = ["Method", *(h for h, _, _ in METRICS.values()), "↓ FID"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in reports]
    return "\n".join(lines) + "\n"


def markdown_report(report: dict) -> str:
    notes = [
        f"- data: `{report['data']}` ({report['n_images']} images"
        + (f", {len(report['failed'])} skipped" if report["failed"] else "")
        + f"), task: {report.get('task') or 'n/a'}, compared at {report['eval_size']}x{report['eval_size']}",
        f"- device: {report['device']} ({report['device_name']}), batch size {report['batch_size']}; "
        f"runtime: {report['runtime_note']}",
        "- MSE on [-1, 1] images (as the paper); PSNR/SSIM with data range 2 (= [0, 1] with 1); "
        "outputs clamped and quantised to 8 bits",
    ]
    for key, desc in report.get("networks", {}).items():
        notes.append(f"- {key}: {desc}")
    for key, why in report.get("unavailable", {}).items():
        notes.append(f"- {key}: not computed -- {why}")
    return f"# Evaluation: {report['method']}\n\n" + markdown_table([report]) + "\n" + "\n".join(notes) + "\n"


# --------------------------------------------------------------------------- comparing


def load_report(path: str | os.PathLike) -> dict:
    """Read a ``report.json`` (or the folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: not a readable evaluation report ({e})") from None
    if not isinstance(data, dict) or "metrics" not in data:
        raise ValueError(f"{p}: not an instyle evaluation report (no 'metrics')")
    return data


def compare(a_json: str | os.PathLike | dict, b_json: str | os.PathLike | dict) -> dict:
    """Compare two reports: both rows, ``b - a`` per metric, which is better, and caveats.

    Returns:
        ``{"a", "b", "delta": {metric: b - a}, "better": {metric: "a"|"b"|"tie"}, "notes",
        "markdown"}``.
    """
    a = a_json if isinstance(a_json, dict) else load_report(a_json)
    b = b_json if isinstance(b_json, dict) else load_report(b_json)
    delta, better = {}, {}
    for key, (_, higher, _) in METRICS.items():
        va, vb = (_num((r["metrics"].get(key) or {}).get("mean")) for r in (a, b))
        if va is None or vb is None:
            continue
        delta[key] = vb - va if not (math.isinf(va) and math.isinf(vb)) else 0.0
        better[key] = "tie" if va == vb else ("b" if (vb > va) == higher else "a")
    notes = []
    if a.get("data") != b.get("data") or a.get("n_images") != b.get("n_images"):
        notes.append(f"different data: {a.get('data')} ({a.get('n_images')}) vs {b.get('data')} ({b.get('n_images')})")
    if (a.get("device_name"), a.get("batch_size")) != (b.get("device_name"), b.get("batch_size")):
        notes.append(
            f"runtimes were measured on different setups: {a.get('device_name')} batch {a.get('batch_size')} vs "
            f"{b.get('device_name')} batch {b.get('batch_size')}"
        )
    for key in ("lpips", "identity", "fid"):
        na, nb = a.get("networks", {}).get(key), b.get("networks", {}).get(key)
        if na and nb and na != nb:
            notes.append(f"{key} measured by different networks: {na} vs {nb}")
    table = markdown_table([a, b])
    diff = "| Δ (b − a) | " + " | ".join(_fmt_delta(k, delta.get(k)) for k in METRICS) + " | |\n"
    md = table + diff + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")
    return {"a": a.get("method"), "b": b.get("method"), "delta": delta, "better": better, "notes": notes, "markdown": md}


def compare_many(reports: list) -> dict:
    """Several reports side by side (e.g. pSp, e4e and ReStyle on the same data): one row
    each, the best method per metric, and caveats when the data differ.

    Returns:
        ``{"methods", "best": {metric: method}, "notes", "markdown"}``.
    """
    rows = [r if isinstance(r, dict) else load_report(r) for r in reports]
    if len(rows) < 2:
        raise ValueError(f"compare needs at least two reports, got {len(rows)}")
    methods = [r.get("method", "?") for r in rows]
    best = {}
    for key, (_, higher, _) in METRICS.items():
        values = [(_num((r["metrics"].get(key) or {}).get("mean")), m) for r, m in zip(rows, methods)]
        values = [(v, m) for v, m in values if v is not None]
        if values:
            best[key] = (max if higher else min)(values, key=lambda vm: vm[0])[1]
    notes = []
    if len({(r.get("data"), r.get("n_images")) for r in rows}) > 1:
        notes.append("different data: " + "; ".join(f"{m}: {r.get('data')} ({r.get('n_images')})" for m, r in zip(methods, rows)))
    best_row = "| best | " + " | ".join(best.get(k, "n/a") for k in METRICS) + " | |\n"
    md = markdown_table(rows) + best_row + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")
    return {"methods": methods, "best": best, "notes": notes, "markdown": md}


def _fmt_delta(key: str, v) -> str:
    if v is None:
        return "n/a"
    return ("+" if v >= 0 else "") + METRICS[key][2].format(v)
