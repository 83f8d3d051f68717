"""Official HyperStyle checkpoints (``yuval-alaluf/hyperstyle``) and their W-encoder files.

A HyperStyle file holds ``hypernet.*`` and ``decoder.*`` tensors, ``opts`` and
``latent_avg``; the W-encoder lives in a separate pSp-format file (``encoder.*`` =
``WEncoder``, plus an unused channel-multiplier-1 ``decoder.*``) whose path the original
takes from the inference options, never from the stored ``opts``. Here it is an explicit
argument: ``instyle.load(path, w_encoder=PATH)``.

The architecture is read from the tensors and cross-checked against ``opts``. The
original stores the one shared hypernet under every shared block's ``hypernet.*`` as
well; those copies must agree and are folded into ``hypernet.shared_weight_hypernet.*``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from instyle.errors import CheckpointError
from instyle.interop.keymaps import (
    ArchitectureError,
    encoder_config_from_state_dict,
    generator_config_from_state_dict,
    strip_prefix,
)
from instyle.interop.published import Published, published, register_published
from instyle.interop.readers import OfficialReader, register_reader
from instyle.interop.safe_load import safe_torch_load
from instyle.models.encoders.hypernetwork import HYPERNET_TYPES, SHARED_LAYERS, HyperNetConfig, weight_layer_shapes
from instyle.models.encoders.w_encoder import WEncoderConfig
from instyle.models.hyperstyle import HyperStyle, HyperStyleConfig
from instyle.models.own_format import build_empty, load_state_checked
from instyle.models.stylegan2 import GeneratorConfig

__all__ = [
    "is_hyperstyle_checkpoint",
    "hypernet_config_from_state_dict",
    "read_official_hyperstyle",
    "read_w_encoder",
    "hyperstyle_from_checkpoint",
]

HYPERSTYLE_DOWNLOADS = "https://github.com/yuval-alaluf/hyperstyle#pretrained-models"
# The published HyperStyle checkpoints and the W-encoder file each one needs.
register_published(*(
    Published(name, "hyperstyle", "inversion", domain, size, HYPERSTYLE_DOWNLOADS, companions={"w_encoder": w})
    for name, domain, size, w in (
        ("hyperstyle_ffhq.pt", "faces (FFHQ)", 1024, "faces_w_encoder.pt"),
        ("hyperstyle_cars.pt", "cars", 512, "cars_w_encoder.pt"),
        ("hyperstyle_afhq_wild.pt", "wild animals (AFHQ wild)", 512, "afhq_wild_w_encoder.pt"),
    )
))
SHARED_PARAMS = ("w1", "b1", "w2", "b2")


def is_hyperstyle_checkpoint(obj: Any) -> bool:
    """A loaded object is an official HyperStyle checkpoint (``state_dict`` with ``hypernet.*``)."""
    sd = obj.get("state_dict") if isinstance(obj, Mapping) else None
    return isinstance(sd, Mapping) and any(str(k).startswith("hypernet.") for k in sd)


def _stages(sd: Mapping[str, torch.Tensor], n_blocks: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(widths, units) of the ResNet trunk: a stage starts at every block after the first
    that has a ``downsample`` shortcut (stride 2)."""
    widths: list[int] = []
    units: list[int] = []
    for i in range(n_blocks):
        if i == 0 or f"body.{i}.downsample.0.weight" in sd:
            widths.append(int(sd[f"body.{i}.conv1.weight"].shape[0]))
            units.append(0)
        units[-1] += 1
    return tuple(widths), tuple(units)


