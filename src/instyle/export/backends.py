"""Run a loaded model's ``encode`` / ``decode`` on ONNX Runtime or OpenVINO.

    note = attach_backend(model, "openvino", precision="bf16")
    w = model.encode(x)          # the exported encoder graph, on OpenVINO
    img = model.decode(w)        # the exported generator graph
    attach_backend(model, "torch")   # back to PyTorch

The first use exports the model's encoder and generator (:func:`instyle.export.export_onnx`,
parity-checked) into ``<cache>/onnx/<fingerprint>-<family>-...`` (``$INSTYLE_CACHE`` or
``~/.cache/instyle``); later loads of the same weights reuse it. The cache key is the
model's fingerprint (configuration and every weight) and the unrolled iterations (ReStyle,
HyperStyle, ReStyle over StyleGAN3); the precision is a runtime setting of the session, not
of the file. StyleFeatureEditor's encode and the decode of an inversion run on the graphs;
ReStyle over StyleGAN3's decode takes its transform (one per image or one for the batch).

What still runs in PyTorch: decoding with explicit or random noise, ``return_all``
(every iteration), StyleFeatureEditor's edits (the edit's feature delta and the decode of
an edited encoding), training and anything else touching the modules.

Exactness against PyTorch fp32 (the conformance bound is 1e-4):

* ``onnxruntime`` fp32: checked at every export, <= 1e-4 (measured 2e-5 at 1024 px);
* ``openvino`` fp32: within 1e-4 on the tiny models (``tests/onnx_runtimes/test_backends.py``); OpenVINO
  may reorder reductions, so larger models are checked by ``benchmarks/backends.py``;
* ``openvino`` bf16 / fp16: the convolutions in 16 bits, everything else in float32
  (:mod:`instyle.export.openvino_precision`): 42.3 dB PSNR on the whole 1024-px pSp where
  the plain hint gave 38.9 (>= 40 dB guarded on the tiny model).
"""

from __future__ import annotations

import functools
import importlib
import logging
import weakref
from pathlib import Path

import numpy as np
import torch

from instyle.export.onnx import (
    EXPORT_FILE,
    ExportError,
    export_onnx,
    model_fingerprint,
    openvino_core,
    read_export,
    require,
)
from instyle.export.openvino_precision import mixed_precision_model
from instyle.interop.loading import cache_dir
from instyle.models.family import family_of
from instyle.utils.config import ConfigError, check_choice

__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "BACKEND_PRECISIONS",
    "GraphSession",
    "OnnxBackend",
    "attach_backend",
    "available_backends",
    "detach_backend",
    "export_cache_dir",
]

logger = logging.getLogger("instyle")

BACKENDS = ("torch", "onnxruntime", "openvino")
BACKEND_CHOICES = (*BACKENDS, "auto")
#: Precisions each backend runs (the ONNX graphs are fp32; OpenVINO computes them in 16 bits on request).
BACKEND_PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "onnxruntime": ("fp32",), "openvino": ("fp32", "bf16", "fp16")}
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
_OV_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def available_backends() -> list[str]:
    """The backends importable here (``torch`` always)."""
    out = ["torch"]
    for name, module in _MODULES.items():
        try:
            importlib.import_module(module)
            out.append(name)
        except ImportError:
            pass
    return out


def export_cache_dir() -> Path:
    """Where exports made on first use live: ``<instyle cache>/onnx``."""
    return cache_dir() / "onnx"


def _threads() -> int:
    return torch.get_num_threads()


