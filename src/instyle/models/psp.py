"""pixel2style2pixel: an encoder into W+ feeding a frozen StyleGAN2 generator.

The same model class serves pSp's successors, selected by ``PSPConfig.family``: e4e
(an encoder type of its own, the same forward) and ReStyle (6-channel encoders applied
iteratively on ``[image, current reconstruction]``, see :mod:`instyle.models.iterative`).

``PSP.forward`` keeps the original's signature and meaning (including
``randomize_noise=True`` by default) so code written for the official model runs
unchanged; ``encode`` / ``decode`` are the deterministic building blocks every
instyle tool uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from instyle.models.encoders.psp_encoders import MAX_INPUT_NC, EncoderConfig
from instyle.models.family import Family, InputSpec, get_family, register_family
from instyle.models.iterative import DEFAULT_ITERATIONS, refine
from instyle.models.own_format import adopt_state, read_pretrained, write_pretrained
from instyle.models.registry import build_encoder, encoder_class, register_config
from instyle.models.runtime import Runtime
from instyle.models.stylegan2 import MAX_SIZE, Generator, GeneratorConfig
from instyle.utils.config import ConfigError, DictConfig, check_choice, check_int_range
from instyle.utils.device import DEFAULT_DEVICE, resolve_device

__all__ = ["FAMILIES", "PSPConfig", "PSP"]

#: Model families: pSp, e4e (encoder4editing) and ReStyle (iterative refinement).
FAMILIES = ("psp", "e4e", "restyle")
#: ReStyle encoders see ``cat(image, reconstruction)``: 3 + 3 channels.
RESTYLE_INPUT_NC = 6


@dataclass
class PSPConfig(DictConfig):
    """Full description of a pSp model.

    Attributes:
        encoder: encoder architecture (its ``n_styles`` must equal the generator's
            ``n_latent`` unless the encoder outputs a single w).
        generator: StyleGAN2 architecture (``size`` is the output resolution).
        start_from_latent_avg: add the generator's average latent to the encoder output.
        learn_in_w: the encoder predicts one w (``[B, 512]``), repeated over all styles.
        task: name of the task preset this model was trained for (see ``instyle.tasks``).
        label_nc: number of label classes for segmentation input (0 otherwise).
        resize_to: side of ``resize=True`` output (adaptive average pooling; 256 as the original;
            at most ``MAX_SIZE``).
        output_crop: rows ``(top, bottom)`` of the full-resolution output that ``decode`` keeps
            (scaled for ``resize=True``), as the cars models' inference scripts crop 512x512 to
            512x384 with ``(64, 448)``; None keeps everything. ``forward`` never crops (the original).
        family: ``"psp"``, ``"e4e"`` or ``"restyle"``; the encoder type must belong to it.
            ``"restyle"`` models encode iteratively (6-channel encoder, latent_avg always added).
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    start_from_latent_avg: bool = True
    learn_in_w: bool = False
    task: str = "inversion"
    label_nc: int = 0
    resize_to: int = 256
    output_crop: tuple[int, int] | None = None
    family: str = "psp"

    SECTION = "psp"

    def __post_init__(self):
        self._nested_from_dicts()
        # resize_to sizes the pooled output of every forward pass: bounded like the generator
        check_int_range("resize_to", self.resize_to, 1, MAX_SIZE)
        check_int_range("label_nc", self.label_nc, 0, MAX_INPUT_NC)
        self._check_family()
        if self.output_crop is not None:
            self.output_crop = tuple(int(v) for v in self.output_crop)
            top, bottom = self.output_crop if len(self.output_crop) == 2 else (-1, -1)
            if not 0 <= top < bottom <= self.generator.size:
                raise ConfigError(
                    f"output_crop={self.output_crop!r} must be rows (top, bottom) with 0 <= top < bottom <= "
                    f"{self.generator.size}"
                )
        w_encoder = self.encoder.type == "BackboneEncoderUsingLastLayerIntoW"
        if w_encoder != self.learn_in_w:
            raise ConfigError(
                f"learn_in_w={self.learn_in_w} does not fit encoder.type={self.encoder.type!r}: "
                "learn_in_w must be True exactly for BackboneEncoderUsingLastLayerIntoW"
            )
        if self.encoder.style_dim != self.generator.style_dim:
            raise ConfigError(
                f"encoder.style_dim={self.encoder.style_dim} differs from generator.style_dim="
                f"{self.generator.style_dim}"
            )
        if not self.learn_in_w and self.encoder.n_styles != self.generator.n_latent:
            raise ConfigError(
                f"encoder.n_styles={self.encoder.n_styles} but a {self.generator.size}px generator takes "
                f"n_latent={self.generator.n_latent} styles (2*log2(size)-2)"
            )

    def _check_family(self) -> None:
        check_choice("family", self.family, FAMILIES)
        families = getattr(encoder_class(self.encoder.type), "families", ("psp",))
        if self.family not in families:
            raise ConfigError(
                f"encoder.type={self.encoder.type!r} does not belong to family={self.family!r}; it is built by {list(families)}"
            )
        if self.family == "restyle":
            if self.encoder.input_nc != RESTYLE_INPUT_NC:
                raise ConfigError(
                    f"a ReStyle encoder takes [image, reconstruction] = {RESTYLE_INPUT_NC} channels, "
                    f"got encoder.input_nc={self.encoder.input_nc}"
                )
            if not self.start_from_latent_avg:
                raise ConfigError("family='restyle' starts from the average latent: start_from_latent_avg must be True")

    @property
    def n_styles(self) -> int:
        return self.generator.n_latent

    @property
    def image_nc(self) -> int:
        """Channels of the images the model takes (ReStyle: 3, its encoder sees 6)."""
        return 3 if self.family == "restyle" else self.encoder.input_nc

    @property
    def output_size(self) -> int:
        return self.generator.size

    @property
    def input_spec(self) -> InputSpec:
        """What the model's inputs are: this task's, ``image_nc`` channels at the encoder's size."""
        enc = self.encoder
        return InputSpec(self.task, self.image_nc, enc.input_height or enc.input_size, enc.input_size, self.label_nc)

    def with_overrides(self, **overrides) -> PSPConfig:
        """A copy with fields replaced; nested sections merge key by key, timm-style::

            config.with_overrides(generator={"size": 128}, task="sketch2face")

        A new generator size brings the encoder's style count with it unless
        ``encoder={"n_styles": ...}`` is given too."""
        d = self.to_dict()
        for key, value in overrides.items():
            if key in ("encoder", "generator") and isinstance(value, dict):
                d[key] = {**d[key], **value}
            else:
                d[key] = value
        enc = overrides.get("encoder")
        if "generator" in overrides and not (isinstance(enc, dict) and "n_styles" in enc):
            d["encoder"]["n_styles"] = GeneratorConfig.from_dict(d["generator"]).n_latent
        return PSPConfig.from_dict(d)

    @classmethod
    def for_output_size(
        cls, output_size: int = 1024, encoder_type: str = "GradualStyleEncoder", input_nc: int = 3, **kw
    ) -> PSPConfig:
        """The published architecture for a given output size and encoder type."""
        gen = GeneratorConfig(size=output_size)
        enc = EncoderConfig(type=encoder_type, input_nc=input_nc, n_styles=gen.n_latent)
        return cls(encoder=enc, generator=gen, learn_in_w=encoder_type == "BackboneEncoderUsingLastLayerIntoW", **kw)


