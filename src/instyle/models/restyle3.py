"""ReStyle-pSp / ReStyle-e4e over StyleGAN3 ("Third Time's the Charm?", Alaluf et al. 2022).

The encoders are ReStyle's own (``BackboneEncoder`` / ``ProgressiveBackboneEncoder``, 6
input channels, one style per StyleGAN3 w: 16 at every resolution); the decoder is a
:class:`~instyle.models.stylegan3.StyleGAN3Generator`. Inference follows the original's
``run_on_batch``:

* start from the average image: the generator's image of ``latent_avg [512]`` (repeated
  over the ws, no mapping network), identity transform, pooled to 256;
* each iteration encodes ``cat(x, previous image pooled to 256)`` into a residual added to
  the current latent (``latent_avg`` at the first iteration) and synthesises it with the
  identity transform;
* an optional user transform (``[3, 3]`` or ``[B, 3, 3]``, the landmarks' inverse transform
  of an unaligned crop) renders only the last iteration; latents never depend on it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from instyle.errors import CheckpointError
from instyle.models.encoders.psp_encoders import EncoderConfig
from instyle.models.family import Family, GraphSurface, InputSpec, register_family
from instyle.models.own_format import adopt_state, read_pretrained, write_pretrained
from instyle.models.registry import build_encoder
from instyle.models.runtime import Runtime
from instyle.models.stylegan3 import StyleGAN3Config, StyleGAN3Generator, _check_transform
from instyle.utils.config import ConfigError, DictConfig, check_int_range
from instyle.utils.device import DEFAULT_DEVICE, resolve_device

__all__ = ["DEFAULT_ITERATIONS_SG3", "ReStyle3Config", "ReStyle3"]

#: The original's ``n_iters_per_batch`` for the StyleGAN3 encoders.
DEFAULT_ITERATIONS_SG3 = 3


@dataclass
class ReStyle3Config(DictConfig):
    """Architecture of a ReStyle model over StyleGAN3.

    Attributes:
        encoder: the ReStyle encoder (``BackboneEncoder`` = ReStyle-pSp,
            ``ProgressiveBackboneEncoder`` = ReStyle-e4e), 6 input channels.
        generator: the StyleGAN3 generator.
        iterations: default refinement steps (the checkpoint's ``n_iters_per_batch``).
        pool_size: side of the images fed back to the encoder (the original's face_pool, 256).
    """

    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(type="BackboneEncoder", input_nc=6, n_styles=16))
    generator: StyleGAN3Config = field(default_factory=StyleGAN3Config)
    iterations: int = DEFAULT_ITERATIONS_SG3
    pool_size: int = 256

    SECTION = "restyle3"

    def __post_init__(self):
        self._nested_from_dicts()
        if self.encoder.type not in ("BackboneEncoder", "ProgressiveBackboneEncoder"):
            raise ConfigError(
                f"restyle3.encoder.type={self.encoder.type!r} is not accepted; choose one of "
                "['BackboneEncoder', 'ProgressiveBackboneEncoder']"
            )
        if self.encoder.input_nc != 6:
            raise ConfigError(f"restyle3.encoder.input_nc={self.encoder.input_nc} must be 6 (image + current output)")
        if self.encoder.n_styles != self.generator.n_latent or self.encoder.style_dim != self.generator.w_dim:
            raise ConfigError(
                f"the encoder predicts {self.encoder.n_styles}x{self.encoder.style_dim} but the generator takes "
                f"{self.generator.n_latent}x{self.generator.w_dim}"
            )
        check_int_range("restyle3.iterations", self.iterations, 1, 100)
        check_int_range("restyle3.pool_size", self.pool_size, 16, 1024)

    @property
    def input_spec(self) -> InputSpec:
        """Photos (the encoder sees 6 channels: image + current output) at the encoder's size."""
        s = self.encoder.input_size
        return InputSpec("inversion", 3, s, s)

    @property
    def variant(self) -> str:
        return "e4e" if self.encoder.type == "ProgressiveBackboneEncoder" else "psp"


class ReStyle3(nn.Module):
    """ReStyle encoder + StyleGAN3 decoder + ``latent_avg [w_dim]``.

    ``model.encode(x, iterations=3, return_all=True)`` -> one W+ ``[B, 16, 512]`` per
    iteration; ``model.decode(w, transform=T)`` -> images at the generator's resolution.
    """

    family = "restyle3"
    #: True for a randomly initialised (untrained) model (the family protocol's flag).
    random_weights: bool = False
    #: Another runtime for ``encode`` / ``decode`` (``instyle.export.backends.attach_backend``); None: PyTorch.
    backend = None

    def __init__(self, config: ReStyle3Config | None = None):
        super().__init__()
        self.config = config or ReStyle3Config()
        self.encoder = build_encoder(self.config.encoder)
        self.decoder = StyleGAN3Generator(self.config.generator)
        self.register_buffer("latent_avg", torch.zeros(self.config.generator.w_dim))
        self.face_pool = nn.AdaptiveAvgPool2d((self.config.pool_size, self.config.pool_size))
        # precision / compile of the encoder and generator passes, as pSp's (instyle.models.runtime.set_runtime):
        # fp32 (default) runs exactly the original's float32 path
        self.runtime = Runtime()

    @property
    def n_styles(self) -> int:
        return self.decoder.n_latent

    @property
    def output_size(self) -> int:
        return self.decoder.size

    @property
    def input_size(self) -> int:
        return self.config.encoder.input_size

    @property
    def input_nc(self) -> int:
        """Channels of the input images: 3 (the encoder sees 6: image + current output)."""
        return self.config.input_spec.channels

    @property
    def pooled_size(self) -> int:
        return self.config.pool_size

    @property
    def input_spec(self) -> InputSpec:
        return self.config.input_spec

    @property
    def default_iterations(self) -> int:
        return self.config.iterations

    @default_iterations.setter
    def default_iterations(self, n: int) -> None:
        self.config = dataclasses.replace(self.config, iterations=n)

    @property
    def input_hw(self) -> tuple[int, int]:
        return (self.input_size, self.input_size)

    def describe(self) -> str:
        """One line for people: variant, sizes."""
        return (
            f"ReStyle over StyleGAN3 (ReStyle-{self.config.variant}): input 6x{self.config.encoder.input_size}px, "
            f"output {self.output_size}px, {self.n_styles} styles"
        )

    # ----------------------------------------------------------------- the family protocol

    def encode_for_render(self, x: torch.Tensor, iterations: int | None = None, return_all: bool = False):
        """``(w_plus, extra)``: a latent re-renders alone (a rendering transform is the caller's
        choice); ``return_all``: both lists, one entry per iteration."""
        if return_all:
            steps = self.encode(x, iterations=iterations, return_all=True)
            return steps, [None] * len(steps)
        return self.encode(x, iterations=iterations), None

    def synthesize(self, w_plus: torch.Tensor, extra: torch.Tensor | None = None, resize: bool = False) -> torch.Tensor:
        """Images of ``w_plus``; ``extra``: an optional ``[3, 3]`` / ``[B, 3, 3]`` rendering transform."""
        return self.decode(w_plus, transform=extra, resize=resize)

    def replace_generator(self, generator: StyleGAN3Generator) -> None:
        """Use ``generator`` instead of the checkpoint's decoder (the original's
        ``generator_path``); ``latent_avg`` stays the checkpoint's."""
        if not isinstance(generator, StyleGAN3Generator):
            raise CheckpointError(f"the replacement generator is a {type(generator).__name__}, not a StyleGAN3 generator")
        if generator.n_latent != self.n_styles or generator.style_dim != self.config.encoder.style_dim:
            raise CheckpointError(
                f"the replacement generator takes {generator.n_latent}x{generator.style_dim} ws but the encoder "
                f"predicts {self.config.encoder.n_styles}x{self.config.encoder.style_dim}"
            )
        self.decoder = generator.to(self.latent_avg.device)
        self.config.generator = generator.config

    def _pool(self, images: torch.Tensor) -> torch.Tensor:
        return self.face_pool(images)

    def decode(self, w_plus: torch.Tensor, transform: torch.Tensor | None = None, resize: bool = False) -> torch.Tensor:
        """W+ ``[B, n_styles, w_dim]`` -> images ``[B, 3, R, R]`` (raw, not clamped).

        ``transform``: ``[3, 3]`` or ``[B, 3, 3]`` inverse transform of the rendering (None:
        identity). ``resize`` pools to ``pool_size`` like the original's face_pool."""
        if self.backend is not None:  # the exported generator graph takes a transform per image
            batch = w_plus.shape[0]
            t = torch.eye(3) if transform is None else torch.as_tensor(transform)
            t = _check_transform(t.to(device=w_plus.device, dtype=torch.float32), batch).expand(batch, 3, 3)
            images = self.backend.run("generator", [w_plus, t])[0]
            return self._pool(images) if resize else images
        with self.runtime.context(w_plus):
            images = self.runtime.finish(self.decoder.synthesize(w_plus, transform=transform))
        return self._pool(images) if resize else images

    def average_image(self) -> torch.Tensor:
        """``[3, pool, pool]``: the image of ``latent_avg`` in every w, pooled (the original's
        ``get_average_image``)."""
        w = self.latent_avg.repeat(self.n_styles, 1).unsqueeze(0)
        return self.decode(w, resize=True)[0]

    def _encoder_pass(self, x6: torch.Tensor) -> torch.Tensor:
        """The encoder on ``[image, feedback]`` under the runtime's precision; float32 out."""
        with self.runtime.context(x6):
            return self.runtime.finish(self.encoder(self.runtime.encoder_input(x6)))

    def _check_image(self, x: torch.Tensor) -> None:
        s = self.config.encoder.input_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"ReStyle expects images [B, 3, {s}, {s}] in [-1, 1]; got {tuple(x.shape)}")

    def invert(self, x: torch.Tensor, iterations: int | None = None, transform: torch.Tensor | None = None,
               average: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Run the iterations on ``x [B, 3, 256, 256]`` in [-1, 1].

        Args:
            iterations: steps (default ``config.iterations``, the original's 3).
            transform: rendering transform of the last iteration only (``[3, 3]`` or ``[B, 3, 3]``).
            average: the average image (computed when None).

        Returns:
            per iteration ``(w_plus [B, n_styles, w_dim], image [B, 3, R, R])``.
        """
        n = self.default_iterations if iterations is None else iterations
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"iterations={iterations!r} must be a positive integer")
        self._check_image(x)
        avg = self.average_image() if average is None else average
        feedback = avg.to(x.dtype)[None].expand(x.shape[0], -1, -1, -1)
        latent = self.latent_avg.to(x.dtype).repeat(x.shape[0], 1, 1)
        steps = []
        for it in range(n):
            latent = self._encoder_pass(torch.cat([x, feedback], dim=1)) + latent
            images = self.decode(latent)
            feedback = self._pool(images)
            if transform is not None and it == n - 1:
                images = self.decode(latent, transform=transform)
            steps.append((latent, images))
        return steps

    def encode(self, x: torch.Tensor, iterations: int | None = None, return_all: bool = False):
        """Images ``[B, 3, 256, 256]`` -> W+ ``[B, n_styles, w_dim]`` (the last iteration's), or
        with ``return_all`` the list of every iteration's."""
        if self.backend is not None and not return_all:
            return self.backend.encode(x, self.default_iterations if iterations is None else iterations)
        latents = [w for w, _ in self.invert(x, iterations)]
        return latents if return_all else latents[-1]

    def forward(self, x: torch.Tensor, iterations: int | None = None, transform: torch.Tensor | None = None,
                latent: torch.Tensor | None = None):
        """Reconstruction ``[B, 3, R, R]`` of ``x`` after the iterations.

        With ``latent`` (training: one iteration, run through ``forward`` so that
        ``DistributedDataParallel`` sees it): ``x [B, 6, S, S]`` is ``[photo, feedback]`` and the
        result ``(image pooled to pool_size, codes)`` with ``codes = encoder(x) + latent``."""
        if latent is not None:
            codes = self.encoder(x) + latent
            return self.decode(codes, resize=True), codes
        return self.invert(x, iterations, transform)[-1][1]

    # ----------------------------------------------------------------- ONNX export

    def graph_surface(self, iterations: int | None = None) -> GraphSurface:
        """The ONNX graphs' surface: the encoder unrolls ``iterations`` refinement steps
        (identity transform, the average image a constant) into ``w_plus``; the generator
        renders ``w_plus`` under a ``transform [B, 3, 3]`` per image (the identity for an
        aligned face; ``encode --unaligned`` saves one with each latent)."""
        n = self.default_iterations if iterations is None else iterations
        average = self.average_image().detach()

        def encode(x):
            return (self.invert(x, n, average=average)[-1][0],)

        def render(w_plus, transform):
            return self.decoder.synthesize(w_plus, transform=transform)

        def reconstruct(x):
            return self.invert(x, n, average=average)[-1][1]

        def example_inputs(outs, seed):
            # small random rotations and translations, so the graph cannot bake in the identity
            g = torch.Generator().manual_seed(seed)
            angle, shift = (0.2 * torch.randn(len(outs[0]), generator=g), 0.1 * torch.randn(len(outs[0]), 2, generator=g))
            t = torch.eye(3).repeat(len(outs[0]), 1, 1)
            t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
            t[:, :2, 2] = shift
            return outs[0], t.to(outs[0])

        return GraphSurface(
            encode=encode, render=render, reconstruct=reconstruct, encoder_outputs=("w_plus",),
            generator_inputs=("w_plus", "transform"), example_inputs=example_inputs,
            described={"transform": "[batch, 3, 3]: the inverse transform of each rendered image (NVIDIA's "
                                    "synthesis.input.transform); the identity for an aligned face"},
        )

    # ----------------------------------------------------------------- persistence

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """``config.json`` (kind ``restyle3``) + ``model.safetensors`` into ``directory``."""
        return write_pretrained(directory, "restyle3", self.config.to_dict(), dict(self.state_dict()), extra)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = DEFAULT_DEVICE) -> ReStyle3:
        doc, tensors = read_pretrained(directory, "restyle3")
        model = adopt_state(cls, lambda: ReStyle3Config.from_dict(doc["config"]), tensors, Path(directory))
        model.metadata = doc.get("metadata", {})
        return model.to(resolve_device(device)).eval()


class TransformOps:
    """:class:`~instyle.models.family.ExtraOps` of a rendering transform (``[3, 3]`` shared or ``[B, 3, 3]``)."""

    @staticmethod
    def take(extra: torch.Tensor, index: slice) -> torch.Tensor:
        return extra if extra.ndim == 2 or extra.shape[0] == 1 else extra[index]

    @staticmethod
    def cat(extras: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1, 3, 3) for t in extras])

    @staticmethod
    def blend(extras: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        """The weighted sum of the ``[3, 3]`` matrices themselves, as stylegan3-editing's
        ``create_inversion_animation.py`` (``get_result_from_vecs``: ``landmarks_b * alpha +
        landmarks_a * (1 - alpha)``) moves between two unaligned inversions: frame 0 and the
        last frame render exactly as their encodings; between them the rotation part is a
        blend of matrices, not a rotation by the blended angle (a 2x2 blend of two rotations
        ``±θ`` scales by ``cos θ`` halfway, a slight zoom that the original shows too)."""
        stack = torch.cat([t.reshape(-1, 3, 3) for t in extras])
        return torch.einsum("fn,nij->fij", weights.to(stack), stack)

    @staticmethod
    def to(extra: torch.Tensor, device) -> torch.Tensor:
        return extra.to(device)


#: stylegan3-editing's PTI for images (inversion/scripts/run_pti_images.py, ``RunConfig``):
#: 350 steps of Adam at 3e-4 on LPIPS 1 + L2 1, stopping once LPIPS < 0.06, and no locality
#: regulariser (its loss is the reconstruction alone). It also leaves the Fourier input layer
#: untuned (``StyleGAN3Generator.frozen_in_tuning``). Unlike it, the loss is taken at the
#: encoder's input size (256 px), not at the generator's 1024 px.
PTI_DEFAULTS_SG3 = {"steps": 350, "lr": 3e-4, "lpips_weight": 1.0, "l2_weight": 1.0, "locality_weight": 0.0,
                    "lpips_threshold": 0.06}

#: stylegan3-editing's video PTI (inversion/video/run_pti_video.py, ``RunConfig`` and
#: ``VideoPTI.optimize_model``): one generator for the clip, 350 Adam steps at 3e-4 on
#: shuffled batches of 4 frames (``DataLoader(batch_size=4, shuffle=True, drop_last=False)``),
#: LPIPS 1 + L2 1, no locality regulariser, the Fourier input layer untuned (as for images).
#: Not taken over: its ``lpips_threshold`` (0.06), which there only ends the current pass over
#: the frames (the next pass starts; the step count is unchanged) -- a clip whose every batch
#: is under it would never finish.
VIDEO_PTI_DEFAULTS_SG3 = {"steps": 350, "unit": "step", "batch_size": 4, "shuffle": True, "lr": 3e-4, "lpips_weight": 1.0,
                          "l2_weight": 1.0, "locality_weight": 0.0}
#: stylegan3-editing's post-processing of a clip's latents (inversion/video/post_processing.py,
#: ``postprocess_and_smooth_inversions``): ``result_latents[:, 9:, :] = result_latents[:, 9:, :].mean(axis=0)``
#: (the fine W+ rows averaged over all frames), then ``smooth_ws`` (the five-tap temporal kernel).
VIDEO_LATENTS_SG3 = {"average_from": 9, "smoothing": "five-tap"}

register_family(Family(
    name="restyle3", title="ReStyle over StyleGAN3", model_class=ReStyle3, config_class=ReStyle3Config, kind="restyle3",
    iterative=True, default_iterations=DEFAULT_ITERATIONS_SG3, transform=True, extra_ops=TransformOps(),
    refine_defaults={"pti": PTI_DEFAULTS_SG3, "video_pti": VIDEO_PTI_DEFAULTS_SG3}, video_latents=VIDEO_LATENTS_SG3,
    companions={"generator": "a replacement StyleGAN3 generator, only for encoders over StyleGAN3 (optional)"},
    reader="instyle.interop.stylegan3", exportable=True,
))