class GraphSession:
    """One ONNX graph on one runtime: ``feeds {name: array}`` -> outputs in graph order.
    Uses ``torch.get_num_threads()`` threads (set it before creating the session). OpenVINO
    in 16 bits keeps every operation but the convolutions in float32
    (:mod:`instyle.export.openvino_precision`; ``keep_fp32_ops=False``: the plain hint).

    Holds no reference to itself (no ``lambda`` over ``self``): dropping the last reference
    frees the native session at once, on the thread that dropped it, not whenever Python's
    cycle collector runs (possibly on another thread, e.g. a server's worker). :meth:`close`
    frees it explicitly; a closed session refuses to run."""

    def __init__(self, path: Path, backend: str, precision: str = "fp32", device: torch.device | str = "cpu",
                 keep_fp32_ops: bool = True):
        device = torch.device(device)
        self.path, self.backend = path, backend
        if backend == "onnxruntime":
            ort = require("onnxruntime")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = _threads()
            opts.log_severity_level = 3
            providers = ["CPUExecutionProvider"]
            if device.type == "cuda":
                providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
                             if p in ort.get_available_providers()] + providers
            session = ort.InferenceSession(str(path), opts, providers=providers)
            self.inputs = {i.name: i.shape for i in session.get_inputs()}
            self._run = functools.partial(session.run, None)
        else:
            config = {"INFERENCE_NUM_THREADS": _threads(), "INFERENCE_PRECISION_HINT": _OV_HINTS[precision]}
            source = str(path)
            if precision != "fp32" and keep_fp32_ops:  # only the convolutions in 16 bits (openvino_precision)
                source = mixed_precision_model(path)
            compiled = openvino_core().compile_model(source, "CPU", config)
            self.inputs = {i.get_any_name(): list(i.get_partial_shape()) for i in compiled.inputs}
            self._run = functools.partial(GraphSession._infer, compiled)

    @staticmethod
    def _infer(compiled, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = compiled.create_infer_request()  # one per call: a served model runs calls concurrently
        results = request.infer(feeds)
        return [np.array(results[out]) for out in compiled.outputs]

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._run is None:
            raise ExportError(f"the {self.backend} session of {self.path.name} was closed")
        return self._run(feeds)

    def close(self) -> None:
        """Free the native session now (idempotent)."""
        self._run = None

    @property
    def closed(self) -> bool:
        return self._run is None


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


class OnnxBackend:
    """A model's encode/decode surface on ONNX graphs (made by :func:`attach_backend`).

    It refers to its model weakly: ``model.backend = OnnxBackend(model, ...)`` makes no
    reference cycle, so a dropped model frees its native sessions at once (see
    :class:`GraphSession`); :meth:`close` frees them explicitly, as :func:`attach_backend`
    does for the backend it replaces."""

    def __init__(self, model: torch.nn.Module, name: str, precision: str, directory: Path, metadata: dict,
                 note: str = ""):
        self._model = weakref.ref(model)
        self.name, self.precision, self.directory, self.metadata, self.note = name, precision, directory, metadata, note
        self.device = next(model.parameters()).device
        self._sessions: dict[str, GraphSession] = {}
        self._other_iterations: dict[int, OnnxBackend] = {}

    @property
    def model(self) -> torch.nn.Module:
        model = self._model()
        if model is None:
            raise ExportError("the model of this backend no longer exists")
        return model

    def close(self) -> None:
        """Free every native session (those of other unrolled iteration counts too)."""
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()
        for other in self._other_iterations.values():
            other.close()
        self._other_iterations.clear()

    def session(self, graph: str) -> GraphSession:
        if graph not in self._sessions:
            path = self.directory / self.metadata["graphs"][graph]["file"]
            self._sessions[graph] = GraphSession(path, self.name, self.precision, self.device)
        return self._sessions[graph]

    @property
    def fixed_batch(self) -> int | None:
        b = self.metadata.get("batch")
        return b if isinstance(b, int) else None

    def _batched(self, graph: str, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run ``graph`` on inputs sharing a batch dimension; a fixed-batch graph gets chunks
        of its size (the last one padded by repeating its final row, the padding dropped)."""
        session = self.session(graph)
        names = self.metadata["graphs"][graph]["inputs"]
        n = tensors[0].shape[0]
        step = self.fixed_batch or n
        outs: list[list[np.ndarray]] = []
        for start in range(0, n, step):
            chunk = [t[start:start + step] for t in tensors]
            real = chunk[0].shape[0]
            if real < step:
                chunk = [torch.cat([c, c[-1:].expand(step - real, *c.shape[1:])]) for c in chunk]
            got = session({k: _np(c) for k, c in zip(names, chunk)})
            outs.append([g[:real] for g in got])
        return [torch.from_numpy(np.concatenate(parts)).to(self.device) for parts in zip(*outs)]

    # ------------------------------------------------------------------ the model's surface

    def run(self, graph: str, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The outputs of ``graph`` (``encoder`` / ``generator``) on ``tensors``, in the order of
        its inputs in ``export.json`` (a family's hooks call this for its own graphs' surface)."""
        return self._batched(graph, tensors)

    def encode(self, x: torch.Tensor, iterations: int | None = None):
        """Latents of images ``x`` (HyperStyle: ``(w_plus, weights_deltas)``); ``iterations``
        must be those of the export (other counts export again, see :func:`attach_backend`)."""
        wanted = self.metadata.get("iterations")
        if iterations is not None and wanted is not None and iterations != wanted:
            if iterations not in self._other_iterations:
                self._other_iterations[iterations] = _prepare(
                    self.model, self.name, self.precision, iterations, self.fixed_batch
                )
            return self._other_iterations[iterations].encode(x, iterations)
        outs = self._batched("encoder", [x])
        if len(outs) == 1:  # no offsets
            return outs[0]
        deltas: list[torch.Tensor | None] = [None] * self.model.decoder.n_weight_layers
        for name, d in zip(self.metadata["graphs"]["encoder"]["outputs"][1:], outs[1:]):
            deltas[int(name.split("_")[1])] = d
        return outs[0], deltas

    def generate(self, w_plus: torch.Tensor, weights_deltas=None) -> torch.Tensor:
        """The generator's raw full-resolution image of ``w_plus`` (stored noise)."""
        if w_plus.ndim == 2:  # one w for every style, as the generator broadcasts it
            w_plus = w_plus[:, None].expand(-1, self.model.n_styles, -1)
        tensors = [w_plus]
        graph = self.metadata["graphs"]["generator"]
        session = self.session("generator")
        for name in graph["inputs"][1:]:
            i = int(name.split("_")[1])
            d = None if weights_deltas is None else weights_deltas[i]
            shape = [w_plus.shape[0], *session.inputs[name][1:]]
            tensors.append(torch.zeros(shape, device=w_plus.device) if d is None else d.expand(shape))
        return self._batched("generator", tensors)[0]

    def describe(self) -> str:
        return self.note


def _cache_folder(model, iterations: int | None, batch: int | None) -> Path:
    parts = [model_fingerprint(model)[:24], family_of(model).name]
    if iterations is not None:
        parts.append(f"it{iterations}")
    if batch is not None:
        parts.append(f"b{batch}")
    return export_cache_dir() / "-".join(parts)


def _prepare(model, backend: str, precision: str, iterations: int | None, batch: int | None) -> OnnxBackend:
    family = family_of(model)
    iterations = family.iterations(iterations, model) if family.iterative else None
    if not family.fixed_batch_graphs:
        batch = None
    elif batch is None:
        batch = 1
    folder = _cache_folder(model, iterations, batch)
    meta = None
    if (folder / EXPORT_FILE).is_file():
        try:
            meta = read_export(folder)
        except ExportError:
            meta = None
        if meta is not None and not all((folder / g["file"]).is_file() for g in meta["graphs"].values()):
            meta = None
    if meta is None:
        logger.info("exporting the model to ONNX into %s (first use)", folder)
        attached, model.backend = model.backend, None  # the export traces the PyTorch path
        try:
            meta = export_onnx(
                model, folder, source=getattr(model, "source", None), iterations=iterations,
                graphs=("encoder", "generator"), batch=batch,
            ).metadata
        finally:
            model.backend = attached
        made = "exported on first use"
    else:
        made = "cached export"
    note = f"backend {backend} ({precision}; {made} in {folder})"
    return OnnxBackend(model, backend, precision, folder, meta, note)


def detach_backend(model: torch.nn.Module) -> None:
    """Run ``model`` on PyTorch again, freeing the native sessions of an attached backend now."""
    attached = getattr(model, "backend", None)
    model.backend = None
    if attached is not None and hasattr(attached, "close"):
        attached.close()


def attach_backend(
    model: torch.nn.Module, backend: str = "torch", precision: str = "fp32", batch: int | None = None,
    iterations: int | None = None,
) -> str:
    """Run ``model``'s encode/decode on ``backend`` from now on; returns what was chosen.

    Args:
        model: a loaded model of any registered family.
        backend: ``torch`` (detach any other), ``onnxruntime`` or ``openvino``.
        precision: a precision the backend runs (:data:`BACKEND_PRECISIONS`); for
            ``torch`` use :func:`instyle.models.runtime.set_runtime` instead.
        batch: a fixed-batch family's graphs' batch (``Family.fixed_batch_graphs``, none
            today; default 1; other batch sizes are chunked to it).
        iterations: ReStyle / HyperStyle steps unrolled into the encoder graph (default
            the model's).

    Raises:
        instyle.utils.config.ConfigError: an unknown backend or a precision it does not run.
        instyle.errors.MissingExtraError: the backend's package is not installed.
        instyle.export.ExportError: the export failed its parity check.
    """
    check_choice("backend", backend, BACKENDS)
    if precision not in BACKEND_PRECISIONS[backend]:
        raise ConfigError(
            f"precision={precision!r} is not run by backend {backend!r}; it runs {list(BACKEND_PRECISIONS[backend])}"
        )
    if backend == "torch":
        detach_backend(model)
        return "backend torch"
    device = next(model.parameters()).device
    if device.type != "cpu" and not (backend == "onnxruntime" and device.type == "cuda"):
        raise ConfigError(f"backend {backend!r} runs on the CPU here, the model is on {device}; use --device cpu")
    require(_MODULES[backend])
    detach_backend(model)
    attached = _prepare(model, backend, precision, iterations, batch)
    model.backend = attached
    return attached.note
