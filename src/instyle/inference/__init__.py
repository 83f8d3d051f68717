"""Inference: image I/O, preprocessing, latent files and the high-level :class:`Inverter`."""

from instyle.inference.io import ImageLoadError, collect_inputs, load_image, make_grid, save_image
from instyle.inference.latents import load_latent, save_latent

__all__ = [
    "ImageLoadError",
    "Inverter",
    "collect_inputs",
    "load_image",
    "load_latent",
    "make_grid",
    "save_image",
    "save_latent",
]


def __getattr__(name):
    if name == "Inverter":
        from instyle.inference.inverter import Inverter

        return Inverter
    raise AttributeError(name)
