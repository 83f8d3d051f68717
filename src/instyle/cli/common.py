"""Helpers shared by CLI commands: error reporting and common options."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from instyle.errors import InstyleError
from instyle.utils.device import DEVICE_CHOICES


def error(msg: str) -> None:
    """Print one clear line to stderr (no traceback)."""
    print(f"instyle: error: {msg}", file=sys.stderr)


def add_blend_arg(p: argparse.ArgumentParser) -> None:
    """``--blend`` for commands that paste results back into photos."""
    p.add_argument(
        "--blend", choices=["feather", "poisson"], default="feather",
        help="with --paste-back: how a result meets its photo: feather (a smooth ramp at the crop's edges, default) "
        "or poisson (StyleFeatureEditor's fpie step: the crop pasted hard, the photo around it re-solved from its own "
        "gradients; needs pip install 'instyle[poisson]', slow on a CPU)",
    )


def blend_ready(args: argparse.Namespace) -> bool:
    """``--blend`` checked before a long job: it needs ``--paste-back``, and poisson needs fpie
    (one error line each, naming the fix)."""
    blend = getattr(args, "blend", "feather")
    if blend == "feather":
        return True
    if not getattr(args, "paste_back", False):
        error(f"--blend {blend} needs --paste-back")
        return False
    from instyle.inference.pasteback import require_poisson

    try:
        require_poisson()
    except InstyleError as e:
        error(str(e))
        return False
    return True


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help=f"where to run: {', '.join(DEVICE_CHOICES)} or cuda:N (default: auto = CUDA, then MPS, then CPU)",
    )


def add_precision_args(p: argparse.ArgumentParser) -> None:
    """``--precision`` and ``--compile`` (same spelling as ``train``'s ``precision`` key)."""
    from instyle.utils.precision import PRECISION_CHOICES

    p.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISION_CHOICES,
        help="fp32 (default, exact), bf16, fp16, or auto = bf16 where the hardware runs it natively "
        "(CUDA with bfloat16, CPUs with AMX-BF16/AVX512-BF16), else fp32",
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the model (the first batch of each size compiles)"
    )
    p.add_argument(
        "--backend",
        default="torch",
        choices=("torch", "onnxruntime", "openvino", "auto"),
        help="what runs the model: torch (default), onnxruntime or openvino (exported to ONNX into the cache on "
        "first use; pip install 'instyle[deploy]'), or auto = the fastest measured on this machine (cached)",
    )


def apply_precision_args(model, args: argparse.Namespace) -> None:
    """Apply ``--precision`` / ``--compile`` / ``--backend`` to a loaded model; say what ``auto``
    picked (stderr). ``auto`` measures (:mod:`instyle.export.probe`) at ``--batch-size``.

    Raises:
        instyle.errors.InstyleError: a backend that is not installed, a precision it does not
            run, an export that failed its parity check.
    """
    from instyle.models.runtime import set_runtime
    from instyle.utils.config import ConfigError

    # Commands that call others with a hand-made Namespace (quickstart -> encode) may lack the flags.
    precision, compile = getattr(args, "precision", "fp32"), getattr(args, "compile", False)
    backend = getattr(args, "backend", "torch")
    if backend != "torch" or precision == "auto":
        from instyle.export.probe import configure

        if compile and backend != "torch":
            raise ConfigError(f"--compile is a PyTorch option; --backend {backend} runs exported graphs (drop --compile)")
        log = lambda msg: print(f"instyle: {msg}", file=sys.stderr, flush=True)  # noqa: E731
        note = configure(model, backend, precision, compile, batch=max(1, getattr(args, "batch_size", 1) or 1), log=log)
        print(f"instyle: {note}", file=sys.stderr)
        return
    choice = set_runtime(model, precision, compile)
    if precision != "fp32" or compile:
        print(f"instyle: {choice.describe()}" + (", torch.compile" if compile else ""), file=sys.stderr)


def bounded_int(minimum: int, maximum: int) -> Callable[[str], int]:
    """An argparse ``type`` for a count a user types: an integer in ``minimum..maximum``,
    refused at parse time (one line naming the option and the accepted range).

    Use with :func:`count_help` so ``--help`` states the same range."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer in {minimum}..{maximum}")
        return value

    parse.__name__ = "count"
    return parse


def count_help(text: str, minimum: int, maximum: int) -> str:
    """``text`` with the accepted range of a :func:`bounded_int` option appended."""
    return f"{text} (accepted: {minimum} to {maximum})"


def add_count(p, *flags: str, help: str, minimum: int | None = None, maximum: int | None = None, **kwargs) -> None:
    """``p.add_argument(*flags, type=bounded_int(minimum, maximum), ...)`` with the range in its help;
    the bounds default to the flag's :data:`COUNT_BOUNDS` (the counts several commands share)."""
    lo, hi = COUNT_BOUNDS.get(flags[0], (None, None))
    minimum, maximum = lo if minimum is None else minimum, hi if maximum is None else maximum
    if minimum is None or maximum is None:
        raise TypeError(f"add_count({flags[0]!r}): give minimum and maximum (the flag has no shared bounds)")
    p.add_argument(*flags, type=bounded_int(minimum, maximum), help=count_help(help, minimum, maximum), **kwargs)


