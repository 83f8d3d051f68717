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

from instyle.interop import CheckpointError, load_generator, load_psp
from instyle.models import PSP, EncoderConfig, Generator, GeneratorConfig, PSPConfig, create_psp
from instyle.utils.device import DEFAULT_DEVICE
from instyle.version import __version__


def load(
    path,
    device=DEFAULT_DEVICE,
    expected: PSPConfig | None = None,
    w_encoder=None,
    precision: str = "fp32",
    compile: bool | str = False,
    e4e=None,
    generator=None,
    backend: str = "torch",
    batch_size: int = 1,
) -> PSP:
    """Load a pSp checkpoint (official ``.pt`` or an instyle directory), in eval mode.

    Args:
        path: checkpoint file or own-format directory.
        device: ``"cpu"``, ``"cuda"``, ``"mps"``, ``"auto"`` or a torch device.
        expected: optional architecture the file must match.
        w_encoder: for an official HyperStyle checkpoint, its W-encoder file (a
            ``HyperStyle`` model is returned; own-format HyperStyle directories contain it).
        e4e, generator: for an official StyleFeatureEditor checkpoint, its e4e encoder file and
            its rosinality StyleGAN2 file (an ``SFE`` model is returned; own-format SFE folders
            contain both).
        precision: ``"fp32"`` (exact, default), ``"bf16"``, ``"fp16"`` or ``"auto"`` (measured:
            see ``backend``); the choice is in ``model.runtime.note``.
        compile: ``torch.compile`` encoder and generator (``True`` or a mode name).
        generator: also, for a ReStyle-over-StyleGAN3 checkpoint, the StyleGAN3 generator to use
            instead of its decoder (``.pt``, NVIDIA ``.pkl`` or own format; see docs/stylegan3.md).
        backend: ``"torch"`` (default), ``"onnxruntime"``, ``"openvino"`` (the model's encode /
            decode run on ONNX graphs exported into the cache on first use; the ``deploy``
            extra) or ``"auto"``. ``auto`` (for the backend or the precision) times the
            candidates on this machine at ``batch_size`` and caches the answer; see
            :mod:`instyle.export.probe`.
    """
    from instyle.models.runtime import set_runtime

    model = load_psp(path, device=device, expected=expected, w_encoder=w_encoder, e4e=e4e, generator=generator)
    if backend == "torch" and precision != "auto":
        set_runtime(model, precision, compile)
    else:
        from instyle.export.probe import configure

        configure(model, backend, precision, compile, batch=batch_size)
    return model


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
