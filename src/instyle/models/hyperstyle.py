"""HyperStyle: a W-encoder gives the latent, a hypernetwork refines the generator's
weights for each image over a few iterations (Alaluf et al., CVPR 2022).

The inversion follows the original ``scripts/inference.py`` /
``utils/inference_utils.run_inversion``: iteration 0 starts from the W inversion
(``w_encoder(x) + latent_avg`` and its image with the unmodified generator); every
iteration feeds ``[x, current reconstruction]`` to the hypernetwork and *adds* its
output to the accumulated offsets; the latent never changes. Rendering uses the stored
noise buffers. Offsets are relative: a tuned kernel becomes ``W * (1 + delta)``.

Images are ``[B, 3, S, S]`` in [-1, 1] (``S = resize_to``, 256); latents
``[B, n_styles, 512]``; ``weights_deltas`` a list with one entry per generator weight
layer (``Generator.weight_layers()``): ``[B, out, in, k, k]`` (or ``k = 1`` where the
offset is constant over the kernel window) or ``None`` for untuned layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from instyle.models.encoders.hypernetwork import HyperNetConfig, HyperNetwork, weight_layer_shapes
from instyle.models.encoders.w_encoder import WEncoder, WEncoderConfig
from instyle.models.family import (  # DEFAULT_ITERATIONS: the original's n_iters_per_batch
    DEFAULT_ITERATIONS,
    Family,
    InputSpec,
    register_family,
)
from instyle.models.own_format import adopt_state, read_pretrained, write_pretrained
from instyle.models.stylegan2 import Generator, GeneratorConfig
from instyle.utils.config import ConfigError, DictConfig, check_positive_int
from instyle.utils.device import DEFAULT_DEVICE, resolve_device

__all__ = [
    "DEFAULT_ITERATIONS",
    "HyperStyleConfig",
    "HyperStyle",
    "HyperStyleInversion",
    "run_inversion",
    "compact_deltas",
]

WeightsDeltas = list[torch.Tensor | None]


@dataclass
class HyperStyleConfig(DictConfig):
    """Full description of a HyperStyle model.

    Attributes:
        generator: StyleGAN2 architecture (the tuned generator; channel multiplier 2 published).
        hypernet: hypernetwork architecture; default built for ``generator``.
        w_encoder: W-encoder architecture; default IR-SE-50 with the generator's n_styles.
        iterations: default number of refinement iterations (the original's 5).
        resize_to: side the reconstruction is pooled to before it is fed back (256).
        crop_cars: the original's ``"cars" in dataset_type`` path: reconstructions are cropped
            to rows ``[S/8, 7S/8)`` (the 256x192 car images) and fed back at 192x256.
    """

    generator: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(size=1024))
    hypernet: HyperNetConfig | None = None
    w_encoder: WEncoderConfig | None = None
    iterations: int = DEFAULT_ITERATIONS
    resize_to: int = 256
    crop_cars: bool = False

    SECTION = "hyperstyle"

    def __post_init__(self):
        self._nested_from_dicts()
        gen = self.generator
        if self.hypernet is None:
            self.hypernet = HyperNetConfig.for_generator(gen)
        if self.w_encoder is None:
            self.w_encoder = WEncoderConfig(n_styles=gen.n_latent, style_dim=gen.style_dim, input_size=self.resize_to)
        check_positive_int("hyperstyle.iterations", self.iterations)
        check_positive_int("hyperstyle.resize_to", self.resize_to)
        if self.hypernet.layer_shapes != weight_layer_shapes(gen):
            raise ConfigError(
                f"hypernet.layer_shapes {self.hypernet.layer_shapes} do not match the {gen.size}px generator's "
                f"weight layers {weight_layer_shapes(gen)}"
            )
        if self.hypernet.input_nc != 6:
            raise ConfigError(f"hypernet.input_nc={self.hypernet.input_nc}; HyperStyle feeds [image, reconstruction]: 6")
        enc = self.w_encoder
        if enc.input_size != self.resize_to:
            raise ConfigError(f"w_encoder.input_size={enc.input_size} must equal resize_to={self.resize_to}")
        if (enc.n_styles, enc.style_dim) != (gen.n_latent, gen.style_dim):
            raise ConfigError(
                f"w_encoder gives {enc.n_styles} x {enc.style_dim} codes but the {gen.size}px generator takes "
                f"{gen.n_latent} x {gen.style_dim}"
            )

    @property
    def n_styles(self) -> int:
        return self.generator.n_latent

    @property
    def input_spec(self) -> InputSpec:
        """Photos (the hypernetwork sees 6 channels: image + reconstruction) at the W-encoder's
        size (the cars models crop them to 3/4 height themselves)."""
        s = self.w_encoder.input_size
        return InputSpec("inversion", 3, s, s)


@dataclass
class HyperStyleInversion:
    """Result of :func:`run_inversion`: per stored iteration, the images and the
    accumulated offsets; ``w_plus`` (the W inversion) is the same for all iterations."""

    images: list[torch.Tensor]
    w_plus: torch.Tensor
    weights_deltas: list[WeightsDeltas]


def _accumulate(total: WeightsDeltas | None, new: WeightsDeltas) -> WeightsDeltas:
    """The original's accumulation: ``total[i] + new[i]`` where ``total[i]`` exists, else None."""
    if total is None:
        return list(new)
    return [t + n if t is not None else None for t, n in zip(total, new)]


class HyperStyle(nn.Module):
    """``w_encoder`` + ``hypernet`` + ``decoder`` (StyleGAN2) + ``latent_avg [n_styles, 512]``."""

    #: True for a randomly initialised (untrained) model; saved with the model files.
    random_weights: bool = False
    #: Another runtime for ``encode`` / ``decode`` (``instyle.export.backends.attach_backend``); None: PyTorch.
    backend = None
    family = "hyperstyle"

    def __init__(self, config: HyperStyleConfig | None = None, latent_avg: torch.Tensor | None = None):
        super().__init__()
        self.config = cfg = config if config is not None else HyperStyleConfig()
        self.w_encoder = WEncoder(cfg.w_encoder)
        self.hypernet = HyperNetwork(cfg.hypernet)
        self.decoder = Generator(cfg.generator)
        self.face_pool = nn.AdaptiveAvgPool2d((cfg.resize_to, cfg.resize_to))
        if latent_avg is None:
            latent_avg = torch.zeros(cfg.n_styles, cfg.generator.style_dim)
        self.register_buffer("latent_avg", self.normalize_latent_avg(latent_avg))

    @property
    def n_styles(self) -> int:
        return self.config.n_styles

    @property
    def output_size(self) -> int:
        return self.config.generator.size

    @property
    def input_size(self) -> int:
        return self.config.resize_to

    @property
    def input_nc(self) -> int:
        return 3

    @property
    def pooled_size(self) -> int:
        return self.config.resize_to

    @property
    def input_spec(self) -> InputSpec:
        return self.config.input_spec

    @property
    def input_hw(self) -> tuple[int, int]:
        """``(height, width)`` of the input images (``3S/4 x S`` for the cars models)."""
        s = self.config.resize_to
        return (s * 3 // 4 if self.config.crop_cars else s, s)

    def describe(self) -> str:
        """One line for people: hypernetwork, tuned layers, sizes."""
        hyper = self.config.hypernet
        return (
            f"HyperStyle model: {hyper.type}, {len(hyper.layers_to_tune)} tuned layers, "
            f"output {self.output_size}px, {self.n_styles} styles"
        )

    @property
    def default_iterations(self) -> int:
        """Refinement steps of ``encode`` when none are asked (``config.iterations``)."""
        return self.config.iterations

    @default_iterations.setter
    def default_iterations(self, n: int) -> None:
        self.config = dataclasses.replace(self.config, iterations=n)

    def normalize_latent_avg(self, latent_avg: torch.Tensor) -> torch.Tensor:
        """``[512]``, ``[1, 512]`` or ``[n_styles, 512]`` -> ``[n_styles, 512]``."""
        n, d = self.n_styles, self.config.generator.style_dim
        t = torch.as_tensor(latent_avg, dtype=torch.float32).detach()
        t = t[None] if t.ndim == 1 else t
        if t.ndim != 2 or t.shape[1] != d or t.shape[0] not in (1, n):
            raise ValueError(f"latent_avg of shape {tuple(latent_avg.shape)} does not fit: expected [{d}], [1, {d}] or [{n}, {d}]")
        return t.expand(n, d).clone().contiguous()

    def sync_decoder_latent_avg(self) -> None:
        """Give the generator its average w (``[1, D]``, used for truncation)."""
        self.decoder.latent_avg = self.latent_avg.mean(0, keepdim=True).clone()

    # ----------------------------------------------------------------- building blocks

    def _check_image(self, x: torch.Tensor) -> None:
        s = self.config.resize_to
        h = s * 3 // 4 if self.config.crop_cars else s
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, h, s):
            raise ValueError(
                f"HyperStyle expects images [B, 3, {h}, {s}], got {tuple(x.shape)}; resize to {s}x{h} first "
                "(instyle.inference.preprocess)"
            )

    def fit_input(self, x: torch.Tensor) -> torch.Tensor:
        """Cars models take ``[B, 3, 3S/4, S]``: a square ``S x S`` input (what the shared
        image preparation makes) is resized to that (bilinear, antialiased); others pass."""
        s = self.config.resize_to
        if self.config.crop_cars and x.ndim == 4 and tuple(x.shape[-2:]) == (s, s):
            return nn.functional.interpolate(x, size=(s * 3 // 4, s), mode="bilinear", align_corners=False, antialias=True)
        return x

    def _feedback(self, images: torch.Tensor) -> torch.Tensor:
        """Pool a (cropped) reconstruction to the hypernet's input size."""
        if self.config.crop_cars:
            s = self.config.resize_to
            return nn.functional.adaptive_avg_pool2d(images, (s * 3 // 4, s))
        return self.face_pool(images)

    def _crop(self, images: torch.Tensor) -> torch.Tensor:
        if not self.config.crop_cars:
            return images
        h = images.shape[-2]
        return images[:, :, h // 8: h - h // 8, :]

    @torch.no_grad()
    def w_inversion(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes [B, n_styles, 512], image)``: the W-encoder's latent (``latent_avg`` added)
        and its pooled (and, for cars, cropped) rendering with the unmodified generator."""
        self._check_image(x)
        codes = self.w_encoder(x) + self.latent_avg.to(x.dtype)[None]
        images, _ = self.decoder([codes], input_is_latent=True, randomize_noise=False)
        return codes, self._crop(self.face_pool(images))

    def decode(
        self,
        w_plus: torch.Tensor,
        weights_deltas: Sequence[torch.Tensor | None] | None = None,
        noise: Sequence[torch.Tensor] | None = None,
        resize: bool = False,
        randomize_noise: bool = False,
    ) -> torch.Tensor:
        """W+ ``[B, n_styles, 512]`` -> images with the tuned generator (stored noise by default).

        ``weights_deltas``: the offsets of :meth:`encode` (None renders the plain generator).
        ``resize`` pools to ``resize_to`` like the original ``resize=True``."""
        if self.backend is not None and noise is None and not randomize_noise:
            images = self.backend.generate(w_plus, weights_deltas)
            return self.face_pool(images) if resize else images
        images, _ = self.decoder(
            [w_plus], input_is_latent=True, noise=noise, randomize_noise=randomize_noise,
            weights_deltas=weights_deltas,
        )
        return self.face_pool(images) if resize else images

    def encode(self, x: torch.Tensor, iterations: int | None = None, return_all: bool = False):
        """Images ``[B, 3, S, S]`` -> ``(w_plus [B, n_styles, 512], weights_deltas)``.

        ``iterations`` defaults to ``config.iterations`` (5). With ``return_all`` both are
        lists with one entry per iteration."""
        if self.backend is not None and not return_all:
            self._check_image(self.fit_input(x))
            return self.backend.encode(self.fit_input(x), self.config.iterations if iterations is None else iterations)
        result = run_inversion(self, x, iterations, return_all=return_all)
        if return_all:
            return [result.w_plus] * len(result.weights_deltas), result.weights_deltas
        return result.w_plus, result.weights_deltas[-1]

    # ----------------------------------------------------------------- the family protocol

    def encode_for_render(self, x: torch.Tensor, iterations: int | None = None, return_all: bool = False):
        """``(w_plus, extra)``: the extra is the per-image generator offsets (``weights_deltas``);
        ``return_all``: both lists, one entry per refinement step."""
        return self.encode(x, iterations=iterations, return_all=return_all)

    def synthesize(self, w_plus: torch.Tensor, extra=None, resize: bool = False) -> torch.Tensor:
        """Images of ``w_plus`` on the generator tuned by ``extra`` (None: the plain generator)."""
        return self.decode(w_plus, weights_deltas=extra, resize=resize)

    # ----------------------------------------------------------------- original forward

    def forward(
        self,
        x: torch.Tensor,
        resize: bool = True,
        input_code: bool = False,
        randomize_noise: bool = True,
        return_latents: bool = False,
        return_weight_deltas_and_codes: bool = False,
        weights_deltas: WeightsDeltas | None = None,
        y_hat: torch.Tensor | None = None,
        codes: torch.Tensor | None = None,
    ):
        """The official ``HyperStyle.forward`` (one refinement step).

        With ``input_code`` the given ``x`` is a **z** code sent through the mapping network
        (the original's meaning) and rendered with ``weights_deltas`` as given. Otherwise
        ``y_hat`` None starts from the W inversion, the hypernet sees ``[x, y_hat]`` and its
        output is added to ``weights_deltas``.
        """
        if input_code:
            codes = x
        else:
            if y_hat is None:
                codes, y_hat = self.w_inversion(x)
            new = self.hypernet(torch.cat([x, y_hat], dim=1))
            weights_deltas = _accumulate(weights_deltas, new)
        images, latent = self.decoder(
            [codes], weights_deltas=weights_deltas, input_is_latent=not input_code,
            randomize_noise=randomize_noise, return_latents=return_latents,
        )
        if resize:
            images = self.face_pool(images)
        if return_latents and return_weight_deltas_and_codes:
            return images, latent, weights_deltas, codes, y_hat
        if return_latents:
            return images, latent
        if return_weight_deltas_and_codes:
            return images, weights_deltas, codes
        return images

    # ----------------------------------------------------------------- persistence

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (W-encoder, hypernetwork, generator,
        ``latent_avg``: one self-contained directory) into ``directory``."""
        return write_pretrained(
            directory, "hyperstyle", self.config.to_dict(), self.state_dict(), extra, self.random_weights
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = DEFAULT_DEVICE) -> HyperStyle:
        """Load a directory written by :meth:`save_pretrained` as ``cls``, in eval mode.

        Official HyperStyle ``.pt`` files (with their W-encoder): :func:`instyle.load`."""
        doc, tensors = read_pretrained(directory, "hyperstyle")
        model = adopt_state(cls, lambda: HyperStyleConfig.from_dict(doc["config"]), tensors, Path(directory))
        model.sync_decoder_latent_avg()
        model.metadata = doc.get("metadata", {})
        model.random_weights = doc.get("random_weights") is True
        return model.to(resolve_device(device)).eval()


def run_inversion(
    model: HyperStyle,
    x: torch.Tensor,
    iterations: int | None = None,
    resize_outputs: bool = False,
    return_all: bool = False,
) -> HyperStyleInversion:
    """The original ``run_inversion`` loop.

    Args:
        model: a HyperStyle model (eval mode).
        x: images ``[B, 3, S, S]`` in [-1, 1].
        iterations: refinement steps (default ``model.config.iterations``).
        resize_outputs: pool the stored images to ``resize_to`` (the original's flag).
        return_all: keep the images and offsets of every iteration, not only the last.
    """
    n = model.config.iterations if iterations is None else iterations
    check_positive_int("iterations", n)
    x = model.fit_input(x)
    y_hat = codes = deltas = None
    images, all_deltas = [], []
    for _ in range(n):
        y_hat, latent, deltas, codes, _ = model(
            x, y_hat=y_hat, codes=codes, weights_deltas=deltas, return_latents=True, resize=resize_outputs,
            randomize_noise=False, return_weight_deltas_and_codes=True,
        )
        y_hat = model._crop(y_hat)
        if return_all or len(images) == 0:
            images.append(y_hat)
            all_deltas.append(deltas)
        else:
            images[-1], all_deltas[-1] = y_hat, deltas
        y_hat = model._feedback(y_hat)
    return HyperStyleInversion(images=images, w_plus=latent, weights_deltas=all_deltas)


def compact_deltas(weights_deltas: Sequence[torch.Tensor | None]) -> WeightsDeltas:
    """Offsets with the kernel window collapsed to ``1 x 1`` where they are constant over it
    (the repeated per-channel heads): the generator broadcasts them back exactly."""
    out: WeightsDeltas = []
    for d in weights_deltas:
        if d is not None and d.shape[-1] > 1 and torch.equal(d, d[..., :1, :1].expand_as(d)):
            d = d[..., :1, :1].contiguous()
        out.append(d)
    return out


class OffsetsOps:
    """:class:`~instyle.models.family.ExtraOps` of HyperStyle's offsets (``weights_deltas``: one
    ``[B or 1, out, in, k or 1, k or 1]`` tensor or None per generator weight layer)."""

    @staticmethod
    def take(extra: WeightsDeltas, index: slice) -> WeightsDeltas:
        return [d if d is None or d.shape[0] == 1 else d[index] for d in extra]

    @staticmethod
    def cat(extras: list[WeightsDeltas]) -> WeightsDeltas:
        return [None if layer[0] is None else torch.cat(layer) for layer in zip(*extras)]

    @staticmethod
    def blend(extras: list[WeightsDeltas], weights: torch.Tensor) -> WeightsDeltas:
        out: WeightsDeltas = []
        for layer in zip(*extras):
            if any(d is None for d in layer):  # a layer untuned in any input stays untuned
                out.append(None)
                continue
            k = max(d.shape[-1] for d in layer)
            stack = torch.cat([d.expand(*d.shape[:-2], k, k) for d in layer])  # [n, out, in, k, k]
            out.append(torch.einsum("fn,n...->f...", weights.to(stack), stack))
        return out

    @staticmethod
    def to(extra: WeightsDeltas, device) -> WeightsDeltas:
        return [d if d is None else d.to(device) for d in extra]


register_family(Family(
    name="hyperstyle", title="HyperStyle", model_class=HyperStyle, config_class=HyperStyleConfig, kind="hyperstyle",
    encoding="offsets", iterative=True, default_iterations=DEFAULT_ITERATIONS, runtime=False,
    companions={"w_encoder": "the W-encoder (an e4e or pSp-in-W checkpoint) it starts from"},
    exportable=True, extra_ops=OffsetsOps(), reader="instyle.interop.hyperstyle",
))
