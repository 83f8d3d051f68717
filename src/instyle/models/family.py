"""Model families: one registry of what each family is, one protocol every family's model
speaks.

A *family* is one published line of inversion models (pSp, e4e, ReStyle, HyperStyle,
StyleFeatureEditor, ...). Each registers one :class:`Family` record from its own model module
(``register_family(Family(...))`` at the bottom of ``models/psp.py``, ``models/hyperstyle.py``,
``models/sfe.py``); how an *official* file of the family is recognised and read registers
from ``interop/`` (:mod:`instyle.interop.readers`), so no layer imports upward.

Everything outside a family's own modules asks the record (``family_of(model)``) or the
model itself (:class:`InversionModel`) instead of testing which family a model is: that
keeps adding a family to "add its files, add one registry line" (see ``docs/families.md``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "DEFAULT_ITERATIONS",
    "ENCODINGS",
    "ExtraOps",
    "Family",
    "GraphSurface",
    "InputSpec",
    "InversionModel",
    "family_for_kind",
    "family_of",
    "get_family",
    "list_families",
    "model_kinds",
    "register_family",
]

#: Refinement steps of an iterative family when none are asked (ReStyle's and HyperStyle's 5).
DEFAULT_ITERATIONS = 5
#: What an encoding holds besides the W+ latent: nothing, per-image generator weight offsets
#: (HyperStyle), or a feature map of the generator (StyleFeatureEditor).
ENCODINGS = ("latent", "offsets", "features")


@dataclass(frozen=True)
class Family:
    """What instyle knows about one model family.

    Attributes:
        name: the family's name (``PSPConfig.family``, ``model.family``).
        title: how people write it (``"HyperStyle"``), for messages.
        model_class, config_class: the ``nn.Module`` and its dataclass config.
        kind: the own-format ``config.json`` ``kind`` its folders carry (several families
            may share one kind and one class, told apart by their config).
        encoding: what re-rendering needs besides W+ (one of :data:`ENCODINGS`).
        iterative: ``encode`` takes ``iterations`` (refinement steps); else it runs once.
        default_iterations: steps of an iterative family when none are asked (1 otherwise).
        runtime: the model takes precision / ``torch.compile`` settings
            (:func:`instyle.models.runtime.set_runtime`); else it runs in fp32 only.
        companions: the extra files an official checkpoint of the family needs, by the
            keyword ``instyle.load`` takes them with (``{"w_encoder": "the W-encoder"}``).
        fixed_batch_graphs: its exported graphs are traced at one batch size (offsets).
        photos_at_output_size: it inverts photos given at the generator's size (inversion
            only), not the task inputs at ``input_size``.
        transform: its generator renders a latent under a ``[3, 3]`` transform (StyleGAN3:
            ``encode --unaligned`` saves one with each latent).
        refine_defaults: per refinement method (``"pti"``, ``"optimize"``), the
            :class:`~instyle.inference.refine.RefineConfig` fields the family's publications
            use instead of the general defaults (e.g. stylegan3-editing's PTI for images);
            ``"video_pti"``: the :class:`~instyle.video.tune.ClipTuneConfig` fields of
            ``video --pti`` (stylegan3-editing's ``run_pti_video.py``; else STIT's).
        video_latents: how ``instyle video`` post-processes a clip's per-frame W+ codes before
            rendering (:func:`instyle.video.track.postprocess_latents`): ``"average_from"``
            (W+ rows from this index on replaced by their mean over the clip) and
            ``"smoothing"`` (``"five-tap"``: the temporal kernel of stylegan3-editing's
            ``smooth_ws``); empty: none (the clip's codes render as encoded).
        exportable: ``instyle export`` can trace it to ONNX graphs.
        editable_latents: its latents may be edited / mixed / interpolated by the shared
            latent tools (False: it has its own editing path).
        editing: the ``inference`` module with the family's own editing (its
            ``edit_encoding(model, enc, steps, mask=None)``, see
            :func:`instyle.inference.encoding.edit_encoding`); empty: the shared latent edits.
        extra_ops: how the family's extra (see ``encoding``) is sliced, joined, blended and moved
            (:class:`ExtraOps`); None for a family whose latents carry nothing else.
        reader: the ``interop`` module that registers how an official file of the family is
            recognised and read (:mod:`instyle.interop.readers`); empty: own format only.
        training: unused here: a family's training hooks register from its training module
            (:mod:`instyle.training.hooks`, keyed by family name), above this layer.
    """

    name: str
    title: str
    model_class: type
    config_class: type
    kind: str
    encoding: str = "latent"
    iterative: bool = False
    default_iterations: int = 1
    runtime: bool = True
    companions: dict[str, str] = field(default_factory=dict)
    fixed_batch_graphs: bool = False
    exportable: bool = False
    photos_at_output_size: bool = False
    transform: bool = False
    refine_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    video_latents: dict[str, Any] = field(default_factory=dict)
    editable_latents: bool = True
    editing: str = ""
    extra_ops: Any = None
    reader: str = ""
    training: Any = None

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise ValueError(f"Family {self.name!r}: encoding={self.encoding!r} is not one of {ENCODINGS}")
        if not self.iterative and self.default_iterations != 1:
            raise ValueError(f"Family {self.name!r}: a single-pass family has default_iterations 1")

    def iterations(self, asked: int | None, model: Any = None) -> int:
        """Steps one encode runs for ``asked`` (None: ``model.default_iterations`` if a model
        is given, else the family's default; a single-pass family: 1)."""
        if not self.iterative:
            return 1
        return asked or int(getattr(model, "default_iterations", None) or self.default_iterations)


@dataclass(frozen=True)
class InputSpec:
    """What a model's inputs are, for the shared input tools (preparation, previews, the demo).
    Every family's config gives one (``config.input_spec``), and so does its model.

    Attributes:
        task: the task preset that makes its inputs (``instyle.tasks``; ``"inversion"``: photos).
        channels: channels of the input images (ReStyle: 3, its encoder sees 6).
        height, width: the side the inputs are prepared at (the cars models: 192 x 256).
        label_nc: classes of a label-map input (0 otherwise).
    """

    task: str = "inversion"
    channels: int = 3
    height: int = 256
    width: int = 256
    label_nc: int = 0


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` to the registry (its own model module calls this once)."""
    if family.name in _FAMILIES and _FAMILIES[family.name] != family:
        raise ValueError(f"model family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


#: The modules that register the families: the one line a new family adds itself to.
FAMILY_MODULES = ("instyle.models.psp", "instyle.models.hyperstyle", "instyle.models.sfe", "instyle.models.restyle3")


def _ensure_loaded() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(module)


def _order(f: Family) -> int:
    module = f.model_class.__module__
    return FAMILY_MODULES.index(module) if module in FAMILY_MODULES else len(FAMILY_MODULES)


def list_families() -> list[str]:
    """The registered family names, in :data:`FAMILY_MODULES` order (then registration order)."""
    _ensure_loaded()
    return [f.name for f in sorted(_FAMILIES.values(), key=_order)]


def get_family(name: str) -> Family:
    """The record of the family called ``name``.

    Raises:
        ValueError: unknown name (naming the registered ones).
    """
    _ensure_loaded()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; registered: {list(_FAMILIES)}") from None


def family_of(model: Any) -> Family:
    """The record of a model's family (``model.family``).

    Raises:
        ValueError: ``model`` is not an inversion model of a registered family.
    """
    name = getattr(model, "family", None)
    if not isinstance(name, str):
        raise ValueError(f"{type(model).__name__} is not an inversion model of a registered family")
    return get_family(name)


def family_for_kind(kind: str) -> Family:
    """The (first registered) family whose own-format folders carry ``kind``."""
    _ensure_loaded()
    for f in map(get_family, list_families()):
        if f.kind == kind:
            return f
    raise ValueError(f"no model family writes own-format kind {kind!r}")


def model_kinds() -> dict[str, type]:
    """Own-format kind -> model class, over the registered families."""
    _ensure_loaded()
    out: dict[str, type] = {}
    for f in map(get_family, list_families()):
        out.setdefault(f.kind, f.model_class)
    return out


@dataclass
class GraphSurface:
    """What an ONNX export traces of a model whose encoding is more than W+ (a family's model
    returns one from ``graph_surface(iterations)``; pSp, e4e, ReStyle and HyperStyle use the
    exporter's own). Every tensor has the batch first; each callable is plain PyTorch.

    Attributes:
        encode: ``image [B, C, H, W]`` (at ``input_hw``) -> the tensors ``encoder_outputs`` names.
        render: the tensors ``generator_inputs`` names -> the generator's raw image ``[B, 3, S, S]``.
        reconstruct: ``image`` -> what the model reconstructs (render of the inversion).
        encoder_outputs, generator_inputs: the graphs' tensor names (the first is ``w_plus``).
        example_inputs: ``(encoder outputs, seed)`` -> generator inputs that exercise every
            input (e.g. random edit deltas or transforms), for tracing and the parity check.
        described: what a deployer feeds each extra input (recorded in ``export.json``).
    """

    encode: Callable[..., tuple]
    render: Callable[..., torch.Tensor]
    reconstruct: Callable[[torch.Tensor], torch.Tensor]
    encoder_outputs: tuple[str, ...]
    generator_inputs: tuple[str, ...]
    example_inputs: Callable[[tuple, int], tuple]
    described: dict[str, str] = field(default_factory=dict)


class ExtraOps(Protocol):
    """What :class:`~instyle.inference.encoding.Encoding` asks of a family's extra (HyperStyle's
    offsets, StyleFeatureEditor's encoding, a StyleGAN3 transform). A batch-1 extra is shared
    by every latent of a batch (an image's edits render on that image's own extra)."""

    def take(self, extra: Any, index: slice) -> Any:
        """Rows ``index`` of a batch's extra (a shared batch-1 extra whole)."""

    def cat(self, extras: list[Any]) -> Any:
        """One extra of several batches' (in order)."""

    def blend(self, extras: list[Any], weights: torch.Tensor) -> Any:
        """``weights [F, n]`` sums of ``n`` batch-1 extras: ``F`` rows (interpolation frames)."""

    def to(self, extra: Any, device: Any) -> Any:
        """The extra on ``device``."""


@runtime_checkable
class InversionModel(Protocol):
    """What every family's model offers the shared tools (``encode`` / ``decode`` keep each
    family's own signature; :mod:`instyle.inference.encoding` turns them into one
    :class:`~instyle.inference.encoding.Encoding` and one ``render``).

    Attributes:
        family: the registry name (:func:`family_of` gives the record).
        config: the family's dataclass config.
        n_styles, output_size, input_size, input_nc: W+ rows, generated side, encoder
            input side, input image channels.
        pooled_size: the side of ``resize=True`` outputs (256 for the published models).
        input_spec: what its inputs are (:class:`InputSpec`: task, channels, size, label classes).
        latent_avg: the average latent the model starts from.
    """

    family: str
    config: Any
    latent_avg: torch.Tensor
    random_weights: bool

    @property
    def n_styles(self) -> int: ...

    @property
    def output_size(self) -> int: ...

    @property
    def input_size(self) -> int: ...

    @property
    def input_nc(self) -> int: ...

    @property
    def pooled_size(self) -> int: ...

    @property
    def input_spec(self) -> InputSpec: ...

    def encode(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any: ...

    def decode(self, *args: Any, **kwargs: Any) -> torch.Tensor: ...

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path: ...

