"""Run logging on rank 0: console lines, ``metrics.jsonl``, TensorBoard scalars and
image grids (input | target | output, also as PNG files under ``images/``), and a progress
bar with rate and ETA."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from instyle.tasks import Task, preview_input
from instyle.utils.atomic import atomic_write_bytes
from instyle.utils.progress import is_quiet

__all__ = ["RunLogger", "input_to_rgb", "image_grid", "truncate_metrics"]

log = logging.getLogger("instyle.training")

def input_to_rgb(x: torch.Tensor, task: Task | None = None) -> torch.Tensor:
    """Encoder inputs ``[B, C, S, S]`` -> ``[B, 3, S, S]`` in [-1, 1] for display, as the
    task shows its inputs (:func:`instyle.tasks.preview_input`)."""
    return torch.stack([preview_input(xi, task) for xi in x])


def image_grid(
    x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor, max_images: int = 4, task: Task | None = None
) -> torch.Tensor:
    """``[3, H, W]`` grid in [0, 1]: one row per sample, columns input | target | output."""
    from torchvision.utils import make_grid

    n = min(max_images, x.shape[0])
    size = y.shape[-1]
    xs = torch.nn.functional.interpolate(input_to_rgb(x[:n], task), size=(size, size), mode="nearest")
    ys = y[:n].detach().float().cpu()
    outs = torch.nn.functional.interpolate(y_hat[:n].detach().float().cpu(), size=(size, size), mode="nearest")
    cells = torch.stack([xs, ys, outs.clamp(-1, 1)], dim=1).flatten(0, 1)
    return make_grid((cells + 1) / 2, nrow=3, padding=2)


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the records of ``metrics.jsonl`` up to ``step`` (the step a run starts or
    resumes from): a killed run logged steps past its last checkpoint, which the resumed
    run logs again. Unreadable lines (a record cut off by the kill) go too. Returns the
    number of lines removed."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return 0
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
            if int(record["step"]) <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    if len(kept) != len(lines):
        atomic_write_bytes(path, "".join(k + "\n" for k in kept).encode())
    return len(lines) - len(kept)


class RunLogger:
    """Everything a run reports. On non-main ranks every method is a no-op."""

    def __init__(
        self, run_root: Path, enabled: bool, total_steps: int, start_step: int, progress: bool = True,
        task: Task | None = None,
    ):
        self.enabled = enabled
        self.task = task
        self.writer = None
        self.bar = None
        self.root = Path(run_root)
        self.metrics_path = self.root / "metrics.jsonl"
        if not enabled:
            return
        truncate_metrics(self.metrics_path, start_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the events a killed run wrote after its checkpoint.
            purge = start_step + 1 if start_step > 0 else None
            self.writer = SummaryWriter(log_dir=str(Path(run_root) / "logs"), purge_step=purge)
        except ImportError:
            log.warning("tensorboard is not installed: no TensorBoard logs (pip install 'instyle[train]')")
        # `instyle --quiet train ...` turns the bar off like every other command's progress
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, disable=not progress or is_quiet())

    def scalars(self, prefix: str, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({"split": prefix, "step": step, **values}) + "\n")
        text = ", ".join(f"{k}={v:.4f}" for k, v in values.items())
        (self.bar.write if self.bar is not None and not self.bar.disable else log.info)(f"[{prefix}] step {step}: {text}")

    def images(self, tag: str, step: int, x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor) -> None:
        """The input | target | output grid to TensorBoard and, as the original did, to
        ``RUN_DIR/images/<split>/<step>.png`` (``tag`` is ``images/<split>``)."""
        if not self.enabled:
            return
        grid = image_grid(x, y, y_hat, task=self.task)
        if self.writer is not None:
            self.writer.add_image(tag, grid, step)
        arr = (grid.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        atomic_write_bytes(self.root / tag / f"{step:06d}.png", buf.getvalue())

    def advance(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
