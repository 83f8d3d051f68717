"""StyleFeatureEditor (SFE; Bobkov et al., CVPR 2024): W+ plus a 64x64 generator feature.

An *inverter* predicts a W+ latent and a feature map from the image (``FSLikeBackbone``, an
ArcFace iresnet50 trunk), a *fuser* merges that feature with the generator's own feature at
the same layer, and a *feature editor* (``encoder``, ``ContentLayerDeepFast``) turns the
fused feature plus an edit delta into the feature that replaces the generator's feature
``config.feature_index`` (9: the second 64 px conv of a 1024 px generator) when rendering.
Edits move the latent; the delta is the generator feature of the e4e inversion minus that of
its edited copy (an e4e encoder is part of the model), exactly as the original inference::

    w_recon = fs_backbone(x256).latents + latent_avg;   w_e4e = e4e(x256) + latent_avg
    fused   = fuser(cat[predicted_feat, G.features(w_recon)[k]])
    image   = G(w_recon, feature k := editor(cat[fused, 0]))
    edit:     G(fn(w_recon), feature k := editor(cat[fused, G.f(w_e4e)[k] - G.f(fn(w_e4e))[k]]))

An *inverter-only* model (``editor=False``: the original's phase-1 ``FSEInverter``, e.g.
``sfe_inverter_light.pt``) has neither feature editor nor e4e encoder: it renders with the
fused feature itself and cannot edit.

Images are ``[B, 3, S, S]`` in [-1, 1] (``S`` = generator size; inputs are resized to
``config.input_size`` bilinearly, ``align_corners=False``, no antialiasing, as the original);
latents ``[B, n_latent, style_dim]``; features ``[B, C, R, R]`` (``R`` = the feature's
resolution, ``C`` the generator's channels there). ``latent_avg`` is the generator's ``[D]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instyle.models.encoders.e4e import Encoder4Editing
from instyle.models.encoders.psp_encoders import EncoderConfig
from instyle.models.family import Family, GraphSurface, InputSpec, register_family
from instyle.models.own_format import adopt_state, read_pretrained, write_pretrained
from instyle.models.stylegan2 import MAX_CHANNELS, Generator, GeneratorConfig
from instyle.utils.atomic import atomic_path
from instyle.utils.config import ConfigError, DictConfig, check_int_range, check_power_of_two
from instyle.utils.device import DEFAULT_DEVICE, resolve_device

__all__ = [
    "SFEConfig",
    "SFE",
    "SFEEncoding",
    "FSLikeBackbone",
    "ContentLayerDeepFast",
    "FeatureEncoderBlock",
    "IBasicBlock",
    "Inverter",
    "feature_resolution",
    "save_encoding",
]

#: iresnet50's residual units per stage (ArcFace).
IRESNET50_UNITS = (3, 4, 14, 3)
MAX_UNITS = 64
MAX_BLOCKS = 32
#: ``feature_scale = min(1, 1e-4 * n_iter)`` of the original at inference (``n_iter = 1e5``).
INFERENCE_FEATURE_SCALE = 1.0
#: Side of ``resize=True`` outputs (pooled for evaluation, as the other families' 256).
POOLED_SIZE = 256


def feature_resolution(index: int) -> int:
    """Resolution of generator feature ``index`` (``[0, 1]`` 4 px, ``[2, 3]`` 8 px, ...)."""
    return 4 if index < 2 else 2 ** (index // 2 + 2)


@dataclass
class SFEConfig(DictConfig):
    """Architecture of a StyleFeatureEditor model. Defaults are the original's (1024 px,
    18 styles, iresnet50 widths, ``ContentLayerDeepFast(6, 1024, 512)``, feature 9).

    Attributes:
        generator: the StyleGAN2 generator.
        e4e: the e4e encoder (``type="Encoder4Editing"``); default IR-SE-50 at the generator's styles.
        widths: channels of the FS backbone's 4 stages (the first has width ``widths[0]`` too).
        units: IBasicBlocks per stage (iresnet50: 3, 4, 14, 3).
        fuser_blocks: residual blocks of the fuser and of the feature editor (the original's ``len - 1`` = 5).
        feature_index: the generator feature that is predicted and replaced (9).
        input_size: side the encoders see (256); must be 4x the feature's resolution (the FS
            backbone's third stage keeps stride 1).
        pool: side of the adaptive average pool of each stage before the style heads (3).
        editor: with the feature editor and the e4e encoder (the full model); False is the
            inverter alone (phase 1: renders the fused feature, no editing; ``e4e`` is None).
    """

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    e4e: EncoderConfig | None = None
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    units: tuple[int, int, int, int] = IRESNET50_UNITS
    fuser_blocks: int = 5
    feature_index: int = 9
    input_size: int = 256
    pool: int = 3
    editor: bool = True

    SECTION = "sfe"

    def __post_init__(self):
        self._nested_from_dicts()
        gen = self.generator
        if not isinstance(self.editor, bool):
            raise ConfigError(f"sfe.editor={self.editor!r} must be true or false")
        if not self.editor and self.e4e is not None:
            raise ConfigError("sfe.e4e must be null for an inverter-only model (editor=false): it has no e4e encoder")
        if self.e4e is None and self.editor:
            self.e4e = EncoderConfig(type="Encoder4Editing", n_styles=gen.n_latent, style_dim=gen.style_dim,
                                     input_size=self.input_size)
        self.widths = tuple(int(w) for w in self.widths)
        self.units = tuple(int(u) for u in self.units)
        if len(self.widths) != 4 or not all(1 <= w <= MAX_CHANNELS for w in self.widths):
            raise ConfigError(f"sfe.widths={self.widths!r} must be 4 integers in [1, {MAX_CHANNELS}]")
        if len(self.units) != 4 or not all(1 <= u <= MAX_UNITS for u in self.units):
            raise ConfigError(f"sfe.units={self.units!r} must be 4 integers in [1, {MAX_UNITS}]")
        check_int_range("sfe.fuser_blocks", self.fuser_blocks, 0, MAX_BLOCKS)
        check_int_range("sfe.feature_index", self.feature_index, 2, gen.num_layers)
        check_int_range("sfe.pool", self.pool, 1, 16)
        check_power_of_two("sfe.input_size", self.input_size, minimum=16, maximum=1024)
        res = feature_resolution(self.feature_index)
        if self.input_size != 4 * res:
            raise ConfigError(
                f"sfe.input_size={self.input_size} must be 4x the resolution of generator feature "
                f"{self.feature_index} ({res} px): {4 * res}"
            )
        if self.e4e is not None:
            self._check_e4e()

    def _check_e4e(self) -> None:
        gen = self.generator
        if self.e4e.type != "Encoder4Editing" or self.e4e.input_nc != 3:
            raise ConfigError(f"sfe.e4e must be a 3-channel Encoder4Editing, got type {self.e4e.type!r}, input_nc {self.e4e.input_nc}")
        if (self.e4e.n_styles, self.e4e.style_dim, self.e4e.input_size) != (gen.n_latent, gen.style_dim, self.input_size):
            raise ConfigError(
                f"sfe.e4e gives {self.e4e.n_styles} x {self.e4e.style_dim} codes from {self.e4e.input_size} px inputs; "
                f"the {gen.size} px generator takes {gen.n_latent} x {gen.style_dim} and input_size is {self.input_size}"
            )

    @property
    def n_styles(self) -> int:
        return self.generator.n_latent

    @property
    def feature_channels(self) -> int:
        return self.generator.channel_table()[feature_resolution(self.feature_index)]

    @property
    def input_spec(self) -> InputSpec:
        """Photos at ``input_size`` (the e4e encoder's and the FS backbone's)."""
        return InputSpec("inversion", 3, self.input_size, self.input_size)


# --------------------------------------------------------------------------- modules


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-05)


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """ArcFace's residual unit: ``x' = BN(conv(PReLU(BN(conv(BN(x)))), stride)) + shortcut(x)``
    (no activation after the sum); the shortcut is a strided 1x1 conv + BN when the shape
    changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: bool = False):
        super().__init__()
        self.bn1 = _bn(cin)
        self.conv1 = _conv3(cin, cout)
        self.bn2 = _bn(cout)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3(cout, cout, stride)
        self.bn3 = _bn(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _bn(cout)) if shortcut else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


