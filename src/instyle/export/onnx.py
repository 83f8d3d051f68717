"""ONNX export of every registered family's models, checked against PyTorch.

    result = export_onnx(model, "deploy/psp_ffhq", source="psp_ffhq_encode.pt")
    result.parity          # {"encoder": 2.4e-07, "generator": 2.1e-05, "model": 2.1e-05}

writes into the folder:

* ``encoder.onnx``: ``image [B, C, H, W]`` -> ``w_plus [B, n_styles, style_dim]`` (the
  average latent added; ReStyle's refinement unrolled ``iterations`` times; HyperStyle also
  returns its per-image generator offsets ``delta_<layer>``; StyleFeatureEditor also
  ``w_e4e`` and its fused feature ``fused_feat [B, C, R, R]``).
* ``generator.onnx``: ``w_plus`` and the family's per-image extras -> the generator's
  full-resolution ``image [B, 3, size, size]`` (raw, not clamped, not cropped). The extras:
  HyperStyle's ``delta_<layer>`` offsets; StyleFeatureEditor's ``fused_feat`` and
  ``feature_delta`` (the feature editor runs in the graph; zeros reconstruct); ReStyle over
  StyleGAN3's ``transform [B, 3, 3]`` (the identity for an aligned face).
* ``model.onnx``: ``image`` -> that reconstruction, in one graph.
* ``export.json``: the source checkpoint and its fingerprint, family, input size and
  channels, normalisation, styles, output size and crop, iterations, every graph's inputs
  and outputs (``extra_inputs`` says what to feed the extras), and the measured parity.

The batch dimension is dynamic: graphs are traced at batch 2, because the fast modulated
convolution has a separate ``batch == 1`` branch that a batch-1 trace would bake in (the
batch-2 path computes the same for one image); HyperStyle's per-image kernels are traced as
one batched product per kernel tap instead of a convolution with ``groups = batch`` (whose
group count ONNX fixes). The generator's stored noise maps are **constants** in the graphs
(instyle's deterministic ``randomize_noise=False``): a deployer gets the same image for the
same latent, as ``instyle encode`` does.

Every export ends with a parity check: each graph runs (ONNX Runtime, else OpenVINO) on
seeded inputs at batch 1 and 2 and is compared with PyTorch fp32; an export whose maximum
absolute difference exceeds :data:`PARITY_BOUND` (scaled by the output's magnitude when it
exceeds 1) is refused and nothing is written to the output folder.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import inspect
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from instyle.errors import InstyleError, MissingExtraError
from instyle.models.family import Family, family_of, get_family, list_families
from instyle.utils.atomic import atomic_write_bytes
from instyle.version import __version__

__all__ = [
    "EXPORT_FILE",
    "FORMAT_VERSION",
    "GRAPHS",
    "OPSET",
    "PARITY_BOUND",
    "ExportError",
    "ExportResult",
    "export_onnx",
    "model_fingerprint",
    "openvino_core",
    "require",
]

#: ONNX opset of the graphs (the dynamo exporter's reliable floor for these ops).
OPSET = 18
#: Version of the ``export.json`` layout.
FORMAT_VERSION = 1
EXPORT_FILE = "export.json"
GRAPHS = ("encoder", "generator", "model")


def check_graphs(graphs: tuple[str, ...]) -> tuple[str, ...]:
    """``graphs`` itself when it names one or more of :data:`GRAPHS`, else :class:`ExportError`."""
    if not graphs or any(g not in GRAPHS for g in graphs):
        raise ExportError(f"graphs={list(graphs)!r}: choose from {list(GRAPHS)}")
    return graphs
#: Largest accepted max-abs difference between a graph and PyTorch fp32 (outputs of
#: magnitude <= 1; larger outputs scale it). The conformance suite's bound for instyle's
#: fast path against the original code: an export may not be less exact than that.
#: Measured: 2.4e-7 (encoder), 2.1e-5 (1024-px generator and whole model).
PARITY_BOUND = 1e-4
#: Most refinement steps unrolled into one encoder graph (each copies the encoder and generator ops).
MAX_ITERATIONS = 20
#: Above this many bytes of weights a graph keeps them in a side file (protobuf's 2 GiB limit).
_EXTERNAL_DATA_BYTES = 1_800_000_000


class ExportError(InstyleError, RuntimeError):
    """An export failed or did not match PyTorch; the message says which graph and by how much."""


def require(module: str):
    """Import an optional deployment package or raise :class:`MissingExtraError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{module} is not installed: pip install 'instyle[deploy]' (onnx, onnxscript, onnxruntime, openvino)"
        ) from e


@functools.lru_cache(maxsize=1)
def openvino_core():
    """The process's one OpenVINO ``Core``, created on first use and never freed.

    Every ``Core`` installs an alternate signal stack of its own on the thread that first
    compiles with it and, when freed, puts back the stack it found there. Several cores
    freed in another order than they were made leave a thread's alternate stack in freed
    memory, and the next signal handled on it (any Python handler, faulthandler's) kills
    the process with SIGSEGV. One core that lives as long as the process cannot."""
    return require("openvino").Core()


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's configuration and every tensor of its state (names, dtypes,
    shapes, bytes): the cache key of its exports."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        h.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    h.update(type(model).__name__.encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------- graph modules


def _family(model: nn.Module) -> Family:
    return family_of(model)


def _torch_encode(model, x: torch.Tensor, iterations: int | None):
    """The model's own PyTorch ``encode`` (bypassing an attached backend)."""
    return type(model).encode(model, x, iterations=iterations)


def _raw_image(decoder, w_plus: torch.Tensor, deltas=None) -> torch.Tensor:
    kwargs = {"weights_deltas": deltas} if deltas is not None else {}
    return decoder([w_plus], input_is_latent=True, randomize_noise=False, **kwargs)[0]


def _delta_layers(model, iterations: int | None) -> list[int]:
    """Generator layers that receive HyperStyle offsets (None entries are untuned layers)."""
    with torch.no_grad():
        x = torch.zeros(1, 3, *input_hw(model), device=_device(model))
        _, deltas = _torch_encode(model, x, 1)
    return [i for i, d in enumerate(deltas) if d is not None]


class _Encoder(nn.Module):
    def __init__(self, model, iterations: int | None, layers: list[int] | None):
        super().__init__()
        self.model, self.iterations, self.layers = model, iterations, layers

    def forward(self, image):
        out = _torch_encode(self.model, image, self.iterations)
        if self.layers is None:
            return out
        w, deltas = out
        return (w, *[deltas[i] for i in self.layers])


class _Generator(nn.Module):
    """Holds the generator alone: the traced program (and its memory) carries no encoder."""

    def __init__(self, model, layers: list[int] | None):
        super().__init__()
        self.decoder, self.layers = model.decoder, layers

    def forward(self, w_plus, *offsets):
        if self.layers is None:
            return _raw_image(self.decoder, w_plus)
        deltas: list[torch.Tensor | None] = [None] * self.decoder.n_weight_layers
        for i, d in zip(self.layers, offsets):
            deltas[i] = d
        return _raw_image(self.decoder, w_plus, deltas)


class _SurfaceGraph(nn.Module):
    """One callable of a family's :class:`~instyle.models.family.GraphSurface` as a module
    (holding the model, so the exporter lifts its weights)."""

    def __init__(self, model, surface, fn):
        super().__init__()
        self.model, self.surface, self.fn = model, surface, fn

    def forward(self, *args):
        return self.fn(*args)


class _Whole(nn.Module):
    def __init__(self, model, iterations: int | None, layers: list[int] | None):
        super().__init__()
        self.encoder, self.generator = _Encoder(model, iterations, layers), _Generator(model, layers)

    def forward(self, image):
        out = self.encoder(image)
        return self.generator(*out) if isinstance(out, tuple) else self.generator(out)


# --------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote: the folder, its ``export.json`` content, and the
    max-abs difference from PyTorch of every graph."""

    directory: Path
    metadata: dict
    parity: dict[str, float] = field(default_factory=dict)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def input_hw(model) -> tuple[int, int]:
    return tuple(model.input_hw)


def _default_iterations(model) -> int | None:
    return _family(model).iterations(None, model) if _family(model).iterative else None


def _images(model, batch: int, seed: int) -> torch.Tensor:
    h, w = input_hw(model)
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, model.input_nc, h, w, generator=g) * 2 - 1).to(_device(model))


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _surface(model, iterations: int | None):
    """The family's own graph surface, or None where the exporter's W+ / offsets graphs serve."""
    own = getattr(model, "graph_surface", None)
    return None if own is None else own(iterations)


def _graph_specs(model, iterations: int | None) -> dict[str, tuple[nn.Module, list[str], list[str]]]:
    """``name -> (module, input names, output names)`` of the three graphs."""
    surface = _surface(model, iterations)
    if surface is not None:
        return {
            "encoder": (_SurfaceGraph(model, surface, surface.encode), ["image"], list(surface.encoder_outputs)),
            "generator": (_SurfaceGraph(model, surface, surface.render), list(surface.generator_inputs), ["image"]),
            "model": (_SurfaceGraph(model, surface, surface.reconstruct), ["image"], ["reconstruction"]),
        }
    layers = _delta_layers(model, iterations) if _family(model).encoding == "offsets" else None
    deltas = [f"delta_{i}" for i in layers or []]
    return {
        "encoder": (_Encoder(model, iterations, layers), ["image"], ["w_plus", *deltas]),
        "generator": (_Generator(model, layers), ["w_plus", *deltas], ["image"]),
        "model": (_Whole(model, iterations, layers), ["image"], ["reconstruction"]),
    }


def _example_inputs(name: str, model, iterations, encoder: nn.Module, batch: int, seed: int) -> tuple:
    x = _images(model, batch, seed)
    if name in ("encoder", "model"):
        return (x,)
    with torch.no_grad():
        outs = _as_tuple(encoder(x))
    if isinstance(encoder, _SurfaceGraph):
        return tuple(encoder.surface.example_inputs(outs, seed))
    return outs


def _batch_dims(module: nn.Module, n: int, batch) -> tuple:
    """``dynamic_shapes`` for ``n`` positional tensors with the batch first, shaped like the
    module's ``forward`` signature (``*args`` takes one nested tuple, none when empty)."""
    params = list(inspect.signature(module.forward).parameters.values())
    fixed = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:n]
    dims = tuple({0: batch} for _ in fixed)
    if n > len(fixed) and any(p.kind == p.VAR_POSITIONAL for p in params):
        dims += (tuple({0: batch} for _ in range(n - len(fixed))),)
    return dims


def _export_graph(
    module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: bool = True
) -> None:
    require("onnx")
    require("onnxscript")
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic_shapes = _batch_dims(module, len(args), batch) if dynamic else None
    weight_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    module.eval()
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # the exporter's progress chatter
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(path), dynamo=True, opset_version=OPSET, input_names=inputs, output_names=outputs,
                dynamic_shapes=dynamic_shapes, external_data=weight_bytes > _EXTERNAL_DATA_BYTES, verbose=False,
            )
    except Exception as e:  # the exporter's own errors are many and undocumented
        raise ExportError(f"exporting {path.name} failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e


def parity_runner(path: Path, threads: int | None = None) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """A function running an ONNX file on this machine's CPU (ONNX Runtime, else OpenVINO)."""
    threads = threads or torch.get_num_threads()
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError:
        compiled = openvino_core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                              "INFERENCE_PRECISION_HINT": "f32"})
        return lambda feeds: [np.asarray(v) for v in compiled(feeds).values()]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)


def _parity(module: nn.Module, run, inputs: list[str], args: tuple) -> float:
    """Largest |onnx - torch| over all outputs, relative to max(1, |torch|)."""
    with torch.no_grad():
        expected = _as_tuple(module(*args))
    got = run({n: a.detach().cpu().numpy() for n, a in zip(inputs, args)})
    if len(got) != len(expected):
        raise ExportError(f"the graph returned {len(got)} outputs, PyTorch {len(expected)}")
    worst = 0.0
    for g, e in zip(got, expected):
        e = e.detach().cpu().float().numpy()
        if g.shape != e.shape:
            raise ExportError(f"output shape {g.shape} differs from PyTorch's {e.shape}")
        scale = max(1.0, float(np.abs(e).max()))
        worst = max(worst, float(np.abs(g - e).max()) / scale)
    return worst


def _metadata(
    model, iterations, specs, parity: dict[str, float], source, fingerprint: str, files: dict, fixed: int | None
) -> dict:
    family = _family(model)
    cfg = model.config
    h, w = input_hw(model)
    surface = next((m.surface for m, _, _ in specs.values() if isinstance(m, _SurfaceGraph)), None)
    gen = model.decoder.config if hasattr(model.decoder, "config") else cfg.generator
    graphs = {}
    for name, (_, inputs, outputs) in specs.items():
        graphs[name] = {"file": files[name], "inputs": inputs, "outputs": outputs, "parity_max_abs": parity[name]}
    return {
        "format": "instyle-onnx",
        "format_version": FORMAT_VERSION,
        "instyle_version": __version__,
        "torch_version": torch.__version__,
        "opset": OPSET,
        "source": {"checkpoint": None if source is None else str(source), "sha256": fingerprint},
        "family": family.name,
        "task": getattr(cfg, "task", "inversion"),
        "input": {
            "shape": ["batch", model.input_nc, h, w],
            "dtype": "float32",
            "layout": "NCHW",
            "normalisation": "RGB resized to the input size (bilinear), x / 127.5 - 1: values in [-1, 1] "
            "(torchvision Normalize(mean=0.5, std=0.5))",
        },
        "styles": model.n_styles,
        "style_dim": gen.style_dim,
        "output": {
            "shape": ["batch", 3, gen.size, gen.size],
            "range": "[-1, 1] before clamping; uint8 = round((clamp(y, -1, 1) + 1) * 127.5)",
            "resize_to": getattr(cfg, "resize_to", None),
            "output_crop": list(cfg.output_crop) if getattr(cfg, "output_crop", None) else None,
        },
        "iterations": iterations,
        "extra_inputs": {} if surface is None else dict(surface.described),
        "noise": "the generator's stored noise maps are constants in the graphs (randomize_noise=False)",
        "batch": "dynamic" if fixed is None else fixed,
        "parity_bound": PARITY_BOUND,
        "graphs": graphs,
    }


def _listing(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


def export_onnx(
    model: nn.Module,
    out_dir: str | os.PathLike,
    source: str | os.PathLike | None = None,
    iterations: int | None = None,
    graphs: tuple[str, ...] = GRAPHS,
    bound: float = PARITY_BOUND,
    log: Callable[[str], None] | None = None,
    batch: int | None = None,
) -> ExportResult:
    """Export ``model`` (any registered family, fp32) to ONNX graphs in ``out_dir``.

    Args:
        model: a loaded model (its device: CPU is what the parity check runs on).
        out_dir: the folder to write (created; files of an earlier export are replaced).
        source: the checkpoint it came from, recorded in ``export.json``.
        iterations: refinement steps (ReStyle, HyperStyle, ReStyle over StyleGAN3) unrolled
            into the encoder (default: the model's own).
        graphs: which of ``encoder``, ``generator``, ``model`` to write.
        bound: refuse an export whose parity error exceeds this (default :data:`PARITY_BOUND`).
        log: called with one line per step (e.g. ``print``).
        batch: the fixed batch of a family whose graphs cannot take a dynamic one
            (``Family.fixed_batch_graphs``; none today: every family exports a dynamic batch).

    Raises:
        ExportError: a graph failed to export or differs from PyTorch by more than ``bound``.
        instyle.errors.MissingExtraError: the ``deploy`` extra is not installed.
    """
    say = log or (lambda _msg: None)
    check_graphs(graphs)
    family = _family(model)
    exportable = [f for f in list_families() if get_family(f).exportable]
    if not family.exportable:
        raise ExportError(f"family={family.name!r} cannot be exported yet; accepted: {', '.join(exportable)}")
    if not family.iterative and iterations not in (None, 1):
        refining = _listing([get_family(f).title for f in exportable if get_family(f).iterative])
        raise ExportError(f"iterations={iterations!r}: only {refining} models refine; {family.name} encodes in one step")
    if iterations is not None and (isinstance(iterations, bool) or not isinstance(iterations, int)
                                   or not 1 <= iterations <= MAX_ITERATIONS):
        raise ExportError(f"iterations={iterations!r}: unrolled refinement takes 1 to {MAX_ITERATIONS} steps")
    iterations = iterations or _default_iterations(model) if family.iterative else None
    if not family.fixed_batch_graphs and batch is not None:
        fixed_ones = [get_family(f).title for f in exportable if get_family(f).fixed_batch_graphs]
        only = f"only {_listing(fixed_ones)} graphs have a fixed batch; " if fixed_ones else ""
        raise ExportError(f"batch={batch}: {only}{family.name} graphs take any batch (leave batch out)")
    fixed = (1 if batch is None else batch) if family.fixed_batch_graphs else None
    if fixed is not None and not (isinstance(fixed, int) and 1 <= fixed <= 256):
        raise ExportError(f"batch={batch!r}: a {family.title} export takes a fixed batch of 1 to 256")
    model = model.float().eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = model_fingerprint(model)
    every = _graph_specs(model, iterations)
    specs = {k: v for k, v in every.items() if k in graphs}
    encoder = every["encoder"][0]
    parity, files = {}, {}
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp:
        for name, (module, inputs, outputs) in specs.items():
            path = Path(tmp) / f"{name}.onnx"
            t = time.perf_counter()
            _export_graph(module, _example_inputs(name, model, iterations, encoder, fixed or 2, 0), path, inputs,
                          outputs, dynamic=fixed is None)
            run = parity_runner(path)
            err = max(_parity(module, run, inputs, _example_inputs(name, model, iterations, encoder, b, 1 + b))
                      for b in ((fixed,) if fixed else (1, 2)))
            say(f"{name}.onnx: exported in {time.perf_counter() - t:.1f} s; max abs diff vs PyTorch fp32 {err:.2e} "
                f"(bound {bound:.0e})")
            if not err <= bound:
                raise ExportError(
                    f"{name}.onnx differs from PyTorch fp32 by {err:.3g} (max abs, batch 1 and 2), above the bound "
                    f"{bound:g}; nothing was written to {out_dir}"
                )
            parity[name], files[name] = err, path.name
        meta = _metadata(model, iterations, specs, parity, source, fingerprint, files, fixed)
        (out_dir / EXPORT_FILE).unlink(missing_ok=True)  # an interrupted replacement is not a valid export
        for item in sorted(Path(tmp).iterdir()):  # graphs (and any external-data files), each replaced atomically
            os.replace(item, out_dir / item.name) if item.is_file() else shutil.move(str(item), out_dir / item.name)
    atomic_write_bytes(out_dir / EXPORT_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    return ExportResult(out_dir, meta, parity)


def read_export(directory: str | os.PathLike) -> dict:
    """The ``export.json`` of an export folder (:class:`ExportError` when missing or foreign)."""
    path = Path(directory) / EXPORT_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: not an instyle ONNX export ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != "instyle-onnx":
        raise ExportError(f"{path}: not an instyle ONNX export (format {meta.get('format')!r}, expected 'instyle-onnx')")
    return meta
