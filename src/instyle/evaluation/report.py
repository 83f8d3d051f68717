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
task makes the input from it, e.g. a low-resolution copy), or ``target/`` + ``source/``
(what ``instyle prepare`` writes; :func:`instyle.data.folders.data_layout`) matched by
relative path without suffix (sketches, label maps).
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

from instyle.data.folders import data_layout
from instyle.errors import InputError, InstyleError
from instyle.evaluation.fid import InceptionFeatures, feature_stats, fid_caveat, frechet_distance
from instyle.evaluation.identity import build_identity
from instyle.evaluation.metrics import mse, psnr, ssim
from instyle.inference.encoding import encode, encode_steps, render
from instyle.inference.io import (
    IMAGE_EXTENSIONS,
    caption,
    collect_input_files,
    load_image,
    make_grid,
    output_names,
    pil_to_tensor,
    save_image,
    tensor_to_pil,
)
from instyle.inference.preprocess import prepare_input
from instyle.interop import load_psp
from instyle.losses.lpips import LPIPSLoss
from instyle.models.family import family_of, get_family, list_families
from instyle.models.runtime import model_precision, set_runtime
from instyle.tasks import get_task
from instyle.utils.atomic import atomic_write_bytes
from instyle.utils.config import ConfigError
from instyle.utils.device import resolve_device
from instyle.utils.files import read_json_file
from instyle.utils.progress import Progress, say, timed
from instyle.version import __version__

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


def _index(folder: Path, problems: list[str]) -> dict[str, Path]:
    """``{name: file}`` of the images under ``folder``; names are relative paths without suffix,
    with the suffix kept where two files share one (``a.png`` and ``a.jpg`` are both evaluated)."""
    files, found = collect_input_files([folder])
    problems.extend(m for m in found if "folder contains no images" not in m)
    return dict(zip(output_names(files), (f.path for f in files)))


def _lookup(index: dict[str, Path], name: str) -> Path | None:
    """``index[name]``; a name that kept its image suffix (``a.png``) also matches ``a``."""

    if name in index:
        return index[name]
    stem, ext = os.path.splitext(name)
    return index.get(stem) if ext.lower() in IMAGE_EXTENSIONS else None


def find_samples(data_dir: str | os.PathLike, predictions_dir: str | os.PathLike | None = None) -> tuple[list[Sample], list[str]]:
    """The cases of ``data_dir`` (see the module docstring) and problems found (one line each)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no such folder")
    problems: list[str] = []
    target_dir, source_dir = data_layout(data_dir)
    targets = _index(target_dir, problems)
    inputs = _index(source_dir, problems) if source_dir is not None else {}
    preds = _index(Path(predictions_dir), problems) if predictions_dir is not None else None
    samples = []
    for name, target in sorted(targets.items()):
        inp = target
        if inputs:
            inp = _lookup(inputs, name)
            if inp is None:
                problems.append(f"{target}: no matching input in {source_dir}")
                continue
        pred = None
        if preds is not None:
            pred = _lookup(preds, name) or preds.get(Path(name).name)
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
    """The best and worst ``k`` cases by the metric ``key`` (lower is better) with their images."""

    def __init__(self, k: int, key: str):
        self.k, self.key = k, key
        self.items: list[tuple[float, str, Image.Image, Image.Image]] = []

    def add(self, score: float, name: str, target: Image.Image, pred: Image.Image) -> None:
        if self.k <= 0 or math.isnan(score):
            return
        self.items.append((score, name, target, pred))
        self.items.sort(key=lambda t: t[0])
        if len(self.items) > 2 * self.k:
            self.items = self.items[: self.k] + self.items[-self.k :]

    def grid(self) -> Image.Image | None:
        """Rows of target | output, best on top; the target captioned with its name, the
        output with the sorting metric's value (cells at least 128 px so the text fits)."""
        if not self.items:
            return None
        cell = max(128, min(256, self.items[0][2].size[1]))
        label, fmt = METRICS[self.key][0].split()[-1], METRICS[self.key][2]

        def sized(im: Image.Image) -> Image.Image:
            return im.convert("RGB").resize((cell, cell), Image.Resampling.BICUBIC) if im.size != (cell, cell) else im

        rows = [
            [caption(sized(t), name), caption(sized(p), f"{label} {fmt.format(score)}")] for score, name, t, p in self.items
        ]
        return make_grid(rows, cell=cell)

    def note(self) -> str:
        """How ``best_worst.png`` was made (for the report)."""
        why = "" if self.key == "lpips" else " (LPIPS not available)"
        return (
            f"target | output per row, captioned with the file name and {METRICS[self.key][0].split()[-1]}; "
            f"sorted by {self.key}{why}, lower is better: up to {self.k} best on top, then up to {self.k} worst"
        )