def _stage(cin: int, cout: int, units: int, stride: int) -> nn.Sequential:
    # iresnet's stages all start with stride 2, so every first unit has a 1x1 shortcut (the
    # third stage's is made stride 1 by SFE, keeping the shortcut).
    return nn.Sequential(IBasicBlock(cin, cout, stride, True), *(IBasicBlock(cout, cout) for _ in range(units - 1)))


class FSLikeBackbone(nn.Module):
    """The inverter's encoder: ``x [B, 3, S, S] -> (latents [B, n_styles, D], feature [B, C, S/4, S/4])``.

    iresnet stem (3x3 conv, BN, PReLU) and four stages of stride 2, except the third
    whose first unit has stride 1 (stage outputs at S/2, S/4, S/4, S/8). Each stage output is
    average-pooled to ``pool x pool``; their concatenation (flattened channel-major) feeds one
    plain ``nn.Linear`` per style. The third stage's output also goes through the content layer
    (BN, conv, BN, PReLU, conv, BN) to give the predicted feature."""

    def __init__(self, config: SFEConfig):
        super().__init__()
        w, u = config.widths, config.units
        self.conv = nn.Sequential(_conv3(3, w[0]), _bn(w[0]), nn.PReLU(w[0]))
        self.block_1 = _stage(w[0], w[0], u[0], 2)
        self.block_2 = _stage(w[0], w[1], u[1], 2)
        self.block_3 = _stage(w[1], w[2], u[2], 1)
        self.block_4 = _stage(w[2], w[3], u[3], 2)
        c = config.feature_channels
        self.content_layer = nn.Sequential(_bn(w[2]), _conv3(w[2], c), _bn(c), nn.PReLU(c), _conv3(c, c), _bn(c))
        self.avg_pool = nn.AdaptiveAvgPool2d((config.pool, config.pool))
        n_in = (w[0] + w[1] + w[2] + w[3]) * config.pool**2
        self.styles = nn.ModuleList(nn.Linear(n_in, config.generator.style_dim) for _ in range(config.n_styles))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = []
        x = self.block_1(self.conv(x))
        pooled.append(self.avg_pool(x))
        x = self.block_2(x)
        pooled.append(self.avg_pool(x))
        x = self.block_3(x)
        pooled.append(self.avg_pool(x))
        content = self.content_layer(x)
        x = self.block_4(x)
        pooled.append(self.avg_pool(x))
        flat = torch.cat(pooled, dim=1).flatten(1)
        return torch.stack([head(flat) for head in self.styles], dim=1), content