def _fold_shared(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Check every block's copy of the shared hypernet equals ``shared_weight_hypernet.*``
    and drop the copies."""
    out = dict(sd)
    for key in list(sd):
        m = re.fullmatch(r"refinement_blocks\.(\d+)\.hypernet\.(\w+)", key)
        if not m:
            continue
        shared = sd.get(f"shared_weight_hypernet.{m.group(2)}")
        copy = out.pop(key)
        same = shared is not None and (
            copy.data_ptr() == shared.data_ptr() and copy.shape == shared.shape or torch.equal(copy, shared)
        )
        if not same:
            raise ArchitectureError(
                f"hypernet.{key} differs from hypernet.shared_weight_hypernet.{m.group(2)}: the shared "
                "hypernet must be one tensor used by every shared block"
            )
    return out


def hypernet_config_from_state_dict(
    sd: Mapping[str, torch.Tensor], generator: GeneratorConfig, encoder_type: str | None = None
) -> HyperNetConfig:
    """Hypernetwork architecture from its tensors (no ``hypernet.`` prefix, copies folded)."""
    if "conv1.weight" not in sd or "shared_weight_hypernet.w1" not in sd:
        raise ArchitectureError("not a HyperStyle hypernetwork: missing conv1.weight or shared_weight_hypernet.w1")
    n_blocks = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.conv1\.", k))), default=-1)
    widths, units = _stages(sd, n_blocks)
    if len(widths) != 4:
        raise ArchitectureError(f"hypernet trunk has stages of widths {widths}; expected 4 ResNet stages")
    tuned = sorted({int(m.group(1)) for k in sd if (m := re.match(r"refinement_blocks\.(\d+)\.", k))})
    shapes = weight_layer_shapes(generator)
    if any(i >= len(shapes) for i in tuned):
        raise ArchitectureError(f"refinement blocks {tuned} but the {generator.size}px generator has {len(shapes)} weight layers")
    # The two variants differ only in the heads of non-shared 3x3 layers: those decide.
    if any(i not in SHARED_LAYERS and shapes[i][0] == 3 for i in tuned):
        kind = HYPERNET_TYPES[1] if any(".output.0.make_kernel_in." in k for k in sd) else HYPERNET_TYPES[0]
        if encoder_type in HYPERNET_TYPES and encoder_type != kind:
            raise ArchitectureError(f"opts['encoder_type']={encoder_type!r} but the tensors describe {kind}")
    else:
        kind = encoder_type if encoder_type in HYPERNET_TYPES else HYPERNET_TYPES[0]
    if encoder_type is not None and encoder_type not in HYPERNET_TYPES:
        raise ArchitectureError(f"opts['encoder_type']={encoder_type!r} is not a HyperStyle hypernetwork (accepted: {list(HYPERNET_TYPES)})")
    shared = [i for i in tuned if i in SHARED_LAYERS]
    other = [i for i in tuned if i not in SHARED_LAYERS]

    def n_convs(i: int) -> int:
        return len([k for k in sd if re.fullmatch(rf"refinement_blocks\.{i}\.convs\.\d+\.weight", k)])

    kw: dict[str, Any] = {}
    if shared:
        kw["shared_inner"] = int(sd[f"refinement_blocks.{shared[0]}.convs.0.weight"].shape[0])
        kw["feature_size"] = 2 ** (n_convs(shared[0]) - 1)
    if other:
        kw["inner"] = int(sd[f"refinement_blocks.{other[0]}.convs.0.weight"].shape[0])
    return HyperNetConfig.for_generator(
        generator, layers_to_tune=tuple(tuned), type=kind, input_nc=int(sd["conv1.weight"].shape[1]),
        widths=widths, units=units, code_dim=int(sd["shared_weight_hypernet.w1"].shape[0]), **kw,
    )


def _opts(ckpt: Mapping) -> dict:
    opts = ckpt.get("opts")
    if opts is not None and not isinstance(opts, Mapping):
        opts = vars(opts) if hasattr(opts, "__dict__") else None
    return dict(opts or {})


def _check_opts(opts: dict, gen: GeneratorConfig, hyper: HyperNetConfig) -> None:
    def differs(key, value):
        return key in opts and opts[key] is not None and opts[key] != value

    if differs("output_size", gen.size):
        raise ArchitectureError(f"opts['output_size']={opts['output_size']} but the decoder is {gen.size}px")
    if differs("n_hypernet_outputs", hyper.n_outputs):
        raise ArchitectureError(
            f"opts['n_hypernet_outputs']={opts['n_hypernet_outputs']} but the {gen.size}px generator has "
            f"{hyper.n_outputs} weight layers"
        )
    if differs("input_nc", hyper.input_nc):
        raise ArchitectureError(f"opts['input_nc']={opts['input_nc']} but hypernet.conv1 takes {hyper.input_nc}")
    layers = opts.get("layers_to_tune")
    if isinstance(layers, str) and layers.strip():
        wanted = tuple(sorted({int(v) for v in layers.split(",") if int(v) < hyper.n_outputs}))
        if wanted != hyper.layers_to_tune:
            raise ArchitectureError(
                f"opts['layers_to_tune']={layers!r} (below {hyper.n_outputs}: {list(wanted)}) but the file has "
                f"refinement blocks for {list(hyper.layers_to_tune)}"
            )


def read_official_hyperstyle(ckpt: Mapping, source: Any = "checkpoint"):
    """Pure conversion of a loaded HyperStyle checkpoint.

    Returns:
        ``(generator config, hypernet config, state dict without the W-encoder, latent_avg,
        opts)``; state keys are instyle's (``hypernet.*``, ``decoder.*``).
    """
    sd = ckpt.get("state_dict")
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{source}: no 'state_dict' in this HyperStyle checkpoint")
    opts = _opts(ckpt)
    try:
        gen = generator_config_from_state_dict(strip_prefix(sd, "decoder."))
        hyper_sd = _fold_shared(strip_prefix(sd, "hypernet."))
        hyper = hypernet_config_from_state_dict(hyper_sd, gen, opts.get("encoder_type"))
        _check_opts(opts, gen, hyper)
    except (ArchitectureError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from None
    state = {f"hypernet.{k}": v for k, v in hyper_sd.items()}
    state.update({k: v for k, v in sd.items() if k.startswith("decoder.")})
    avg = ckpt.get("latent_avg")
    if not isinstance(avg, torch.Tensor):
        raise CheckpointError(f"{source}: a HyperStyle checkpoint needs a 'latent_avg' tensor; this one has none")
    return gen, hyper, state, avg.float(), opts


#: ``opts['encoder_type']`` values of a W-encoder file.
W_ENCODER_TYPES = ("WEncoder", "BackboneEncoderUsingLastLayerIntoW")


def read_w_encoder(w_ckpt: Any, w_source: Any, generator: GeneratorConfig, source: Any):
    """``(WEncoderConfig, state dict 'w_encoder.*')`` from a loaded W-encoder checkpoint,
    checked to fit the HyperStyle model of ``source``: errors name both files."""
    def fail(why: str) -> CheckpointError:
        return CheckpointError(f"W-encoder {w_source} does not fit HyperStyle checkpoint {source}: {why}")

    sd = w_ckpt.get("state_dict") if isinstance(w_ckpt, Mapping) else None
    if not isinstance(sd, Mapping) or not any(str(k).startswith("encoder.") for k in sd):
        raise fail("it is not a W-encoder checkpoint (a dict with 'state_dict' holding encoder.* tensors)")
    enc_sd = strip_prefix(sd, "encoder.")
    if any(k.startswith(("styles.", "output_layer_2.")) for k in enc_sd) or "linear.weight" not in enc_sd:
        raise fail("its encoder is not a WEncoder (IR-SE backbone + one linear layer into W)")
    try:
        enc = encoder_config_from_state_dict(enc_sd, n_styles=generator.n_latent)
        dec_sd = strip_prefix(sd, "decoder.")
        w_gen = generator_config_from_state_dict(dec_sd) if dec_sd else None
    except (ArchitectureError, ValueError) as e:
        raise fail(str(e)) from None
    if enc.input_nc != 3:
        raise fail(f"its encoder takes {enc.input_nc} input channels, HyperStyle's W-encoder takes 3")
    opts = _opts(w_ckpt)
    # The published W-encoders were trained as pSp's W encoder (BackboneEncoderUsingLastLayerIntoW);
    # HyperStyle renames the class WEncoder when it loads them: both names describe these tensors.
    given_type = opts.get("encoder_type")
    if given_type is not None and given_type not in W_ENCODER_TYPES:
        raise fail(f"opts['encoder_type']={given_type!r} but its tensors describe a W encoder (accepted: {list(W_ENCODER_TYPES)})")
    for key, value, what in (("input_nc", enc.input_nc, "encoder input channels"),
                             ("output_size", w_gen.size if w_gen else None, "a generator of size"),
                             ("stylegan_size", w_gen.size if w_gen else None, "a generator of size")):
        given = opts.get(key)
        if given is not None and value is not None and given != value:
            raise fail(f"opts[{key!r}]={given!r} but its tensors describe {what} {value!r}")
    if enc.style_dim != generator.style_dim:
        raise fail(f"it predicts {enc.style_dim}-D codes but the generator's styles are {generator.style_dim}-D")
    if w_gen is not None and w_gen.size != generator.size:
        raise fail(f"it was trained for a {w_gen.size}px generator, the HyperStyle generator is {generator.size}px")
    config = WEncoderConfig(
        num_layers=enc.num_layers, mode=enc.mode, n_styles=generator.n_latent, style_dim=enc.style_dim,
        widths=enc.widths, units=enc.units,
    )
    return config, {f"w_encoder.{k}": v for k, v in enc_sd.items()}


def hyperstyle_from_checkpoint(
    ckpt: Mapping, source: Any, w_encoder: str | Path | None, resolve: Callable[[Any], Path] = Path
) -> HyperStyle:
    """Build a :class:`HyperStyle` (CPU, eval) from a loaded official checkpoint and the
    path of its W-encoder file (found with ``resolve``, e.g. also in the cache folder)."""
    gen, hyper, state, latent_avg, opts = read_official_hyperstyle(ckpt, source)
    if w_encoder is None:
        hint = opts.get("w_encoder_checkpoint_path")
        entry = published(Path(str(source)).name)
        if entry is not None and "w_encoder" in entry.companions:
            hint = f"{entry.companions['w_encoder']}, published with it"
        raise CheckpointError(
            f"{source} is a HyperStyle checkpoint: it needs its W-encoder file, which it does not contain"
            + (f" ({hint!r})" if hint else "")
            + "; pass it with instyle.load(path, w_encoder=PATH) or --w-encoder PATH"
        )
    try:
        w_path = resolve(w_encoder)
    except CheckpointError as e:
        raise CheckpointError(f"W-encoder for HyperStyle checkpoint {source}: {e}") from None
    w_ckpt = safe_torch_load(w_path, "W-encoder checkpoint")
    w_config, w_state = read_w_encoder(w_ckpt, w_path, gen, source)
    del w_ckpt
    config = HyperStyleConfig(
        generator=gen, hypernet=hyper, w_encoder=w_config, crop_cars="cars" in str(opts.get("dataset_type", "")),
    )
    model = build_empty(HyperStyle, config)
    try:
        avg = model.normalize_latent_avg(latent_avg)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    load_state_checked(model, {**state, **w_state, "latent_avg": avg}, f"{source} + {w_path}", assign=True)
    model.sync_decoder_latent_avg()
    model.source = str(source)
    model.w_encoder_source = str(w_path)
    return model.eval()


def _generator_part(ckpt: Mapping, source: Any) -> tuple[dict, torch.Tensor | None]:
    """The tuned generator before any per-image offsets, and its average latent."""
    avg = ckpt.get("latent_avg")
    return strip_prefix(ckpt["state_dict"], "decoder."), avg.float() if isinstance(avg, torch.Tensor) else None


register_reader(OfficialReader(
    family="hyperstyle", format="hyperstyle", recognise=is_hyperstyle_checkpoint, priority=10,
    read=lambda ckpt, p, resolve=Path, expected=None, w_encoder=None: hyperstyle_from_checkpoint(ckpt, p, w_encoder, resolve),
    generator=_generator_part,
))