# --------------------------------------------------------------------------- measurement


class _Measures:
    """Optional networks (LPIPS, identity, FID), each with a description or the reason it is off."""

    def __init__(self, device, lpips_weights, lpips_net, identity, face_box, inception_weights):
        self.networks: dict[str, str] = {}
        self.unavailable: dict[str, str] = {}
        self.caveats: dict[str, str] = {}
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
        except (InstyleError, OSError, ImportError) as e:  # a missing optional network must not stop the evaluation
            self.unavailable[key] = f"{type(e).__name__}: {e}"
            return None

    def _lpips(self, net, weights, device):
        m = LPIPSLoss(net=net, weights=weights, hint="`instyle evaluate --lpips-weights PATH` (LPIPS is then reported as n/a "
                      "without it).").to(device)
        self.networks["lpips"] = f"LPIPS v0.1 ({net}) via the lpips package"
        return m

    def _identity(self, spec, face_box, device):
        m = build_identity(spec, face_box=face_box, device=device)
        if m is None:
            raise ConfigError("identity similarity switched off")
        self.networks["identity"] = m.name
        return m

    def _fid(self, weights, device):
        m = InceptionFeatures(weights).to(device)
        self.networks["fid"] = f"torchvision Inception-v3 pool features from {os.path.basename(m.weights)}"
        return m

    @torch.no_grad()
    def batch(self, pred: torch.Tensor, target: torch.Tensor, fid: bool = True) -> dict[str, list]:
        """Per-image metrics of a batch ``[B, 3, S, S]`` in [-1, 1] (both on one device);
        ``fid=False``: not added to the FID features (an intermediate iteration)."""

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
            scores = self.identity.scores(preds, targets)
            out["identity"] = [sc.value for sc in scores]
            out["identity_missing"] = [sc.missing for sc in scores]
        if self.fid is not None and fid:
            self.fid_features[0].append(self.fid(pred).double().cpu().numpy())
            self.fid_features[1].append(self.fid(target).double().cpu().numpy())
        return out

    def fid_value(self) -> float | None:
        if self.fid is None or not self.fid_features[0]:
            return None

        p, t = (np.concatenate(f) for f in self.fid_features)
        if len(p) < 2:
            self.unavailable["fid"] = "FID needs at least 2 images"
            return None
        caveat = fid_caveat(len(p))
        if caveat is not None:
            self.caveats["fid"] = caveat
        return frechet_distance(*feature_stats(p), *feature_stats(t))


def _load_model(model, device):
    if model is None:
        return None
    if isinstance(model, (str, os.PathLike)):
        model = load_psp(model, device=device)
    return model.to(device).eval()


def _reconstruct(net, x: torch.Tensor, iterations: int | None = None) -> torch.Tensor:
    """Encode and decode (HyperStyle: on each image's tuned generator), pooled to ``resize_to``."""
    return render(net, encode(net, x, iterations), resize=True)


def _reconstruct_each_iteration(net, x: torch.Tensor, iterations: int | None) -> list[torch.Tensor]:
    """The reconstruction after every refinement step of an iterative family (the original
    scripts' per-step outputs), the last one being :func:`_reconstruct`'s."""
    return [render(net, enc, resize=True) for enc in encode_steps(net, x, iterations)]