#: Most images per forward pass.
MAX_BATCH = 1024
#: Most ReStyle / HyperStyle iterations per image (the originals use 5).
MAX_ITERATIONS = 100
#: Most inputs a ``--limit`` / ``--max-images`` may name.
MAX_INPUTS = 10_000_000
#: Largest super-resolution down-sampling factor (the tasks train 1 to 32).
MAX_RESIZE_FACTOR = 64
#: Largest side of a written image in pixels (align, prepare).
MAX_SIDE = 4096
#: Most worker threads or concurrent model runs.
MAX_WORKERS = 64
#: The bounds of the count options several commands share: flag -> (minimum, maximum).
COUNT_BOUNDS = {
    "--batch-size": (1, MAX_BATCH),
    "--iterations": (1, MAX_ITERATIONS),
    "--limit": (1, MAX_INPUTS),
    "--resize-factor": (1, MAX_RESIZE_FACTOR),
}


# --------------------------------------------------------------------------- model options


#: The --checkpoint help of every command that loads a model (it names every family).
CHECKPOINT_HELP = ("a checkpoint of any family (pSp, e4e, ReStyle, HyperStyle, StyleFeatureEditor, ReStyle over "
                   "StyleGAN3): official .pt or an instyle model folder")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Options shared by the latent-space commands."""
    p.add_argument("--checkpoint", "-c", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--out", "-o", required=True, help="output folder")
    add_count(p, "--batch-size", minimum=1, maximum=MAX_BATCH, default=4, help="images per forward pass (default: 4)")
    add_device_arg(p)
    add_precision_args(p)
    p.add_argument("--full-resolution", action="store_true", help="write the generator's full-size output (default: 256 px)")
    p.add_argument("--format", choices=["png", "jpg"], default="png", help="output image format (default: png)")
    p.add_argument("--w-encoder", metavar="PATH", help="HyperStyle only: the W-encoder checkpoint the model needs")
    add_sfe_args(p)


def add_sfe_args(p: argparse.ArgumentParser) -> None:
    """``--e4e`` / ``--generator``: the two files an official StyleFeatureEditor checkpoint needs;
    ``--generator`` alone: the replacement generator of an encoder over StyleGAN3."""
    p.add_argument("--e4e", metavar="PATH", help="StyleFeatureEditor only: the e4e checkpoint (e4e_ffhq_encode.pt)")
    p.add_argument(
        "--generator", metavar="PATH",
        help="StyleFeatureEditor: the StyleGAN2 file (stylegan2-ffhq-config-f.pt); encoders over StyleGAN3: the generator "
        "to decode with instead of the checkpoint's (.pt, NVIDIA .pkl or an instyle folder; see docs/stylegan3.md)",
    )


def companion_files(args) -> dict:
    """The companion-file keywords of ``load_psp`` (``w_encoder=``, ``e4e=``, ``generator=``:
    the files an official checkpoint of some families needs) from the parsed options."""
    return {k: getattr(args, k, None) for k in ("w_encoder", "e4e", "generator")}


def sfe_files(args) -> dict:
    """The ``e4e=`` / ``generator=`` keywords of ``load_psp`` from the parsed options."""
    return {"e4e": getattr(args, "e4e", None), "generator": getattr(args, "generator", None)}


def load_model(args, allow_sfe: bool = False):
    """``(model, device)`` or ``None`` after printing the error. StyleFeatureEditor models
    (W+ plus a feature map) only where the command has an SFE path (``allow_sfe``)."""
    from instyle.interop import load_psp
    from instyle.models.family import family_of
    from instyle.utils.device import resolve_device

    if getattr(args, "batch_size", 1) < 1:
        error(f"--batch-size={args.batch_size} must be >= 1")
        return None
    try:
        if getattr(args, "out", None):
            from instyle.inference.pipeline import check_output_folder

            check_output_folder(args.out)  # before the long model load
        device = resolve_device(args.device)
        model = load_psp(args.checkpoint, device=device, **companion_files(args))
        apply_precision_args(model, args)
        family = family_of(model)
        if not family.editable_latents and not allow_sfe:
            error(f"{args.checkpoint}: {family.title} models are used with `instyle encode` and `instyle edit direction`")
            return None
        return model, device
    except (InstyleError, OSError) as e:
        error(str(e))
        return None
