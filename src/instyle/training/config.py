"""The training configuration: every option of the original ``train_options.py`` plus
instyle's own (seed, precision, noise, ...). Saved as ``config.json`` in the run folder,
so a run can be reproduced from its folder alone.

Defaults are the original's command-line defaults (e.g. ``id_lambda=0``,
``start_from_latent_avg=False``); the task presets (``--preset inversion`` ...) apply
the published recipes on top.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instyle.data.transforms import SOURCE_MODES
from instyle.losses.objective import ObjectiveConfig
from instyle.models.encoders import ENCODER_TYPES
from instyle.models.encoders.hypernetwork import DEFAULT_LAYERS_TO_TUNE
from instyle.models.encoders.psp_encoders import MAX_INPUT_NC, MAX_INPUT_SIZE
from instyle.models.stylegan2 import MAX_SIZE
from instyle.training.hooks import training_families, training_hooks
from instyle.training.optim import OPTIMIZERS
from instyle.training.sfe import DEFAULT_SFE_EDITS
from instyle.utils.atomic import atomic_path
from instyle.utils.config import ConfigError, DictConfig, check_choice, check_int_range, check_power_of_two, from_dict
from instyle.utils.precision import PRECISIONS

__all__ = ["OBJECTIVE_KEYS", "PRECISIONS", "TrainConfig", "accepted_keys", "check_psp_options", "flatten_objective_keys",
           "nest_objective_keys", "parse_overrides"]

ENCODER_INITS = ("ir_se50", "resnet34", "iresnet50", "random")
#: Bounds of the counts a config (``--set KEY=VALUE`` or a run's config.json) may ask for.
MAX_BATCH = 4096
MAX_WORKERS = 256
MAX_STEPS = 10**9
MAX_ITERS_PER_BATCH = 100
MAX_POOL = 1_000_000


def available_cpus() -> int:
    """CPUs this process may run on (its affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(original: int) -> int:
    """The original's loader worker count, capped at the CPUs this process may use (more
    processes than CPUs only contend, and PyTorch warns about it)."""
    return max(0, min(original, available_cpus()))


#: The objective's keys, which a config also takes flat (``lpips_lambda=0.5``, ``--set
#: lpips_lambda=0.5``, an older run's flat ``config.json``) besides nested under ``objective``.
OBJECTIVE_KEYS = tuple(f.name for f in dataclasses.fields(ObjectiveConfig))


def check_psp_options(cfg: TrainConfig) -> None:
    """The plain pSp family's own check (a family with a ``validate`` training hook checks
    its options there, :mod:`instyle.training.hooks`)."""
    check_choice("encoder_type", cfg.encoder_type, ENCODER_TYPES)


def nest_objective_keys(values: dict) -> dict:
    """``values`` with its flat objective keys (``lpips_lambda`` ...) moved under ``objective``;
    a flat key overrides the same key of a nested ``objective`` mapping (as ``--set`` overrides a
    run's saved config), and a nested :class:`ObjectiveConfig` is taken as its fields."""
    flat = {k: values[k] for k in OBJECTIVE_KEYS if k in values}
    if not flat:
        return values
    out = {k: v for k, v in values.items() if k not in flat}
    nested = out.get("objective")
    if isinstance(nested, ObjectiveConfig):
        nested = nested.to_dict()
    elif nested is None:
        nested = {}
    elif not isinstance(nested, dict):
        raise ConfigError(f"objective={nested!r} must be a mapping of {list(OBJECTIVE_KEYS)}")
    out["objective"] = {**nested, **flat}
    return out


def flatten_objective_keys(values: dict) -> dict:
    """The inverse of :func:`nest_objective_keys`: a nested ``objective`` mapping's keys moved to
    the top (a flat key already there wins, as in :func:`nest_objective_keys`)."""
    nested = values.get("objective")
    if isinstance(nested, ObjectiveConfig):
        nested = nested.to_dict()
    if not isinstance(nested, dict):
        return values
    return {**nested, **{k: v for k, v in values.items() if k != "objective"}}


def _flat_objective_keys(cls):
    """Let ``cls(...)`` (hence ``dataclasses.replace``) take the objective's keys flat."""
    dataclass_init = cls.__init__

    @functools.wraps(dataclass_init)
    def __init__(self, *args, **kwargs):
        dataclass_init(self, *args, **nest_objective_keys(kwargs))

    cls.__init__ = __init__
    return cls


@_flat_objective_keys
@dataclass
class TrainConfig(DictConfig):
    """All options of a training run (JSON-serialisable; the objective nested).

    Data:
        task: name of the preset the run was set up from (stored in the model config).
        train_target, train_source: target folder and optional input folder (paired by
            file name; without a source folder the target is the input, possibly
            through the task's input transform). Same for ``val_*`` (optional).
        source_mode: ``rgb`` | ``gray`` (sketches) | ``label`` (segmentation maps).
        flip: random horizontal flip of source and target together (photos only).
        image_size: side of inputs and targets, and of ``resize=True`` outputs (256).
        input_nc, label_nc: encoder input channels; label classes (``label`` mode).
        resize_factors: super-resolution factors (e.g. ``"1,2,4,8,16,32"``), for tasks.
        batch_size, test_batch_size: per process. workers, test_workers: loader workers
        (default: the original's 4 and 2, capped at the CPUs this process may use).
    Model:
        stylegan_weights: pretrained StyleGAN2 (any format ``instyle.load_generator``
            reads), for training from scratch.
        checkpoint_path: start from this pSp checkpoint (official ``.pt`` or own) instead.
        encoder_type, output_size (None: the generator's), learn_in_w, train_decoder: as the original.
        family: ``psp``, ``e4e``, ``restyle``, ``hyperstyle`` or ``restyle3`` (ReStyle-pSp / -e4e over
            StyleGAN3, :mod:`instyle.training.restyle3`). ReStyle: ``input_nc`` = the
            images' 3 channels, the encoder sees 6; ``n_iters_per_batch`` refinement steps per
            batch, each with its own backward, one optimiser step, as the official ReStyle coach.
            ``hyperstyle``: a hypernetwork (``encoder_type`` one of ``HYPERNET_TYPES``, trunk
            widths/units from ``encoder_widths``/``encoder_units``) over a frozen W-encoder
            (``w_encoder_checkpoint_path``) and generator, tuning ``layers_to_tune``, with
            ``n_iters_per_batch`` iterations per batch as the official HyperStyle coach.
        e4e (as ``options/train_options.py`` of the original): w_discriminator_lambda (0: no
            discriminator), w_discriminator_lr, r1, d_reg_every, use_w_pool, w_pool_size,
            delta_norm, delta_norm_lambda, progressive_start (None: all offsets from the start),
            progressive_step_every.
        freeze_batchnorm: keep the encoder's BatchNorm layers in eval mode while training
            (the original trains them; freezing suits small per-device batches).
        encoder_init: ``ir_se50`` (the original: backbone from ``ir_se50_weights``) or
            ``random``; ``resnet34`` for HyperStyle's hypernetwork (torchvision's ImageNet
            ResNet-34 from ``resnet34_weights`` or torchvision's cache, as the original).
            encoder_widths / encoder_units: narrow encoders (tests, demos).
    Objective: ``objective``, an :class:`instyle.losses.ObjectiveConfig` (loss weights, loss
        networks' weights and ``start_from_latent_avg``, which the model follows too). Its keys
        are also accepted flat, as keywords (``TrainConfig(lpips_lambda=0.5)``), in
        :meth:`from_dict` and ``--set lpips_lambda=0.5``; read them as ``cfg.objective.lpips_lambda``.
    Optimisation: optim_name (``ranger``/``adam``), learning_rate (1e-4 as the code;
        the paper says 1e-3), max_steps, seed, randomize_noise (fresh StyleGAN noise
        every forward, as the original; False uses the stored noise buffers).
    Logging: board_interval (scalars), image_interval (image grids), val_interval,
        save_interval (None: only at the end), val_max_batches, progress (bar).
    Performance: device, precision (``fp32``/``bf16``/``fp16``), channels_last,
        sync_batchnorm (multi-GPU only).
    """

    # data
    task: str = "inversion"
    train_target: str | None = None
    train_source: str | None = None
    val_target: str | None = None
    val_source: str | None = None
    source_mode: str = "rgb"
    flip: bool = True
    image_size: int = 256
    input_nc: int = 3
    label_nc: int = 0
    resize_factors: str | None = None
    batch_size: int = 4
    test_batch_size: int = 2
    workers: int = dataclasses.field(default_factory=lambda: default_workers(4))
    test_workers: int = dataclasses.field(default_factory=lambda: default_workers(2))
    # model
    stylegan_weights: str | None = None
    checkpoint_path: str | None = None
    encoder_type: str = "GradualStyleEncoder"
    family: str = "psp"
    n_iters_per_batch: int = 5
    w_discriminator_lambda: float = 0.0
    w_discriminator_lr: float = 2e-5
    r1: float = 10.0
    d_reg_every: int = 16
    use_w_pool: bool = False
    w_pool_size: int = 50
    delta_norm: int = 2
    delta_norm_lambda: float = 2e-4
    progressive_start: int | None = None
    progressive_step_every: int = 2000
    w_encoder_checkpoint_path: str | None = None
    resnet34_weights: str | None = None
    iresnet50_weights: str | None = None
    layers_to_tune: str = ",".join(map(str, DEFAULT_LAYERS_TO_TUNE))
    output_size: int | None = None
    # StyleFeatureEditor (family='sfe', see instyle.training.sfe)
    sfe_phase: str = "inverter"
    sfe_feature_index: int = 9
    sfe_feature_scale_steps: int = 10000
    feat_rec_lambda: float = 0.0
    adv_lambda: float = 0.0
    discriminator_weights: str | None = None
    d_start_step: int = 150000
    d_learning_rate: float = 1e-4
    e4e_checkpoint_path: str | None = None
    sfe_edits_dir: str | None = None
    sfe_edits: str = DEFAULT_SFE_EDITS
    learn_in_w: bool = False
    train_decoder: bool = False
    freeze_batchnorm: bool = False
    encoder_init: str = "ir_se50"
    encoder_widths: tuple[int, int, int, int] | None = None
    encoder_units: tuple[int, int, int, int] | None = None
    # objective: the loss weights and loss networks, also given with their flat names
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
    # optimisation
    optim_name: str = "ranger"
    learning_rate: float = 1e-4
    max_steps: int = 500000
    seed: int = 0
    randomize_noise: bool = True
    # logging and checkpoints
    image_interval: int = 100
    board_interval: int = 50
    val_interval: int = 1000
    save_interval: int | None = None
    val_max_batches: int | None = None
    progress: bool = True
    # performance
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    sync_batchnorm: bool = False

    def __post_init__(self):
        self._nested_from_dicts()
        if not isinstance(self.objective, ObjectiveConfig):
            raise ConfigError(f"objective={self.objective!r} must be an ObjectiveConfig or a mapping of "
                              f"{list(OBJECTIVE_KEYS)}")
        check_choice("source_mode", self.source_mode, SOURCE_MODES)
        check_choice("family", self.family, training_families())
        hooks = training_hooks(self.family)
        (hooks.validate or check_psp_options)(self)
        check_choice("encoder_init", self.encoder_init, ENCODER_INITS)
        if self.encoder_init not in hooks.encoder_inits:
            raise ConfigError(f"encoder_init={self.encoder_init!r}: family={self.family!r} starts its encoder from one "
                              f"of {list(hooks.encoder_inits)}")
        check_choice("optim_name", self.optim_name, OPTIMIZERS)
        check_choice("precision", self.precision, PRECISIONS)
        check_power_of_two("image_size", self.image_size, minimum=32)
        check_int_range("image_size", self.image_size, 32, MAX_INPUT_SIZE)
        if self.output_size is not None:
            check_power_of_two("output_size", self.output_size, minimum=8)
            check_int_range("output_size", self.output_size, 8, MAX_SIZE)
        for name, maximum in (("input_nc", MAX_INPUT_NC), ("batch_size", MAX_BATCH), ("test_batch_size", MAX_BATCH),
                              ("max_steps", MAX_STEPS), ("image_interval", MAX_STEPS), ("board_interval", MAX_STEPS),
                              ("val_interval", MAX_STEPS)):
            check_int_range(name, getattr(self, name), 1, maximum)
        for name in ("save_interval", "val_max_batches"):
            if getattr(self, name) is not None:
                check_int_range(name, getattr(self, name), 1, MAX_STEPS)
        for name, maximum in (("workers", MAX_WORKERS), ("test_workers", MAX_WORKERS), ("label_nc", MAX_INPUT_NC)):
            check_int_range(name, getattr(self, name), 0, maximum)
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate={self.learning_rate!r} must be > 0")
        if self.learn_in_w != (self.encoder_type == "BackboneEncoderUsingLastLayerIntoW"):
            raise ConfigError(
                f"learn_in_w={self.learn_in_w} does not fit encoder_type={self.encoder_type!r}: learn_in_w must be "
                "true exactly for BackboneEncoderUsingLastLayerIntoW"
            )
        if self.source_mode == "label" and (self.label_nc < 1 or self.input_nc != self.label_nc):
            raise ConfigError(f"source_mode='label' needs label_nc >= 1 and input_nc == label_nc (got {self.label_nc}, {self.input_nc})")
        if self.source_mode == "gray" and self.input_nc != 1:
            raise ConfigError(f"source_mode='gray' gives 1-channel inputs, but input_nc={self.input_nc}")
        if self.flip and self.source_mode == "label":
            raise ConfigError("flip=true with label-map inputs would mirror left/right classes; set flip=false")
        o = self.objective
        if self.image_size != 256 and hooks.objective_at_image_size and (o.id_lambda > 0 or o.lpips_lambda_crop > 0 or o.l2_lambda_crop > 0):
            raise ConfigError(
                f"id_lambda, lpips_lambda_crop and l2_lambda_crop use the 256x256 face window; image_size="
                f"{self.image_size} needs them at 0"
            )

    def tuned_layers(self) -> tuple[int, ...]:
        """``layers_to_tune`` as indices (``"0,2,3"`` -> ``(0, 2, 3)``)."""
        try:
            layers = tuple(int(v) for v in str(self.layers_to_tune).split(",") if v.strip())
        except ValueError:
            layers = ()
        if not layers or min(layers) < 0:
            raise ConfigError(f"layers_to_tune={self.layers_to_tune!r} must be comma-separated layer indices "
                              "(e.g. '0,2,3,5,6')")
        return layers

    # ------------------------------------------------------------------ views

    @property
    def effective_save_interval(self) -> int:
        return self.save_interval or self.max_steps

    # ------------------------------------------------------------------ (de)serialisation

    # ``to_dict``: :class:`DictConfig`'s (every field, the objective nested).

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build and validate from a mapping: the nested form ``to_dict`` writes, or the flat
        one (the objective's keys at the top, as older runs' ``config.json``), or both (a flat
        key overrides the nested one). Unknown keys raise a :class:`ConfigError` naming them."""
        if not isinstance(d, dict):
            raise ConfigError(f"a training config must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - set(accepted_keys()) - {"objective"})
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown}; accepted keys: {accepted_keys()}")
        return from_dict(cls, nest_objective_keys(d), cls.SECTION)

    def to_flat_dict(self) -> dict:
        """Every key in its flat ``--set`` spelling (the objective's keys at the top)."""
        return flatten_objective_keys(self.to_dict())

    def replace(self, **changes) -> TrainConfig:
        """A validated copy with ``changes`` (flat keys, JSON-ish values coerced)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: unreadable training config ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a training config must be a JSON object")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def accepted_keys() -> list[str]:
    """The keys a config takes in their flat ``--set`` spelling (the objective's included)."""
    return sorted({f.name for f in dataclasses.fields(TrainConfig)} - {"objective"} | set(OBJECTIVE_KEYS))


def _is_str_field(tp: Any) -> bool:
    return tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict. Values are JSON when they parse (``0.5``, ``true``,
    ``[8,16,32,64]``, ``null``), else strings; string options keep the text as is.

    Raises:
        ConfigError: malformed item or unknown key (listing the accepted keys).
    """
    hints = {**typing.get_type_hints(ObjectiveConfig), **typing.get_type_hints(TrainConfig)}
    hints.pop("objective")
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        if key not in hints:
            raise ConfigError(f"unknown config key {key!r}; accepted keys: {accepted_keys()}")
        if text.lower() in ("null", "none"):
            out[key] = None
        elif _is_str_field(hints[key]):
            out[key] = text
        else:
            try:
                out[key] = json.loads(text)
            except json.JSONDecodeError:
                out[key] = text
    return out

