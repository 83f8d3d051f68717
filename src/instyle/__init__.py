"""instyle: pixel2style2pixel (pSp) -- encode any face image into StyleGAN2's W+ and back.
Its successors e4e and ReStyle load and run through the same API (``model.config.family``;
ReStyle: ``model.encode(x, iterations=5, return_all=False)``).

Quick use::

    import instyle
    model = instyle.load("psp_ffhq_encode.pt")          # official or own format
    images = model(x, resize=True, randomize_noise=False)  # x: [B, 3, 256, 256] in [-1, 1]
    w_plus = model.encode(x)                              # [B, 18, 512]
    images = model.decode(w_plus)                         # [B, 3, 1024, 1024]
"""

from __future__ import annotations

__version__ = "0.1.0"

from instyle.interop import CheckpointError, load_generator
from instyle.models import PSP, EncoderConfig, Generator, GeneratorConfig, PSPConfig, create_psp


def load(path, device="cpu", expected: PSPConfig | None = None) -> PSP:
    """Load a pSp checkpoint (official ``.pt`` or an instyle directory), in eval mode.

    Args:
        path: checkpoint file or own-format directory.
        device: ``"cpu"``, ``"cuda"``, ``"mps"``, ``"auto"`` or a torch device.
        expected: optional architecture the file must match.
    """
    from instyle.interop import load_psp
    from instyle.utils.device import resolve_device

    return load_psp(path, device=resolve_device(device), expected=expected)


def __getattr__(name):
    # Heavier, optional pieces are imported lazily.
    if name == "Inverter":
        from instyle.inference.inverter import Inverter

        return Inverter
    raise AttributeError(f"module 'instyle' has no attribute {name!r}")


__all__ = [
    "PSP",
    "CheckpointError",
    "EncoderConfig",
    "Generator",
    "GeneratorConfig",
    "Inverter",
    "PSPConfig",
    "__version__",
    "create_psp",
    "load",
    "load_generator",
]
