"""Deterministic random initialisation (for tests, benchmarks and the quickstart)."""

from __future__ import annotations

import torch

from instyle.models.psp import PSP, PSPConfig


def random_psp(config: PSPConfig, seed: int = 0, latent_samples: int = 4096) -> PSP:
    """A pSp model with seeded random weights and ``latent_avg = decoder.mean_latent()``.

    The result is **not a trained model**: its outputs are abstract textures. It is the
    same for the same seed, config and PyTorch version.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PSP(config)
    model.set_latent_avg(model.decoder.mean_latent(latent_samples, seed=seed), generator_average=True)
    model.random_weights = True
    return model.eval()
