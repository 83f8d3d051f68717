"""StyleGAN3 synthesis: reference ops vs fast paths, per image, side by side in one run.

    python benchmarks/stylegan3.py                      # 64 px R generator (the conformance size), batch 1
    python benchmarks/stylegan3.py --size 256 --config T --reps 3
    python benchmarks/stylegan3.py --generator sg3-r-ffhq-1024.pt   # a real file (slow on CPU)

Each repetition runs the reference path (``INSTYLE_OPS=reference``) then the fast path on the
same seeded generator and W+; medians are reported with the ratio and the max abs difference.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import instyle
from instyle.models.stylegan3 import StyleGAN3Config, StyleGAN3Generator
from instyle.ops import use_backend


def build(size: int, config: str) -> StyleGAN3Generator:
    torch.manual_seed(0)
    r = config == "R"
    cfg = StyleGAN3Config(img_resolution=size, channel_base=8192 if size <= 64 else 16384, channel_max=256,
                          conv_kernel=1 if r else 3, use_radial_filters=r)
    return StyleGAN3Generator(cfg).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--config", choices=["R", "T"], default="R")
    p.add_argument("--generator", help="a StyleGAN3 file instead of a seeded random generator")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = instyle.load_generator(args.generator) if args.generator else build(args.size, args.config)
    w = g.mapping(torch.randn(args.batch, g.z_dim, generator=torch.Generator().manual_seed(1)), None)
    times: dict[str, list[float]] = {"reference": [], "auto": []}
    outs = {}
    with torch.no_grad():
        for _ in range(args.reps):
            for backend in ("reference", "auto"):
                with use_backend(backend):
                    t = time.perf_counter()
                    outs[backend] = g.synthesize(w)
                    times[backend].append((time.perf_counter() - t) / args.batch)
    ref, fast = statistics.median(times["reference"]), statistics.median(times["auto"])
    diff = (outs["reference"] - outs["auto"]).abs().max().item()
    cfg = g.config
    name = f"{cfg.img_resolution}px {'R' if cfg.use_radial_filters else 'T'}, batch {args.batch}, {args.threads} thread(s)"
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("| generator | reference s/image | fast s/image | speed-up | max abs diff |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {name} | {ref:.2f} | {fast:.2f} | {ref / fast:.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
