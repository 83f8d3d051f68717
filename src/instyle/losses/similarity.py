"""Shared bookkeeping of the embedding-similarity losses (identity and MoCo).

Both compare l2-normalised embeddings e(.) of the output ``y_hat``, the target ``y``
and the input ``x``: loss = mean over the batch of ``1 - <e(y_hat), e(y)>``, and log
how much closer to the target the output is than the input was.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["SimilarityOutput", "similarity_terms"]


class SimilarityOutput(NamedTuple):
    """Result of an embedding-similarity loss.

    Attributes:
        loss: 0-d tensor, ``mean_b(1 - <e(y_hat_b), e(y_b)>)``.
        improvement: Python float, ``mean_b(<e(y_hat_b), e(y_b)> - <e(y_b), e(x_b)>)``
            (the original's ``sim_improvement`` / ``id_improve``).
        logs: per sample ``{"diff_target", "diff_input", "diff_views"}`` =
            ``<e(y_hat), e(y)>``, ``<e(y_hat), e(x)>``, ``<e(y), e(x)>``.
    """

    loss: torch.Tensor
    improvement: float
    logs: list[dict[str, float]]


def similarity_terms(e_y_hat: torch.Tensor, e_y: torch.Tensor, e_x: torch.Tensor) -> SimilarityOutput:
    """Loss, improvement and logs from embeddings ``[B, D]`` (already l2-normalised;
    ``e_y`` and ``e_x`` carry no gradient)."""
    diff_target = (e_y_hat * e_y).sum(1)
    with torch.no_grad():
        diff_input = (e_y_hat * e_x).sum(1).tolist()
        diff_views = (e_y * e_x).sum(1).tolist()
    targets = diff_target.detach().tolist()
    logs = [
        {"diff_target": t, "diff_input": i, "diff_views": v} for t, i, v in zip(targets, diff_input, diff_views)
    ]
    improvement = sum(t - v for t, v in zip(targets, diff_views)) / len(targets)
    return SimilarityOutput((1 - diff_target).mean(), improvement, logs)