def check_iterations(net, iterations: int | None) -> None:
    """``iterations`` must be >= 1, and other than 1 only for an iterative family's model."""
    if iterations is None:
        return
    family = family_of(net)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"iterations={iterations!r} must be an integer >= 1")
    if iterations != 1 and not family.iterative:
        titles = [get_family(f).title for f in list_families() if get_family(f).iterative]
        raise ConfigError(
            f"iterations={iterations}: {', '.join(titles[:-1])} and {titles[-1]} models iterate; "
            f"this {family.name} model encodes in one step"
        )


def auto_warmup(device: torch.device) -> int:
    """Untimed warm-up passes by default: one on an accelerator (kernel selection, lazy
    initialisation), none on the CPU, where a pass costs as much as the timed one and its
    one-time costs are small (the first batch's time includes them)."""
    return 0 if device.type == "cpu" else 1


def _input_maker(model, task_name: str | None, resize_factor: int | None = None):
    """``(path -> network input [input_nc, S, S], note on how inputs are made or None)``."""
    name = task_name or model.input_spec.task
    if family_of(model).photos_at_output_size:  # the original's transform: the photo at the generator's size
        if name != "inversion" or resize_factor is not None:
            raise InputError(f"{family_of(model).title} models invert photos (task {name!r}, resize_factor {resize_factor} given)")
        return (lambda s: pil_to_tensor(load_image(s.input), model.config.generator.size)), None
    try:
        task = get_task(name)
    except ConfigError:  # a task name without a registered preset: inputs by channel count
        task = None
    if resize_factor is not None and (task is None or task.name != "super_resolution"):
        raise InputError(f"resize_factor={resize_factor}: applies to super-resolution models only (task {name!r})")
    if task is None or task.name == "inversion" or task.input_nc != model.input_nc:
        return (lambda s: prepare_input(s.input, model.config)), None

    task = task.with_options(size=model.input_size) if task.size != model.input_size else task
    note = None
    if task.name == "super_resolution":
        task = task.with_options(factors=(resize_factor or max(task.factors),))
        note = f"super-resolution inputs down-sampled x{task.factors[0]}" + (
            "" if resize_factor else " (the largest training factor; choose with --resize-factor)"
        )

    def make(s: Sample) -> torch.Tensor:
        if s.input != s.target:
            return prepare_input(s.input, model.config)
        if task.needs_source:
            raise InputError(f"task {task.name!r} needs prepared inputs: lay the data out as target/ + source/ (instyle prepare)")
        return task.make_input(load_image(s.target), rng=None)

    return make, note


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
    warmup: int | None = None,
    grid_cases: int = 4,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    precision: str | None = None,
    compile: bool | str = False,
    resize_factor: int | None = None,
    name: str | None = None,
    iterations: int | None = None,
    per_iteration: bool = False,
) -> dict:
    """Measure reconstructions against targets; write the report files when ``out_dir`` is set.

    Args:
        model: a model of any family (:class:`~instyle.models.family.InversionModel`), a checkpoint path, or None together with
            ``predictions_dir`` to score saved outputs (no runtime then).
        data_dir: targets (and inputs), see the module docstring.
        task: task preset making inputs from targets (default: the model's).
        batch_size: images per forward pass (reported with the runtime).
        device: ``auto``, ``cpu``, ``cuda``, ``mps``.
        predictions_dir: saved outputs matched to targets by relative path without suffix.
        size: side at which images are compared without a model (with one: its ``resize_to``).
        lpips_weights: torchvision AlexNet/VGG weights for LPIPS (default: torchvision's cache).
        identity: ``"dlib"``, ``"arcface:PATH"`` (or a bare path) to ArcFace/CurricularFace
            weights, or None. Outputs without a detectable face get no value; the report
            counts them in ``identity_excluded``.
        face_box: dlib face box, ``"aligned"`` (known box of aligned crops) or ``"detect"``.
        inception_weights: torchvision Inception-v3 weights; FID only when given.
        max_images: evaluate at most this many cases.
        warmup: untimed forward passes of the first batch before timing (None: one on a
            GPU, none on the CPU, see :func:`auto_warmup`).
        grid_cases: best and worst cases shown in ``best_worst.png``.
        log: called with one line per skipped file (default: stderr).
        precision: ``fp32``/``bf16``/``fp16``/``auto`` for the model (None keeps its setting);
            compile: ``torch.compile`` it (see :func:`instyle.models.runtime.set_runtime`).
        resize_factor: super-resolution models: down-sample each target by this factor to make
            its input (default: the largest training factor, stated in the report).
        iterations: ReStyle / HyperStyle refinement steps (default: the model's).
        per_iteration: also measure the reconstruction after every iteration (report key
            ``per_iteration``: one metrics summary per step; more time, untimed steps).

    Returns:
        The report dict (also ``report.json``): ``metrics`` (mean/std/n per metric), ``fid``,
        ``per_image``, ``failed`` and the settings.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    if model is None and predictions_dir is None:
        raise ConfigError("give a model (checkpoint) or predictions_dir with saved outputs")
    log = log or (lambda msg: print(f"instyle: skipped {msg}", file=sys.stderr))
    device = resolve_device(device)
    # the metric networks first: what is missing is said before the (long) model load
    with timed("loading the metric networks", "loaded the metric networks") as t:
        measures = _Measures(device, lpips_weights, lpips_net, identity, face_box, inception_weights)
        t.detail = ", ".join(measures.networks) or "none available"
    asked = {"lpips": True, "identity": identity is not None, "fid": inception_weights is not None}
    for key, why in measures.unavailable.items():
        if asked.get(key, True):
            say(f"{key} will be n/a: {why.splitlines()[0]}")
    net = _load_model(model, device)
    if net is not None and (precision is not None or compile):
        set_runtime(net, precision or net.runtime.precision, compile)
    samples, failed = find_samples(data_dir, predictions_dir if net is None else None)
    for msg in failed:
        log(msg)
    if max_images is not None:
        samples = samples[:max_images]
    if net is not None:
        check_iterations(net, iterations)
    warmup = auto_warmup(device) if warmup is None else warmup
    run = _Run(net, device, net.pooled_size if net is not None else size, warmup, iterations, per_iteration)
    make_input, input_note = _input_maker(net, task, resize_factor) if net is not None else (None, None)
    cases = _Cases(grid_cases, "lpips" if measures.lpips is not None else "mse")
    rows = _score(run, samples, batch_size, make_input, measures, cases, log, failed, progress)
    settings = {
        "task": (task or net.input_spec.task) if net is not None else task,
        "batch_size": batch_size,
        "input_note": input_note,
        "name": name,
        "iterations": _iterations_run(net, iterations),
    }
    report = _report(model, predictions_dir, data_dir, run, settings, rows, failed, measures, cases)
    if out_dir is not None:
        write_report(report, out_dir, cases.grid())
    return report


def _iterations_run(net, asked: int | None) -> int | None:
    if net is None:
        return None
    return family_of(net).iterations(asked, net)


def _score(run: _Run, samples, batch_size: int, make_input, measures: _Measures, cases: _Cases, log, failed, progress):
    """Predict and measure every sample, batch by batch: one row per readable image (cases for
    the best/worst grid go to ``cases``; unreadable files are logged and added to ``failed``)."""
    rows: list[dict] = []
    with Progress(len(samples), "evaluate", "img", enabled=progress) as bar:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            chunk, x, target = _read_batch(batch, run.net, make_input, run.eval_size, log, failed)
            if not chunk:
                bar.update(len(batch))
                continue
            pred, runtime, steps = run.predict(x)
            target = target.to(run.device)
            values = measures.batch(pred.float(), target.float())
            if steps is not None:  # per-iteration metrics: row["per_iteration"][metric] = [step 1, step 2, ...]
                each = [measures.batch(p.float(), target.float(), fid=False) for p in steps[:-1]] + [values]
                values = dict(values)
                values["per_iteration"] = [{k: [e[k][i] for e in each] for k in each[0] if k in METRICS} for i in range(len(chunk))]
            _record(chunk, values, runtime, target, pred, rows, cases)
            bar.update(len(batch))
    return rows


def _read_batch(batch: list[Sample], net, make_input, eval_size: int, log, failed: list[str]):
    """``(readable samples, inputs [B, C, S, S] or predictions, targets [B, 3, S, S])``; every
    unreadable file is logged and added to ``failed``."""
    chunk, xs, ys = [], [], []
    for s in batch:
        try:
            y = pil_to_tensor(load_image(s.target), eval_size)
            x = pil_to_tensor(load_image(s.prediction), eval_size) if net is None else make_input(s)
        except (InstyleError, OSError) as e:
            msg = str(e) if str(s.target) in str(e) or str(s.input) in str(e) else f"{s.target}: {e}"
            log(msg)
            failed.append(msg)
            continue
        chunk.append(s)
        xs.append(x)
        ys.append(y)
    if not chunk:
        return chunk, None, None
    return chunk, torch.stack(xs), torch.stack(ys)


class _Run:
    """The model's forward on each batch, timed after ``warmup`` untimed passes of the first."""

    def __init__(self, net, device: torch.device, eval_size: int, warmup: int, iterations: int | None = None,
                 per_iteration: bool = False):
        self.net, self.device, self.eval_size, self.warmup = net, device, eval_size, warmup
        self.iterations, self.per_iteration = iterations, per_iteration
        self.warm = net is None or warmup <= 0

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, float | None, list[torch.Tensor] | None]:
        """``(predictions [B, 3, S, S] quantised like saved PNGs, seconds per image, each
        iteration's predictions with per_iteration else None)``; saved predictions (no
        model) pass through untimed."""
        x = x.to(self.device)
        if self.net is None:
            return x, None, None
        steps = None
        with torch.inference_mode():
            if not self.warm:
                for _ in range(self.warmup):
                    _reconstruct(self.net, x, self.iterations)
                self.warm = True
            _sync(self.device)
            t0 = time.perf_counter()
            pred = _reconstruct(self.net, x, self.iterations)
            _sync(self.device)
            runtime = (time.perf_counter() - t0) / len(x)
            if self.per_iteration:
                steps = [self._sized(p) for p in _reconstruct_each_iteration(self.net, x, self.iterations)]
        return self._sized(pred), runtime, steps

    def _sized(self, pred: torch.Tensor) -> torch.Tensor:
        if pred.shape[-1] != self.eval_size:
            pred = F.interpolate(pred, size=(self.eval_size, self.eval_size), mode="area")
        return quantize(pred)