class PSP(nn.Module):
    """The pSp model: ``encoder`` + ``decoder`` (StyleGAN2) + ``face_pool`` + ``latent_avg``.

    ``latent_avg`` is stored as ``[n_styles, style_dim]`` for W+ encoders and
    ``[1, style_dim]`` for W encoders (the shapes the original broadcasts to).

    ``random_weights`` is True for a model made by random initialisation (not trained); it is
    saved with the model files so tools can warn that its outputs are textures, not faces.
    """

    random_weights: bool = False
    #: Another runtime for ``encode`` / ``decode`` (``instyle.export.backends.attach_backend``); None: PyTorch.
    backend = None

    def __init__(self, config: PSPConfig | None = None, latent_avg: torch.Tensor | None = None):
        super().__init__()
        self.config = config if config is not None else PSPConfig()
        cfg = self.config
        self.encoder = build_encoder(cfg.encoder)
        self.decoder = Generator(cfg.generator)
        self.face_pool = nn.AdaptiveAvgPool2d((cfg.resize_to, cfg.resize_to))
        rows = 1 if cfg.learn_in_w else cfg.n_styles
        if latent_avg is None:
            latent_avg = torch.zeros(rows, cfg.generator.style_dim)
        self.register_buffer("latent_avg", self.normalize_latent_avg(latent_avg))
        #: ReStyle steps of ``encode`` when not given (the original's 5; ``instyle serve --iterations``).
        self.default_iterations = DEFAULT_ITERATIONS
        self.runtime = Runtime()  # precision / compile of encode and decode: instyle.models.runtime.set_runtime

    # ----------------------------------------------------------------- properties

    @property
    def n_styles(self) -> int:
        return self.config.n_styles

    @property
    def input_nc(self) -> int:
        """Channels of the input images (ReStyle: 3; its encoder sees 6)."""
        return self.config.image_nc

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def input_size(self) -> int:
        return self.config.encoder.input_size

    @property
    def pooled_size(self) -> int:
        """Side of ``resize=True`` outputs (``config.resize_to``)."""
        return self.config.resize_to

    @property
    def input_spec(self) -> InputSpec:
        return self.config.input_spec

    def describe(self) -> str:
        """One line for people: family, encoder, sizes, task."""
        return (
            f"{get_family(self.family).title} model: {self.config.encoder.type}, input {self.input_nc}x{self.input_size}px, "
            f"output {self.output_size}px, {self.n_styles} styles, task {self.config.task}"
        )

    @property
    def output_size(self) -> int:
        return self.config.output_size

    def normalize_latent_avg(self, latent_avg: torch.Tensor) -> torch.Tensor:
        """Bring a ``[512]``, ``[1, 512]`` or ``[n_styles, 512]`` average latent to the
        stored shape. The three broadcast identically in the original forward."""
        cfg = self.config
        d = cfg.generator.style_dim
        t = torch.as_tensor(latent_avg, dtype=torch.float32).detach()
        if t.ndim == 1:
            t = t[None]
        rows = 1 if cfg.learn_in_w else cfg.n_styles
        if t.ndim != 2 or t.shape[-1] != d or t.shape[0] not in (1, rows):
            raise ValueError(
                f"latent_avg of shape {tuple(latent_avg.shape)} does not fit this model: expected "
                f"[{d}], [1, {d}] or [{rows}, {d}]"
            )
        if t.shape[0] != rows:
            t = t.expand(rows, d)
        return t.clone().contiguous()

    def set_latent_avg(self, latent_avg: torch.Tensor, generator_average: bool | None = None) -> None:
        """Set the average latent -- the one place it changes.

        ``self.latent_avg`` (``[rows, D]``, added to the encoder output) is the source; when it
        is the generator's average w (``generator_average``, by default exactly when
        ``start_from_latent_avg``), ``decoder.latent_avg`` (``[1, D]``, the truncation and
        mixing centre) follows it."""
        given = torch.as_tensor(latent_avg).detach()
        self.latent_avg = self.normalize_latent_avg(given).to(self.latent_avg.device)
        if self.config.start_from_latent_avg if generator_average is None else generator_average:
            one_row = given.ndim == 1 or given.shape[0] == 1  # kept exactly, not re-averaged
            avg = given.reshape(1, -1).float() if one_row else self.latent_avg.mean(0, keepdim=True)
            self.decoder.latent_avg = avg.to(self.latent_avg.device).clone()

    # ----------------------------------------------------------------- building blocks

    @property
    def input_hw(self) -> tuple[int, int]:
        """``(height, width)`` of the input images (square except for the cars models)."""
        enc = self.config.encoder
        return (enc.input_height or enc.input_size, enc.input_size)

    def _check_image(self, x: torch.Tensor, channels: int | None = None) -> None:
        (h, s), c = self.input_hw, self.config.encoder.input_nc if channels is None else channels
        if x.ndim != 4 or x.shape[1] != c or x.shape[2] != h or x.shape[3] != s:
            raise ValueError(
                f"pSp expects images [B, {c}, {h}, {s}], got {tuple(x.shape)}; resize to {s}x{h} first "
                "(instyle.inference.preprocess does it like the original test transforms)"
            )

    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output with ``latent_avg`` added (when configured), in the original's shape:
        ``[B, n_styles, 512]`` (W+) or ``[B, 512]`` (learn_in_w)."""
        self._check_image(x)
        with self.runtime.context(x):
            codes = self.runtime.finish(self.encoder(self.runtime.encoder_input(x)))
        if self.config.start_from_latent_avg:
            avg = self.latent_avg.to(codes.dtype)
            codes = codes + (avg if self.config.learn_in_w else avg[None])
        return codes

    def encode(
        self, x: torch.Tensor, iterations: int | None = None, return_all: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Images ``[B, input_nc, S, S]`` -> W+ latents ``[B, n_styles, 512]`` (latent_avg added).

        Args:
            x: input images (for ReStyle: 3-channel photos in [-1, 1]).
            iterations: ReStyle refinement steps (default ``default_iterations``, the
                original's 5); other families take exactly one step (None or 1).
            return_all: return the list of every iteration's latents instead of the last.
        """
        if self.family == "restyle":
            self._check_image(x, self.input_nc)
            if self.backend is not None and not return_all:
                return self.backend.encode(x, self.default_iterations if iterations is None else iterations)
            steps = refine(self, x, self.default_iterations if iterations is None else iterations)
            latents = [w for w, _ in steps]
            return latents if return_all else latents[-1]
        if iterations not in (None, 1):
            raise ValueError(
                f"iterations={iterations!r}: only ReStyle models refine iteratively; this {self.family} model "
                "encodes in one step (use iterations=None or 1)"
            )
        if self.backend is not None:
            self._check_image(x)
            codes = self.backend.encode(x)
            return [codes] if return_all else codes
        codes = self.encode_codes(x)
        if codes.ndim == 2:
            codes = codes.unsqueeze(1).repeat(1, self.n_styles, 1)
        return [codes] if return_all else codes

    # ----------------------------------------------------------------- the family protocol

    def encode_for_render(self, x: torch.Tensor, iterations: int | None = None, return_all: bool = False):
        """``(w_plus, extra)`` of :class:`~instyle.models.family.InversionModel`: nothing
        beyond W+ is needed to re-render a pSp-family latent (``return_all``: both lists, one
        entry per refinement step)."""
        if return_all:
            steps = self.encode(x, iterations=iterations, return_all=True)
            return steps, [None] * len(steps)
        return self.encode(x, iterations=iterations), None

    def synthesize(self, w_plus: torch.Tensor, extra=None, resize: bool = False) -> torch.Tensor:
        """Images of ``w_plus`` (``extra`` must be None: latents of this family carry nothing else)."""
        if extra is not None:
            raise ValueError("these latents carry another family's data (e.g. HyperStyle offsets); render them with that model")
        return self.decode(w_plus, resize=resize)

    def decode(
        self,
        w_plus: torch.Tensor,
        noise: Sequence[torch.Tensor] | None = None,
        resize: bool = False,
        randomize_noise: bool = False,
    ) -> torch.Tensor:
        """W+ latents ``[B, n_styles, 512]`` (or w ``[B, 512]``) -> images.

        Args:
            w_plus: latent codes fed to the synthesis network.
            noise: per-layer noise maps; default the stored buffers (deterministic).
            resize: pool the output to ``resize_to`` (256) like ``forward(resize=True)``.
            randomize_noise: draw fresh noise instead of the stored buffers.

        Returns:
            ``[B, 3, H, W]`` raw generator output (not clamped).
        """
        if self.backend is not None and noise is None and not randomize_noise:
            images = self.backend.generate(w_plus)
        else:
            with self.runtime.context(w_plus):
                images, _ = self.decoder([w_plus], input_is_latent=True, noise=noise, randomize_noise=randomize_noise)
            images = self.runtime.finish(images)
        if resize:
            images = self.face_pool(images)
        crop = self.config.output_crop
        if crop is not None:
            scale = images.shape[-2] / self.output_size
            images = images[:, :, round(crop[0] * scale) : round(crop[1] * scale)]
        return images

    # ----------------------------------------------------------------- original forward

    def forward(
        self,
        x: torch.Tensor,
        resize: bool = True,
        latent_mask: Sequence[int] | None = None,
        input_code: bool = False,
        randomize_noise: bool = True,
        inject_latent: torch.Tensor | None = None,
        return_latents: bool = False,
        alpha: float | None = None,
        latent: torch.Tensor | None = None,
    ):
        """The official pSp forward.

        Args:
            x: images ``[B, input_nc, S, S]``, or with ``input_code`` a **z** code that goes
                through the mapping network (exactly the original's meaning).
            resize: pool the output to 256x256.
            latent_mask: 0-based style indices to replace or blend with ``inject_latent``
                (set to 0 when no ``inject_latent`` is given).
            input_code: treat ``x`` as z codes instead of images.
            randomize_noise: fresh noise per layer (original default) or the stored buffers.
            inject_latent: ``[B or 1, n_styles, 512]`` latents for ``latent_mask``.
            return_latents: also return the W+ tensor fed to the synthesis network.
            alpha: blend factor for ``latent_mask``; None replaces.
            latent: ReStyle only (its forward's ``latent``): the current W+ latent; the encoder
                output on ``x = cat(image, reconstruction)`` is added to it instead of latent_avg.

        Returns:
            images ``[B, 3, H, W]``, or ``(images, latents [B, n_styles, 512])``.
        """
        if input_code:
            codes = x.clone() if latent_mask is not None else x
        elif latent is not None and self.family == "restyle":
            self._check_image(x)
            codes = self.encoder(x) + latent
        else:
            codes = self.encode_codes(x)

        if latent_mask is not None:
            for i in latent_mask:
                if inject_latent is not None:
                    if alpha is not None:
                        codes[:, i] = alpha * inject_latent[:, i] + (1 - alpha) * codes[:, i]
                    else:
                        codes[:, i] = inject_latent[:, i]
                else:
                    codes[:, i] = 0

        images, result_latent = self.decoder(
            [codes],
            input_is_latent=not input_code,
            randomize_noise=randomize_noise,
            return_latents=return_latents,
        )
        if resize:
            images = self.face_pool(images)
        if return_latents:
            return images, result_latent
        return images

    # ----------------------------------------------------------------- persistence

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (state dict incl. ``latent_avg``) into
        ``directory`` (atomically); ``extra`` is stored as free-form metadata."""
        return write_pretrained(directory, "psp", self.config.to_dict(), self.state_dict(), extra, self.random_weights)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = DEFAULT_DEVICE) -> PSP:
        """Load a directory written by :meth:`save_pretrained` as ``cls``, in eval mode.

        Official ``.pt`` files and other formats: :func:`instyle.load`."""
        doc, tensors = read_pretrained(directory, "psp")
        model = adopt_state(cls, lambda: PSPConfig.from_dict(doc["config"]), tensors, Path(directory))
        model.set_latent_avg(model.latent_avg)
        model.metadata = doc.get("metadata", {})
        model.random_weights = doc.get("random_weights") is True
        return model.to(resolve_device(device)).eval()


# --------------------------------------------------------------------------- named configs


@register_config("psp_ffhq_1024")
def _psp_ffhq_1024() -> PSPConfig:
    """The published FFHQ model: IR-SE-50 FPN encoder, 1024 px generator."""
    return PSPConfig.for_output_size(1024)


@register_config("psp_256")
def _psp_256() -> PSPConfig:
    return PSPConfig.for_output_size(256)


@register_config("psp_w_1024")
def _psp_w_1024() -> PSPConfig:
    return PSPConfig.for_output_size(1024, "BackboneEncoderUsingLastLayerIntoW")


@register_config("psp_wplus_1024")
def _psp_wplus_1024() -> PSPConfig:
    return PSPConfig.for_output_size(1024, "BackboneEncoderUsingLastLayerIntoWPlus")


@register_config("tiny")
def _tiny() -> PSPConfig:
    """A narrow model for tests and the quickstart: 64 px input, 64 px output, 64-D styles."""
    gen = GeneratorConfig(size=64, style_dim=64, n_mlp=2, channels={4: 64, 8: 64, 16: 32, 32: 32, 64: 16})
    enc = EncoderConfig(
        n_styles=gen.n_latent, style_dim=64, widths=(8, 16, 32, 64), units=(1, 2, 2, 1), input_size=64
    )
    return PSPConfig(encoder=enc, generator=gen, resize_to=64)


@register_config("quickstart")
def _quickstart() -> PSPConfig:
    """A narrow 256->256 model with the published layout (IR-SE-50 depth, FPN, 14 styles),
    fast on a laptop CPU; used by ``instyle quickstart`` with random weights."""
    gen = GeneratorConfig(
        size=256, style_dim=128, n_mlp=4, channels={4: 128, 8: 128, 16: 128, 32: 64, 64: 64, 128: 32, 256: 32}
    )
    enc = EncoderConfig(n_styles=gen.n_latent, style_dim=128, widths=(16, 32, 64, 128))
    return PSPConfig(encoder=enc, generator=gen)


register_family(Family(name="psp", title="pSp", model_class=PSP, config_class=PSPConfig, kind="psp", reader="instyle.interop.families", exportable=True))
register_family(Family(name="e4e", title="e4e", model_class=PSP, config_class=PSPConfig, kind="psp", reader="instyle.interop.families", exportable=True))
register_family(Family(
    name="restyle", title="ReStyle", model_class=PSP, config_class=PSPConfig, kind="psp",
    iterative=True, default_iterations=DEFAULT_ITERATIONS, reader="instyle.interop.families", exportable=True,
))
