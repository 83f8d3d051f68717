"""A toy inversion problem for tests, benchmarks and trying the trainer on a laptop.

A small randomly initialised StyleGAN2 (frozen) renders images from known latents;
an encoder is trained to recover them. No pretrained weights, no downloads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from instyle.interop import save_generator
from instyle.models.stylegan2 import Generator, GeneratorConfig
from instyle.training.config import TrainConfig
from instyle.utils.image import tensor_to_pil

__all__ = ["toy_generator", "render", "write_toy_dataset", "save_toy_generator", "toy_config"]


def toy_generator(
    size: int = 32, style_dim: int = 64, seed: int = 0, rgb_gain: float = 0.3, channels: int | None = None
) -> Generator:
    """A narrow seeded random generator (``[B, 3, size, size]`` output), in eval mode,
    with ``latent_avg`` from 4096 mapping samples.

    ``rgb_gain`` scales the ToRGB weights: at random initialisation the output has a
    standard deviation of ~1.6, so half the pixels would be clipped when saved as
    images (hiding information about the latent); 0.3 brings it to ~0.5. ``channels``: the
    same width at every resolution (what HyperStyle's shared hypernetwork needs); default
    64 up to 8 px, 32 above.
    """
    table = {2**i: (64 if 2**i <= 8 else 32) for i in range(2, int(np.log2(size)) + 1)}
    channels = {r: channels for r in table} if channels is not None else table
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = Generator(GeneratorConfig(size=size, style_dim=style_dim, n_mlp=2, channels=channels))
    with torch.no_grad():
        for to_rgb in [g.to_rgb1, *g.to_rgbs]:
            to_rgb.conv.weight.mul_(rgb_gain)
    g.latent_avg = g.mean_latent(4096, seed=seed)
    return g.eval()


@torch.no_grad()
def render(generator: Generator, w: torch.Tensor) -> torch.Tensor:
    """w ``[B, style_dim]`` -> images ``[B, 3, S, S]`` with the stored noise."""
    images, _ = generator([w], input_is_latent=True, randomize_noise=False)
    return images


@torch.no_grad()
def write_toy_dataset(generator: Generator, folder: str | Path, n: int, seed: int = 1, truncation: float = 0.7) -> torch.Tensor:
    """Render ``n`` images of ``w = avg + truncation * (mapping(z) - avg)`` into ``folder``
    as ``00000.png`` ...; returns the true w ``[n, style_dim]`` (also saved as ``latents.pt``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator.style_dim, generator=gen)
    avg = generator.latent_avg
    w = avg + truncation * (generator.get_latent(z) - avg)
    images = render(generator, w).clamp(-1, 1)
    for i, image in enumerate(images):
        tensor_to_pil(image).save(folder / f"{i:05d}.png")
    torch.save(w, folder / "latents.pt")
    return w


def toy_config(generator_dir: str | Path, train_dir: str | Path, **overrides) -> TrainConfig:
    """A training config for the toy problem: tiny W+ encoder (widths 8..64, one unit per
    stage), random-backbone LPIPS, Adam, fixed noise, CPU, no progress bar."""
    base = dict(
        stylegan_weights=str(generator_dir),
        train_target=str(train_dir),
        image_size=32,
        encoder_init="random",
        encoder_widths=(8, 16, 32, 64),
        encoder_units=(1, 1, 1, 1),
        start_from_latent_avg=True,
        l2_lambda=1.0,
        lpips_lambda=0.8,
        random_loss_networks=True,
        optim_name="adam",
        learning_rate=1e-3,
        batch_size=8,
        workers=0,
        test_workers=0,
        flip=False,
        randomize_noise=False,
        device="cpu",
        progress=False,
        max_steps=100,
        board_interval=10,
        image_interval=1000,
        val_interval=1000,
    )
    return TrainConfig.from_dict({**base, **overrides})


def save_toy_generator(generator: Generator, folder: str | Path) -> Path:
    """Save the generator in instyle's format (what ``stylegan_weights`` reads)."""
    return save_generator(generator, folder)