def _record(chunk, values: dict[str, list], runtime, target, pred, rows: list[dict], cases: _Cases) -> None:
    """One row per image, and the cases for the best/worst grid (by ``cases.key``)."""
    key = cases.key
    for i, s in enumerate(chunk):
        row = {"name": s.name, "target": str(s.target)}
        row.update({k: v[i] for k, v in values.items()})
        row["runtime_s"] = runtime
        rows.append(row)
        cases.add(float(values[key][i]), s.name, tensor_to_pil(target[i]), tensor_to_pil(pred[i]))


def _report(model, predictions_dir, data_dir, run: _Run, settings: dict, rows, failed, measures, cases) -> dict:
    """The report dict (``report.json``)."""
    device, batch_size = run.device, settings["batch_size"]
    report = {
        "instyle_version": _version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": settings.get("name") or _method_name(model, predictions_dir),
        "checkpoint": None if model is None or not isinstance(model, (str, os.PathLike)) else str(model),
        "predictions": None if predictions_dir is None else str(predictions_dir),
        "data": str(data_dir),
        "task": settings["task"],
        "family": family_of(run.net).name if run.net is not None else None,
        "device": str(device),
        "precision": model_precision(run.net) if run.net is not None else None,
        "device_name": _device_name(device),
        "batch_size": batch_size,
        "eval_size": run.eval_size,
        "n_images": len(rows),
        "failed": failed,
        "runtime_note": (
            f"model forward (encode + decode) per image, batch {batch_size}, after {run.warmup} warm-up pass(es)"
            + (", CUDA-synchronised" if device.type == "cuda" else "")
            if run.net is not None
            else "not measured (saved predictions)"
        ),
        "networks": measures.networks,
        "unavailable": measures.unavailable,
        "metrics": {k: _summary([r.get(k) for r in rows]) for k in METRICS},
        "identity_excluded": _excluded(rows),
        "fid": measures.fid_value(),
        "caveats": measures.caveats,
        "input_note": settings.get("input_note"),
        "grid_order": [name for _, name, _, _ in cases.items],
        "grid_sorted_by": cases.key,
        "grid_note": cases.note(),
        "iterations": settings.get("iterations"),
        "per_iteration": _per_iteration(rows),
        "per_image": rows,
    }
    if run.net is None:
        report["metrics"]["runtime_s"] = {"mean": None, "std": None, "n": 0}
    return report