class FeatureEncoderBlock(nn.Module):
    """Residual branch ``BN, conv3x3, BN, PReLU, conv3x3, BN`` (no biases); the caller adds."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            _bn(channels), _conv3(channels, channels), _bn(channels), nn.PReLU(channels),
            _conv3(channels, channels), _bn(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ContentLayerDeepFast(nn.Module):
    """``[B, 2C, R, R] -> [B, C, R, R]``: a 1x1 conv (with bias) then residual blocks
    ``x = x + block(x)``. The blocks are registered before the conv (the original's key order)."""

    def __init__(self, blocks: int, channels: int):
        super().__init__()
        self.body = nn.ModuleList(FeatureEncoderBlock(channels) for _ in range(blocks))
        self.conv = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        for block in self.body:
            x = x + block(x)
        return x


class Inverter(nn.Module):
    """``fs_backbone`` + ``fuser`` (the original's ``Inverter``)."""

    def __init__(self, config: SFEConfig):
        super().__init__()
        self.fs_backbone = FSLikeBackbone(config)
        self.fuser = ContentLayerDeepFast(config.fuser_blocks, config.feature_channels)


# --------------------------------------------------------------------------- the model


@dataclass
class SFEEncoding:
    """What re-rendering an SFE inversion needs (no input image): ``w_recon`` and ``w_e4e``
    ``[B, n_styles, D]`` (``latent_avg`` included; ``w_e4e`` None for an inverter-only model)
    and ``fused_feat [B, C, R, R]``.
    An edited encoding (:meth:`SFE.edit`) also holds the edited latent ``w_edit`` and the
    feature it is rendered with, ``edited_feat``; both are None for an inversion. Edits always
    start from the inversion (compose edit functions to combine edits)."""

    w_recon: torch.Tensor
    w_e4e: torch.Tensor | None
    fused_feat: torch.Tensor
    w_edit: torch.Tensor | None = None
    edited_feat: torch.Tensor | None = None

    @property
    def latents(self) -> torch.Tensor:
        """The W+ the image is rendered from: ``w_edit`` when edited, else ``w_recon``."""
        return self.w_recon if self.w_edit is None else self.w_edit

    def __len__(self) -> int:
        return self.w_recon.shape[0]

    def __getitem__(self, i) -> SFEEncoding:
        sl = slice(i, i + 1) if isinstance(i, int) else i
        return SFEEncoding(*(None if t is None else t[sl] for t in self._fields()))

    def _fields(self) -> tuple:
        return (self.w_recon, self.w_e4e, self.fused_feat, self.w_edit, self.edited_feat)

    @property
    def edited(self) -> bool:
        return self.edited_feat is not None

    @staticmethod
    def blend(parts: list[SFEEncoding], weights: torch.Tensor) -> SFEEncoding:
        """Weighted sums ``sum_j weights[:, j] * parts[j]`` of every field (each part batch 1;
        ``weights [frames, len(parts)]``): interpolation between encodings, latents and features
        alike. All parts edited or none."""
        if len({p.edited for p in parts}) > 1:
            raise ValueError("cannot blend edited and unedited SFE encodings")
        if weights.ndim != 2 or weights.shape[1] != len(parts) or any(len(p) != 1 for p in parts):
            raise ValueError(f"blend needs weights [frames, {len(parts)}] and encodings of one image each")
        cols = list(zip(*(p._fields() for p in parts)))

        def mix(ts):
            if ts[0] is None:
                return None
            stack = torch.cat(ts)  # [n, ...]
            w = weights.to(stack)
            return torch.einsum("fn,n...->f...", w, stack)

        return SFEEncoding(*(mix(c) for c in cols))

    @staticmethod
    def cat(parts: list[SFEEncoding]) -> SFEEncoding:
        """One encoding of several (all edited or none)."""
        if len({p.edited for p in parts}) > 1:
            raise ValueError("cannot concatenate edited and unedited SFE encodings")
        cols = list(zip(*(p._fields() for p in parts)))
        return SFEEncoding(*(None if c[0] is None else torch.cat(c) for c in cols))


class SFE(nn.Module):
    """``inverter`` + ``encoder`` (feature editor) + ``e4e_encoder`` + ``decoder`` + ``latent_avg [D]``.

    ``encode(x)`` -> :class:`SFEEncoding`; ``decode(enc)`` -> images; ``edit(enc, fn)`` ->
    the edited encoding (``fn`` maps a W+ batch to its edited W+ batch)."""

    random_weights: bool = False
    family = "sfe"
    #: Another runtime for ``encode`` / ``decode`` (``instyle.export.backends.attach_backend``); None: PyTorch.
    backend = None

    def __init__(self, config: SFEConfig | None = None, latent_avg: torch.Tensor | None = None):
        super().__init__()
        self.config = cfg = config if config is not None else SFEConfig()
        self.inverter = Inverter(cfg)
        self.encoder = ContentLayerDeepFast(cfg.fuser_blocks, cfg.feature_channels) if cfg.editor else None
        self.e4e_encoder = Encoder4Editing(cfg.e4e) if cfg.editor else None
        self.decoder = Generator(cfg.generator)
        d = cfg.generator.style_dim
        avg = torch.zeros(d) if latent_avg is None else torch.as_tensor(latent_avg, dtype=torch.float32).reshape(-1)
        if avg.shape != (d,):
            raise ValueError(f"latent_avg must have {d} values, got shape {tuple(latent_avg.shape)}")
        self.register_buffer("latent_avg", avg.clone())

    n_styles = property(lambda self: self.config.n_styles)
    output_size = property(lambda self: self.config.generator.size)
    input_size = property(lambda self: self.config.input_size)
    input_nc = 3
    input_hw = property(lambda self: (self.config.input_size, self.config.input_size))
    pooled_size = POOLED_SIZE
    input_spec = property(lambda self: self.config.input_spec)

    def describe(self) -> str:
        """One line for people: sizes and the replaced feature."""
        return (
            f"StyleFeatureEditor model (+ e4e encoder and generator): output {self.output_size}px, "
            f"{self.n_styles} styles, feature {self.config.feature_index}"
        )

    def sync_decoder_latent_avg(self) -> None:
        self.decoder.latent_avg = self.latent_avg[None].clone()

    # ----------------------------------------------------------------- steps

    def resize_input(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, 3, input_size, input_size]`` (bilinear, no antialiasing)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"SFE expects images [B, 3, H, W] in [-1, 1], got {tuple(x.shape)}")
        s = self.config.input_size
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)

    def generator_feature(self, w_plus: torch.Tensor) -> torch.Tensor:
        """The generator's own feature ``feature_index`` of W+ (stored noise, early stop)."""
        k = self.config.feature_index
        _, feats = self.decoder.feature_list(w_plus, early_stop=feature_resolution(k))
        return feats[k]

    def render(self, w_plus: torch.Tensor, feature: torch.Tensor, feature_scale: float = INFERENCE_FEATURE_SCALE) -> torch.Tensor:
        """Images of W+ with generator feature ``feature_index`` replaced by ``feature``."""
        new = [None] * (self.decoder.num_layers + 1)
        new[self.config.feature_index] = feature
        image, _ = self.decoder([w_plus], input_is_latent=True, randomize_noise=False,
                                new_features=new, feature_scale=feature_scale)
        return image

    def _check(self, enc: SFEEncoding) -> None:
        c, r = self.config.feature_channels, feature_resolution(self.config.feature_index)
        b, n, d = len(enc), self.n_styles, self.config.generator.style_dim
        ok = (
            tuple(enc.w_recon.shape) == (b, n, d)
            and (enc.w_e4e is None if not self.config.editor else tuple(enc.w_e4e.shape) == (b, n, d))
            and tuple(enc.fused_feat.shape) == (b, c, r, r)
            and (enc.edited_feat is None or tuple(enc.edited_feat.shape) == (b, c, r, r))
            and (enc.edited_feat is None) == (enc.w_edit is None)
            and (enc.w_edit is None or tuple(enc.w_edit.shape) == (b, n, d))
        )
        if not ok:
            raise ValueError(
                f"SFE encoding does not fit this model: expected w_recon/w_e4e [B, {n}, {d}] (no w_e4e for an "
                f"inverter-only model) and features [B, {c}, {r}, {r}]; got {tuple(enc.w_recon.shape)}, "
                f"{None if enc.w_e4e is None else tuple(enc.w_e4e.shape)}, {tuple(enc.fused_feat.shape)}"
            )

    # ----------------------------------------------------------------- public API

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> SFEEncoding:
        """Images ``[B, 3, H, W]`` in [-1, 1] (aligned faces; 1024 px for the published models)
        -> :class:`SFEEncoding` (inversion of the original's inference runner)."""
        x = self.resize_input(x)
        if self.backend is not None:  # the exported encoder graph: w_recon, (w_e4e,) fused_feat
            outs = self.backend.run("encoder", [x])
            return SFEEncoding(w_recon=outs[0], w_e4e=outs[1] if self.config.editor else None, fused_feat=outs[-1])
        w_raw, predicted = self.inverter.fs_backbone(x)
        w_recon = w_raw + self.latent_avg
        fused = self.inverter.fuser(torch.cat([predicted, self.generator_feature(w_recon)], 1))
        w_e4e = None if self.e4e_encoder is None else self.e4e_encoder(x) + self.latent_avg
        return SFEEncoding(w_recon=w_recon, w_e4e=w_e4e, fused_feat=fused)

    @torch.no_grad()
    def edited_feature(self, fused: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        """The feature editor on ``cat[fused, delta]`` (zero delta: the inversion); an
        inverter-only model renders ``fused`` itself."""
        if self.encoder is None:
            if delta is not None:
                raise ValueError("this SFE model is an inverter only (no feature editor): it cannot edit")
            return fused
        return self.encoder(torch.cat([fused, torch.zeros_like(fused) if delta is None else delta], 1))

    @torch.no_grad()
    def decode(self, enc: SFEEncoding | torch.Tensor) -> torch.Tensor:
        """:class:`SFEEncoding` -> images ``[B, 3, size, size]``. A plain W+ tensor renders
        without a feature (the generator alone)."""
        if isinstance(enc, torch.Tensor):
            return self.decoder.synthesize(enc)
        self._check(enc)
        if self.backend is not None and not enc.edited:  # the exported generator graph, editor included
            delta = [torch.zeros_like(enc.fused_feat)] if self.config.editor else []
            return self.backend.run("generator", [enc.latents, enc.fused_feat, *delta])[0]
        feat = enc.edited_feat if enc.edited else self.edited_feature(enc.fused_feat)
        return self.render(enc.latents, feat)

    # ----------------------------------------------------------------- the family protocol

    def encode_for_render(self, x: torch.Tensor, iterations: int | None = None, return_all: bool = False):
        """``(w_plus, extra)``: the extra is the whole :class:`SFEEncoding` (its feature maps);
        ``return_all``: one-entry lists (a single step)."""
        if iterations not in (None, 1):
            raise ValueError(f"iterations={iterations!r}: StyleFeatureEditor encodes in one step (use None or 1)")
        enc = self.encode(x)
        return ([enc.latents], [enc]) if return_all else (enc.latents, enc)

    @torch.no_grad()
    def synthesize(self, w_plus: torch.Tensor, extra: SFEEncoding | None = None, resize: bool = False) -> torch.Tensor:
        """Images of ``w_plus``: with its encoding, the encoding itself when ``w_plus`` is its
        latent, else ``w_plus`` as an edit of it (the feature editor follows); without, the
        plain generator. ``resize`` pools to ``POOLED_SIZE``."""
        if extra is None:
            images = self.decoder.synthesize(w_plus)
        elif w_plus.shape == extra.latents.shape and torch.equal(w_plus, extra.latents.to(w_plus)):
            images = self.decode(extra)
        else:
            images = self.decode(self.edit(extra, lambda _w: w_plus))
        return F.adaptive_avg_pool2d(images, self.pooled_size) if resize else images

    @torch.no_grad()
    def edit(self, enc: SFEEncoding, fn: Callable[[torch.Tensor], torch.Tensor], mask: torch.Tensor | None = None) -> SFEEncoding:
        """The original's editing: ``fn`` (W+ batch -> edited W+ batch) moves both the
        inverter's and the e4e latents; the feature delta is the generator feature of the e4e
        latent minus that of its edit; the editor turns ``cat[fused, delta]`` into the new
        feature. Returns the encoding with ``w_edit = fn(w_recon)`` and ``edited_feat`` set;
        an edit of an edited encoding starts again from its inversion (edits do not compound).

        ``mask``: ``[B or 1, 1, H, W]`` in [0, 1], 1 where the image keeps its inverted
        features (the original's ``mask_path``, white = background): the delta is multiplied by
        ``1 - mask`` resized bilinearly to the feature's resolution, as the original does."""
        self._check(enc)
        if mask is not None and (mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, len(enc))):
            raise ValueError(f"an SFE edit mask must be [1 or {len(enc)}, 1, H, W] in [0, 1], got {tuple(mask.shape)}")
        if not self.config.editor:
            raise ValueError(
                "this SFE model is an inverter only (phase 1, e.g. sfe_inverter_light.pt): it has no feature editor "
                "and cannot edit; load the editor checkpoint (sfe_editor_light.pt)"
            )
        w_edit = fn(enc.w_recon)
        e4e_edit = fn(enc.w_e4e)
        for name, t in (("w_recon", w_edit), ("w_e4e", e4e_edit)):
            if not isinstance(t, torch.Tensor) or t.shape != enc.w_recon.shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"the edit function must map W+ {tuple(enc.w_recon.shape)} to the same shape; for {name} it gave {got}")
        delta = self.generator_feature(enc.w_e4e) - self.generator_feature(e4e_edit)
        if mask is not None:
            r = delta.shape[-1]
            delta = delta * (1 - F.interpolate(mask.to(delta), size=(r, r), mode="bilinear", align_corners=False))
        return SFEEncoding(w_recon=enc.w_recon, w_e4e=enc.w_e4e, fused_feat=enc.fused_feat, w_edit=w_edit,
                           edited_feat=self.edited_feature(enc.fused_feat, delta))

    def forward(self, x: torch.Tensor, feature_scale: float | None = None, edit: tuple | None = None):
        """Inversion: images -> reconstructions ``[B, 3, size, size]``.

        With ``feature_scale`` (training, gradients kept): the original's forward with
        ``return_latents`` -> ``(images, w_recon, fused_feat, w_feat)``. An inverter-only model
        (``FSEInverter``, phase 1) renders the fused feature blended into the generator's with
        ``feature_scale`` (the original's ``min(1, 1e-4 * n_iter)``); a full model (``FSEFull``,
        phase 2) computes the fused feature without gradients and renders the feature editor's
        ``editor(cat[fused, 0])``. ``edit = (fused, delta, w_edit)`` (phase 2's synthetic pair)
        appends the render of ``w_edit`` with ``editor(cat[fused, delta])`` (scale 1)."""
        if feature_scale is None:
            return self.decode(self.encode(x))
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.editor):
            w_raw, predicted = self.inverter.fs_backbone(self.resize_input(x))
            w_recon = w_raw + self.latent_avg
            w_feat = self.generator_feature(w_recon)
            fused = self.inverter.fuser(torch.cat([predicted, w_feat], 1))
        if not self.config.editor:
            return self.render(w_recon, fused, feature_scale), w_recon, fused, w_feat
        images = self.render(w_recon, self.encoder(torch.cat([fused, torch.zeros_like(fused)], 1)), feature_scale)
        if edit is None:
            return images, w_recon, fused, w_feat
        fused_e, delta, w_edit = edit
        edited = self.render(w_edit, self.encoder(torch.cat([fused_e, delta], 1)), INFERENCE_FEATURE_SCALE)
        return images, w_recon, fused, w_feat, edited

    # ----------------------------------------------------------------- ONNX export

    def graph_surface(self, iterations: int | None = None) -> GraphSurface:
        """The ONNX graphs' surface: the encoder gives ``w_plus`` (``w_recon``), ``w_e4e``
        (full model) and ``fused_feat [B, C, R, R]``; the generator renders ``w_plus`` with
        feature ``feature_index`` replaced by ``editor(cat[fused_feat, feature_delta])``
        (inverter-only: by ``fused_feat`` itself), so the feature editor runs in the graph.
        ``feature_delta`` is zeros for the inversion; an edit's is the generator feature of
        ``w_e4e`` minus that of its edited copy (:meth:`edit`)."""
        if iterations not in (None, 1):
            raise ValueError(f"iterations={iterations!r}: StyleFeatureEditor encodes in one step (use None or 1)")
        editor = self.config.editor

        def encode(x):
            w_raw, predicted = self.inverter.fs_backbone(self.resize_input(x))
            w_recon = w_raw + self.latent_avg
            fused = self.inverter.fuser(torch.cat([predicted, self.generator_feature(w_recon)], 1))
            if not editor:
                return w_recon, fused
            return w_recon, self.e4e_encoder(x) + self.latent_avg, fused

        def render(w_plus, fused, delta=None):
            return self.render(w_plus, fused if delta is None else self.encoder(torch.cat([fused, delta], 1)))

        def reconstruct(x):
            outs = encode(x)
            return render(outs[0], outs[-1], torch.zeros_like(outs[-1]) if editor else None)

        def example_inputs(outs, seed):
            if not editor:
                return outs[0], outs[-1]
            g = torch.Generator().manual_seed(seed)
            delta = 0.1 * torch.randn(outs[-1].shape, generator=g).to(outs[-1])
            return outs[0], outs[-1], delta

        c, r = self.config.feature_channels, feature_resolution(self.config.feature_index)
        described = {"fused_feat": f"[batch, {c}, {r}, {r}]: the encoder's fused feature of the image"}
        if editor:
            described["feature_delta"] = (
                f"[batch, {c}, {r}, {r}]: zeros to reconstruct; for an edit, generator feature "
                f"{self.config.feature_index} of w_e4e minus that of the edited w_e4e"
            )
        return GraphSurface(
            encode=encode, render=render, reconstruct=reconstruct,
            encoder_outputs=("w_plus", "w_e4e", "fused_feat") if editor else ("w_plus", "fused_feat"),
            generator_inputs=("w_plus", "fused_feat", "feature_delta") if editor else ("w_plus", "fused_feat"),
            example_inputs=example_inputs, described=described,
        )

    # ----------------------------------------------------------------- persistence

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """One self-contained folder: SFE (inverter + feature editor), e4e encoder, generator
        and ``latent_avg`` in ``model.safetensors`` beside ``config.json``."""
        return write_pretrained(directory, "sfe", self.config.to_dict(), self.state_dict(), extra, self.random_weights)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = DEFAULT_DEVICE) -> SFE:
        doc, tensors = read_pretrained(directory, "sfe")
        model = adopt_state(cls, lambda: SFEConfig.from_dict(doc["config"]), tensors, Path(directory))
        model.sync_decoder_latent_avg()
        model.metadata = doc.get("metadata", {})
        model.random_weights = doc.get("random_weights") is True
        return model.to(resolve_device(device)).eval()


