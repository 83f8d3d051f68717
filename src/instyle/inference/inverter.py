"""A friendly high-level layer over :class:`~instyle.models.psp.PSP`.

    from instyle import Inverter
    inv = Inverter("psp_ffhq_encode.pt")              # or an instyle model directory
    result = inv.invert("face.jpg")                   # InversionResult
    result.image.save("out.png"); result.latent       # PIL image, [n_styles, 512] tensor

Deterministic by default: stored noise buffers, no random draws.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from instyle.inference.io import tensor_to_pil
from instyle.inference.preprocess import prepare_input
from instyle.models.family import InversionModel, family_of
from instyle.utils.device import resolve_device

__all__ = ["InversionResult", "Inverter"]

ImageLike = str | os.PathLike | Image.Image | torch.Tensor


@dataclass
class InversionResult:
    """One inverted image: the reconstruction, its W+ code ``[n_styles, D]`` and the input."""

    image: Image.Image
    latent: torch.Tensor
    input: torch.Tensor


class Inverter:
    """Encode images into W+ and decode latents into images.

    Args:
        model: a pSp-family model (:class:`~instyle.models.family.InversionModel`), or a path to any supported checkpoint.
        device: ``auto``, ``cpu``, ``cuda``, ``mps`` or a torch device.
        full_resolution: decode at the generator's size instead of ``resize_to`` (256).
        precision: ``fp32``, ``bf16``, ``fp16`` or ``auto`` (see :mod:`instyle.models.runtime`);
            None keeps a given model's setting (fp32 for a path). ``self.precision`` says
            what was chosen.
        compile: ``torch.compile`` the model (``True`` or a mode name); None keeps a given model's.
        backend: ``torch``, ``onnxruntime``, ``openvino`` or ``auto`` (measured, with
            ``precision="auto"`` too); None keeps a given model's. See docs/deploy.md.
    """

    def __init__(
        self,
        model: InversionModel | str | os.PathLike,
        device: str | torch.device = "auto",
        full_resolution: bool = False,
        precision: str | None = None,
        compile: bool | str | None = None,
        backend: str | None = None,
    ):
        from instyle.models.runtime import set_runtime

        self.device = resolve_device(device)
        if isinstance(model, (str, os.PathLike)):
            from instyle.interop import load_psp

            model = load_psp(model, device=self.device)
        family = family_of(model)
        if family.encoding != "latent":
            raise ValueError(
                f"Inverter works with models whose latent alone re-renders the image (pSp, e4e, ReStyle); for "
                f"{family.title} use model.encode / model.decode, or model.encode_for_render / model.synthesize (its latent "
                f"comes with {family.encoding}; see docs/families.md)"
            )
        self.model = model.to(self.device).eval()
        if backend is not None:
            from instyle.export.probe import configure

            configure(self.model, backend, precision or "fp32", compile or False)
        elif precision is not None or compile is not None:
            runtime = self.model.runtime
            set_runtime(
                self.model,
                runtime.precision if precision is None else precision,
                (runtime.compile_mode or False) if compile is None else compile,
            )
        self.full_resolution = full_resolution

    @property
    def precision(self) -> str:
        """The precision the model runs in (``auto`` resolved), e.g. ``"bf16"``."""
        return self.model.runtime.precision

    @property
    def config(self):
        return self.model.config

    def prepare(self, images: Iterable[ImageLike]) -> torch.Tensor:
        """Inputs -> batch ``[B, input_nc, S, S]`` on the model's device."""
        return torch.stack([prepare_input(im, self.config) for im in images]).to(self.device)

    @torch.inference_mode()
    def encode(self, images: Sequence[ImageLike] | torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Images -> W+ latents ``[B, n_styles, D]`` (latent_avg included)."""
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            batches = [images[i : i + batch_size].to(self.device) for i in range(0, len(images), batch_size)]
        else:
            images = list(images)
            batches = [self.prepare(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return torch.cat([self.model.encode(b) for b in batches]).float()

    @torch.inference_mode()
    def decode_tensor(self, w_plus: torch.Tensor, noise=None, full_resolution: bool | None = None) -> torch.Tensor:
        """W+ latents ``[B, n_styles, D]`` -> images ``[B, 3, H, W]`` (raw, not clamped)."""
        full = self.full_resolution if full_resolution is None else full_resolution
        return self.model.decode(w_plus.to(self.device), noise=noise, resize=not full)

    def decode(self, w_plus: torch.Tensor, noise=None, full_resolution: bool | None = None) -> list[Image.Image]:
        """W+ latents -> PIL images."""
        if w_plus.ndim == 2:
            w_plus = w_plus[None]
        return [tensor_to_pil(t) for t in self.decode_tensor(w_plus, noise=noise, full_resolution=full_resolution)]

    def invert(self, image: ImageLike) -> InversionResult:
        """One image -> its reconstruction and latent."""
        return self.invert_batch([image])[0]

    def invert_batch(self, images: Sequence[ImageLike]) -> list[InversionResult]:
        x = self.prepare(images)
        w = self.encode(x)
        outs = self.decode_tensor(w)
        return [InversionResult(tensor_to_pil(o), wi.cpu(), xi.cpu()) for o, wi, xi in zip(outs, w, x)]

    __call__ = invert

    # ----------------------------------------------------------------- inference tools (instyle.inference.*)

    def _code(self, item: ImageLike) -> torch.Tensor:
        """An image (anything :meth:`prepare` takes) or a W+ code ``[n_styles, D]`` -> ``[n_styles, D]``."""
        if isinstance(item, torch.Tensor) and item.ndim == 2:
            return item.to(self.device).float()
        return self.encode([item])[0]

    def mix(
        self, image: ImageLike, n_outputs: int = 5, latent_mask=None, alpha: float | None = None, seed: int = 0,
        truncation: float = 1.0,
    ) -> list[Image.Image]:
        """Style-mixed variants of one image (see :func:`instyle.inference.mixing.style_mix`)."""
        from instyle.inference.mixing import style_mix

        w = style_mix(self.model, self._code(image)[None], n_outputs, latent_mask, alpha, seed, truncation)
        return self.decode(w[0])

    def interpolate(self, *items: ImageLike, steps: int = 8) -> list[Image.Image]:
        """Frames from the first image (or code) to the last through the others, ``steps`` per segment."""
        from instyle.inference.interpolation import interpolate_path

        return self.decode(interpolate_path([self._code(i) for i in items], steps))

    def edit(self, image: ImageLike, direction, strengths=(-3.0, 0.0, 3.0), layers=None, component=None) -> list[Image.Image]:
        """Images of one edit at each strength (see :mod:`instyle.inference.editing`).

        ``direction``: a tensor (``w + s * direction``), a loaded edit, or the path of any
        edit file (``.npy``, InterFaceGAN / GANSpace ``.pt``, SeFa ``.npz``). GANSpace needs
        ``component=(idx, start, end)`` and its strengths are target coordinates; a direction
        set needs ``component=(k,)``.
        """
        from instyle.inference.editing import EditSpec, LatentDirection, edit_codes, load_edit

        if isinstance(direction, torch.Tensor):
            direction = LatentDirection(direction.detach().float().cpu(), "tensor")
        elif isinstance(direction, (str, os.PathLike)):
            direction = load_edit(direction, self.model.n_styles, self.config.generator.style_dim)
        spec = EditSpec("edit", tuple(component) if component is not None else None, tuple(strengths))
        return self.decode(edit_codes(self._code(image), direction, spec, layers))

    def refine(self, image: ImageLike, method: str = "optimize", config=None, lpips=None, **overrides):
        """Encode one image and refine its reconstruction (:mod:`instyle.inference.refine`).

        ``method``: ``optimize``, ``pti`` or ``restyle`` (ReStyle models only); ``config`` a
        :class:`~instyle.inference.refine.RefineConfig` or its fields as keyword overrides
        (``steps=100, seed=0``); ``lpips`` an LPIPS module (built from torchvision's cached
        AlexNet weights when None and the LPIPS weight is > 0). Returns a ``RefineResult``
        (``.image`` tensor, ``.latent``, ``.generator_delta`` for pti: see :meth:`tuned`).
        """
        import dataclasses

        from instyle.inference.refine import default_refine_config, refine

        # the family's published settings (e.g. stylegan3-editing's PTI) unless a config is given
        config = dataclasses.replace(config or default_refine_config(self.model, method), **overrides)
        if lpips is None and config.lpips_weight > 0:
            from instyle.losses.lpips import LPIPSLoss

            lpips = LPIPSLoss().to(self.device)
        x = self.prepare([image])
        return refine(self.model, x, self.encode(x)[0], method, config, lpips)

    def tuned(self, generator_delta) -> Inverter:
        """An Inverter whose generator carries PTI's tuned weights (a delta dict, or the path
        of a saved delta): decode / edit the refined latent with it."""
        from instyle.inference.refine import load_generator_delta, tuned_model

        if not isinstance(generator_delta, dict):
            generator_delta = load_generator_delta(generator_delta, self.model.decoder)
        return Inverter(tuned_model(self.model, generator_delta), device=self.device, full_resolution=self.full_resolution)