def _per_iteration(rows: list[dict]) -> list[dict] | None:
    """``[{"iteration": k, metric: summary, ...}]`` over the images, when measured per iteration."""
    if not rows or "per_iteration" not in rows[0]:
        return None
    n = len(next(iter(rows[0]["per_iteration"].values())))
    keys = list(rows[0]["per_iteration"])
    return [{"iteration": k + 1, **{m: _summary([r["per_iteration"][m][k] for r in rows]) for m in keys}} for k in range(n)]


def _excluded(rows: list[dict]) -> dict[str, int]:
    """``{reason: count}`` of the images the identity metric gave no value (e.g. no face in output)."""
    counts: dict[str, int] = {}
    for r in rows:
        if r.get("identity_missing"):
            counts[r["identity_missing"]] = counts.get(r["identity_missing"], 0) + 1
    return counts


def _version() -> str:
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

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "report.json", (json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n").encode())
    cols = ["name", "target", *METRICS, "identity_missing"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in report["per_image"]:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    # File names that are not valid UTF-8 (kept by Python as surrogates) are written escaped.
    atomic_write_bytes(out / "per_image.csv", buf.getvalue().encode("utf-8", "backslashreplace"))
    atomic_write_bytes(out / "report.md", markdown_report(report).encode("utf-8", "backslashreplace"))
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


def _row(report: dict, label: str | None = None) -> list[str]:
    cells = [label or report.get("method", "?")]
    for key in METRICS:
        cells.append(_fmt(key, (report["metrics"].get(key) or {}).get("mean")))
    fid = _num(report.get("fid"))
    cells.append("n/a" if fid is None else f"{fid:.2f}")
    return cells


def markdown_table(reports: list[dict], labels: list[str] | None = None) -> str:
    """The paper's Table 1 layout (Method, Similarity, LPIPS, MSE, Runtime) plus PSNR, SSIM, FID;
    ``labels`` name the rows (default: each report's method)."""
    header = ["Method", *(h for h, _, _ in METRICS.values()), "↓ FID"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(_row(r, lb)) + " |" for r, lb in zip(reports, labels or [None] * len(reports))]
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
    for why, count in report.get("identity_excluded", {}).items():
        notes.append(
            f"- **identity: {why} for {count} of {report['n_images']} images; excluded from the mean "
            f"(n = {(report['metrics'].get('identity') or {}).get('n', 0)})**"
        )
    if report.get("input_note"):
        notes.append(f"- inputs: {report['input_note']}")
    for key, caveat in report.get("caveats", {}).items():
        notes.append(f"- **{key}: {caveat}**")
    if report.get("grid_note") and report.get("grid_order"):
        notes.append(f"- best_worst.png: {report['grid_note']}")
    if report.get("iterations") not in (None, 1):
        notes.append(f"- iterations: {report['iterations']}")
    text = f"# Evaluation: {report['method']}\n\n" + markdown_table([report]) + "\n" + "\n".join(notes) + "\n"
    steps = report.get("per_iteration")
    if steps:
        keys = [k for k in METRICS if k in steps[0]]
        text += "\n## Per iteration\n\n| Iteration | " + " | ".join(METRICS[k][0] for k in keys) + " |\n"
        text += "|" + "|".join([" ---: "] * (len(keys) + 1)) + "|\n"
        for step in steps:
            cells = [_fmt(k, step[k]["mean"]) for k in keys]
            text += f"| {step['iteration']} | " + " | ".join(cells) + " |\n"
    return text


# --------------------------------------------------------------------------- comparing


def load_report(path: str | os.PathLike) -> dict:
    """Read a ``report.json`` (or the folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    data = read_json_file(p, "evaluation report (report.json)")  # bounded: no FIFO, device, huge or deep file
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise InputError(f"{p}: not an instyle evaluation report (no 'metrics' mapping)")
    for key, entry in data["metrics"].items():
        try:
            if entry is not None:
                _num(entry["mean"])
        except (TypeError, KeyError, ValueError, AttributeError):
            raise InputError(f"{p}: malformed metric {key!r}: {entry!r:.80} (expected {{'mean': number or null, ...}})") from None
    try:
        _num(data.get("fid"))
    except (TypeError, ValueError):
        raise InputError(f"{p}: malformed 'fid': {data.get('fid')!r:.80} (expected a number or null)") from None
    return data


def report_labels(reports: list[dict], sources: list | None = None) -> list[str]:
    """One distinct label per report, the same in every comparison: its method name, and where
    two share one, the report's folder (else its position) after it."""
    methods = [r.get("method") or "?" for r in reports]
    sources = sources or [None] * len(reports)
    labels = []
    for i, (m, src) in enumerate(zip(methods, sources)):
        if methods.count(m) > 1:
            folder = None
            if isinstance(src, (str, os.PathLike)):
                p = Path(src)
                folder = (p.parent if p.suffix == ".json" else p).name or None
            m = f"{m} ({folder})" if folder else f"{m} #{i + 1}"
        labels.append(m)
    return [lb if labels.count(lb) == 1 else f"{lb} #{i + 1}" for i, lb in enumerate(labels)]


def compare(a_json: str | os.PathLike | dict, b_json: str | os.PathLike | dict) -> dict:
    """Compare two reports: both rows, ``b - a`` per metric, which is better, and caveats.

    Returns:
        ``{"a", "b", "labels", "delta": {metric: b - a}, "better": {metric: "a"|"b"|"tie"},
        "best": {metric: label or "tie"}, "notes", "markdown"}`` (``labels``: see
        :func:`report_labels`, as :func:`compare_many` names its rows).
    """
    a = a_json if isinstance(a_json, dict) else load_report(a_json)
    b = b_json if isinstance(b_json, dict) else load_report(b_json)
    labels = report_labels([a, b], [a_json, b_json])
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
    table = markdown_table([a, b], labels)
    best_row = "| best | " + " | ".join({"a": labels[0], "b": labels[1]}.get(better.get(k), better.get(k, "n/a")) for k in METRICS)
    diff = f"| Δ ({labels[1]} − {labels[0]}) | " + " | ".join(_fmt_delta(k, delta.get(k)) for k in METRICS) + " | |\n"
    md = table + best_row + " | |\n" + diff + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")
    best = {k: {"a": labels[0], "b": labels[1]}.get(v, v) for k, v in better.items()}
    return {"a": a.get("method"), "b": b.get("method"), "labels": labels, "delta": delta, "better": better, "best": best,
            "notes": notes, "markdown": md}


def compare_many(reports: list) -> dict:
    """Several reports side by side (e.g. pSp, e4e and ReStyle on the same data): one row
    each, the best method per metric, and caveats when the data differ.

    Returns:
        ``{"methods", "best": {metric: method}, "notes", "markdown"}``; ``methods`` are the
        reports' labels (:func:`report_labels`).
    """
    rows = [r if isinstance(r, dict) else load_report(r) for r in reports]
    if len(rows) < 2:
        raise InputError(f"compare needs at least two reports, got {len(rows)}")
    methods = report_labels(rows, list(reports))
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
    md = markdown_table(rows, methods) + best_row + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")
    return {"methods": methods, "best": best, "notes": notes, "markdown": md}


def _fmt_delta(key: str, v) -> str:
    if v is None:
        return "n/a"
    return ("+" if v >= 0 else "") + METRICS[key][2].format(v)