# --------------------------------------------------------------------------- encoding files

ENCODING_KIND = "instyle-sfe-encoding"
ENCODING_VERSION = 1


def save_encoding(path: str | Path, enc: SFEEncoding, feature_dtype: str = "float32") -> Path:
    """Write an encoding as ``.npz`` (atomically, compressed): ``w_recon``, ``w_e4e`` (and
    ``w_edit``) float32, ``fused_feat`` (and ``edited_feat``) in ``feature_dtype`` (``float32``
    default, exact; ``float16`` halves the file but moves the image by more than 1e-4),
    ``kind`` / ``version`` markers."""
    if feature_dtype not in ("float32", "float16"):
        raise ValueError(f"feature_dtype={feature_dtype!r}; accepted: 'float32', 'float16'")
    arrays = {
        "kind": np.array(ENCODING_KIND), "version": np.array(ENCODING_VERSION),
        "w_recon": enc.w_recon.detach().cpu().float().numpy(),
        "fused_feat": enc.fused_feat.detach().cpu().numpy().astype(feature_dtype),
    }
    if enc.w_e4e is not None:
        arrays["w_e4e"] = enc.w_e4e.detach().cpu().float().numpy()
    if enc.edited:
        arrays["w_edit"] = enc.w_edit.detach().cpu().float().numpy()
        arrays["edited_feat"] = enc.edited_feat.detach().cpu().numpy().astype(feature_dtype)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


class SFEEncodingOps:
    """:class:`~instyle.models.family.ExtraOps` of :class:`SFEEncoding` extras."""

    @staticmethod
    def take(extra: SFEEncoding, index: slice) -> SFEEncoding:
        return extra if len(extra) == 1 else extra[index]

    cat = staticmethod(SFEEncoding.cat)
    blend = staticmethod(SFEEncoding.blend)

    @staticmethod
    def to(extra: SFEEncoding, device) -> SFEEncoding:
        return SFEEncoding(*(None if t is None else t.to(device) for t in extra._fields()))


register_family(Family(
    name="sfe", title="StyleFeatureEditor", model_class=SFE, config_class=SFEConfig, kind="sfe",
    encoding="features", extra_ops=SFEEncodingOps(), runtime=False, editable_latents=False, photos_at_output_size=True, reader="instyle.interop.sfe",
    editing="instyle.inference.sfe_editing",
    exportable=True,
    companions={"e4e": "the e4e encoder it edits with", "generator": "the StyleGAN2 generator it renders with"},
))
