"""Refinement against the encoder alone, where the ground truth is known.

    python benchmarks/refine.py --config psp_256 --images 2 --steps 50      # real-size layout
    python benchmarks/refine.py --config tiny --images 4 --steps 20          # seconds on a CPU

Random-weight models of the named config: images are rendered from known W+ codes (each
style its own random w), degraded with Gaussian noise and a JPEG round trip, encoded,
then refined with ``optimize`` and ``pti``. MSE / PSNR / LPIPS are measured against the
clean renderings; LPIPS uses AlexNet weights given with --lpips-weights, otherwise a
seeded random backbone (the numbers then compare methods, they are not perceptual).
Prints a Markdown table (seconds per image: encode + decode for the encoder, the
refinement alone for the others).
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image

from instyle.evaluation.metrics import psnr
from instyle.inference.io import pil_to_tensor, tensor_to_pil
from instyle.inference.refine import RefineConfig, refine
from instyle.losses.lpips import LPIPSLoss
from instyle.models import get_config
from instyle.models.init import random_psp
from instyle.utils.device import resolve_device


def degraded_set(model, n: int, seed: int, sigma: float = 0.03, quality: int = 75):
    """``(clean [n, 3, S, S], degraded)`` rendered from known W+ codes."""
    g = torch.Generator().manual_seed(seed)
    dim = model.config.generator.style_dim
    device = next(model.parameters()).device
    with torch.no_grad():
        z = torch.randn(n * model.n_styles, dim, generator=g).to(device)
        w = model.decoder.get_latent(z).view(n, model.n_styles, dim)
        clean = model.decode(w, resize=True).clamp(-1, 1)
    noisy = (clean.cpu() + sigma * torch.randn(clean.shape, generator=g)).clamp(-1, 1)
    out = []
    for img in noisy:
        buf = io.BytesIO()
        tensor_to_pil(img).save(buf, format="JPEG", quality=quality)
        out.append(pil_to_tensor(Image.open(buf), size=None))
    return clean, torch.stack(out).to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--pti-lr", type=float, default=None, help="pti learning rate (default: PTI's 3e-4)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--lpips-weights")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    device = resolve_device(args.device)
    model = random_psp(get_config(args.config), seed=args.seed, latent_samples=512).to(device)
    lpips = LPIPSLoss(weights=args.lpips_weights, random_backbone=args.lpips_weights is None).to(device)
    clean, target = degraded_set(model, args.images, args.seed + 1)
    with torch.no_grad():
        t = time.perf_counter()
        w_enc = model.encode(target)
        rows = {"encoder alone": (model.decode(w_enc, resize=True), (time.perf_counter() - t) / args.images)}
    configs = {"optimize": RefineConfig(steps=args.steps), "pti": RefineConfig(steps=args.steps, lr=args.pti_lr)}
    for method, cfg in configs.items():
        images, seconds = [], []
        for i in range(args.images):
            t = time.perf_counter()
            images.append(refine(model, target[i], w_enc[i], method, cfg, lpips).image)
            seconds.append(time.perf_counter() - t)
        rows[f"{method} ({args.steps} steps)"] = (torch.stack(images), float(np.mean(seconds)))
    print(f"{args.config}, {args.images} images, {device}, LPIPS {'given weights' if args.lpips_weights else 'random backbone'}\n")
    print("| method | MSE | PSNR (dB) | LPIPS | s / image |\n| --- | --- | --- | --- | --- |")
    base = None
    for name, (pred, sec) in rows.items():
        with torch.no_grad():
            pred = pred.clamp(-1, 1)
            mse = float(((pred - clean) ** 2).mean())
            base = base or mse
            lp = float(lpips.per_sample(pred, clean).mean())
        print(f"| {name} | {mse:.4f} ({base / mse:.1f}x lower) | {float(psnr(pred, clean).mean()):.2f} | {lp:.4f} | {sec:.2f} |")


if __name__ == "__main__":
    main()
