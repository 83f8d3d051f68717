"""ReStyle's iterative refinement (``scripts/inference_iterative.py`` of the original).

Start from the average image (the generator applied to ``latent_avg``, pooled to 256);
then each iteration encodes ``cat(image, current output pooled to 256)`` into a residual,
(256 = the encoder's input size; a narrow test model pools to its own),
adds it to the current latent (``latent_avg`` at the first iteration) and decodes with
the stored noise maps. The stored noise makes ``decode(latents[i])`` reproduce the
iteration's image exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_ITERATIONS", "average_image", "refine"]

from instyle.models.family import DEFAULT_ITERATIONS  # the original's n_iters_per_batch at inference


def average_image(model) -> torch.Tensor:
    """``[3, R, R]``: the generator's image of ``latent_avg`` (stored noise), pooled to
    ``resize_to`` like the original ``get_average_image``."""
    avg = model.latent_avg[None]
    return model.decode(avg, resize=True)[0].float()


def refine(model, x: torch.Tensor, iterations: int = DEFAULT_ITERATIONS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run ``iterations`` ReStyle steps on images ``x [B, 3, S, S]`` in [-1, 1].

    Returns:
        per iteration ``(w_plus [B, n_styles, 512], image [B, 3, H, W])``: the latent fed to
        the generator and its full-resolution output (not pooled, not clamped).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations={iterations!r} must be a positive integer")
    side = model.input_hw  # the original: 256x256 for both the encoder and face_pool (cars: 192x256)
    feedback = F.adaptive_avg_pool2d(average_image(model).to(x.dtype)[None], side).expand(x.shape[0], -1, -1, -1)
    latent = model.latent_avg[None].to(x.dtype)
    steps = []
    for _ in range(iterations):
        residual = model.encoder(torch.cat([x, feedback], dim=1))
        latent = residual + latent
        images = model.decode(latent)
        steps.append((latent, images))
        feedback = F.adaptive_avg_pool2d(images, side)
    return steps
