"""How a loaded pSp model runs at inference: precision, memory format, compilation.

One place for all callers (``instyle.load``, :class:`~instyle.inference.inverter.Inverter`,
every CLI command)::

    choice = set_runtime(model, precision="auto", compile=False)
    print(choice.describe())   # "precision auto -> fp32 (CPU without AMX-BF16 ...)"
    w = model.encode(x)        # float32 out, computed under bfloat16 autocast when chosen

* ``precision``: ``PSP.encode`` / ``PSP.decode`` run under ``torch.autocast`` and return
  float32 (``fp32``, the default, changes nothing: exact as the original).
* channels-last: with a 16-bit precision the encoder's 4-D weights and its input are
  channels-last (the layout tensor cores and oneDNN's bf16 kernels want). The generator
  keeps its own layout: its modulated weights are 5-D, and the fast path already picks
  channels-last for its large feature maps (:mod:`instyle.models.fast`).
* ``compile``: ``torch.compile`` of the encoder and the generator, in place (parameter
  names and checkpoints are unchanged). ``True`` uses the default mode; a string picks a
  mode, e.g. ``"reduce-overhead"`` (CUDA graphs, for batch-1 latency on a GPU) or
  ``"max-autotune"``. The first call of each input shape compiles (seconds to minutes).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
from torch import nn

from instyle.models.family import family_of
from instyle.utils.config import ConfigError
from instyle.utils.precision import PrecisionChoice, autocast, resolve_precision

__all__ = ["COMPILE_MODES", "Runtime", "model_precision", "set_runtime"]

logger = logging.getLogger("instyle")

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class Runtime:
    """The inference settings a :class:`~instyle.models.psp.PSP` applies in encode/decode."""

    precision: str = "fp32"
    channels_last: bool = False
    compile_mode: str | None = None
    note: str = ""

    @property
    def cuda_graphs(self) -> bool:
        return self.compile_mode == "reduce-overhead"

    def context(self, x: torch.Tensor) -> contextlib.AbstractContextManager:
        """Autocast for a call on ``x``'s device (a no-op for fp32)."""
        mark_step = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
        if self.cuda_graphs and mark_step is not None:  # each call is a new CUDA-graph step (outputs cloned in finish)
            mark_step()
        return autocast(self.precision, x.device.type)

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """Outputs leave the model in float32, contiguous, and owned by the caller."""
        if self.precision == "fp32" and not self.cuda_graphs:
            return out
        return out.float().contiguous().clone() if self.cuda_graphs else out.float().contiguous()


def _compile_mode(compile: bool | str) -> str | None:
    if compile is False or compile is None:
        return None
    if compile is True:
        return "default"
    if compile not in COMPILE_MODES:
        raise ConfigError(f"compile={compile!r} is not accepted; choose True, False or one of {list(COMPILE_MODES)}")
    return compile


def set_runtime(model: nn.Module, precision: str = "fp32", compile: bool | str = False) -> PrecisionChoice:
    """Set how ``model`` (a PSP) runs from now on; returns the resolved precision.

    Args:
        model: the pSp model, already on its device.
        precision: ``fp32`` (exact, default), ``bf16``, ``fp16`` or ``auto``.
        compile: ``False``, ``True`` (default mode) or a ``torch.compile`` mode name.

    Raises:
        instyle.utils.config.ConfigError: an unknown precision or compile mode.
    """
    mode = _compile_mode(compile)
    device = next(model.parameters()).device
    if not family_of(model).runtime:  # e.g. HyperStyle: its hypernetwork path has no runtime settings
        if precision != "fp32" or mode is not None:
            raise ConfigError(
                f"precision={precision!r}, compile={compile!r}: {type(model).__name__} models run in fp32 without "
                "torch.compile (accepted: precision='fp32', compile=False)"
            )
        return resolve_precision("fp32", device)
    choice = resolve_precision(precision, device)
    channels_last = choice.name != "fp32"
    model.encoder.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for part in (model.encoder, model.decoder):
        if mode is not None:
            part.compile(mode=None if mode == "default" else mode)
        else:
            part._compiled_call_impl = None  # undo an earlier compile (what nn.Module.compile sets)
    model.runtime = Runtime(choice.name, channels_last, mode, choice.describe())
    logger.info("instyle model runtime: %s%s", choice.describe(), f", torch.compile mode {mode}" if mode else "")
    return choice


def model_precision(model: nn.Module) -> str:
    """The precision ``model`` runs in (``fp32`` for a family without runtime settings)."""
    return model.runtime.precision if family_of(model).runtime else "fp32"
