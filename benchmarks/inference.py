"""What a pSp forward costs: parameters, GMACs per image, images/s, and where time goes.

    python benchmarks/inference.py                 # 256- and 1024-px models, batch 1 and 8
    python benchmarks/inference.py --quick         # batch 1 only, fewer repetitions
    python benchmarks/inference.py --profile       # + top operators of one 1024 forward

Models have random weights of the published sizes (IR-SE-50 FPN encoder, config-f
generator). Times are medians over repetitions after a warm-up; on CUDA every timing
is synchronised. Side-by-side comparisons of the reference ops and fast paths are in
``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from instyle.models import get_config
from instyle.models.init import random_psp
from instyle.ops import get_backend
from instyle.utils.device import resolve_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs after one warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def bench_size(size: int, args, device: torch.device, dtype: torch.dtype) -> list[tuple]:
    """Rows (model, part, batch, img/s, ms/img, GFLOP/s) for one published output size."""
    model = random_psp(get_config("psp_256" if size == 256 else "psp_ffhq_1024"), seed=0, latent_samples=512)
    model = model.to(device=device, dtype=dtype).eval()
    enc_p, dec_p = count_params(model.encoder), count_params(model.decoder)
    print(f"\n{size}px pSp: encoder {enc_p / 1e6:.1f} M params, generator {dec_p / 1e6:.1f} M params")
    x1 = torch.randn(1, 3, 256, 256, device=device, dtype=dtype)
    with torch.inference_mode():
        enc_gmac = flops(lambda: model.encoder(x1)) / 2e9
        w = model.encode(x1)
        dec_gmac = flops(lambda: model.decode(w)) / 2e9
    print(f"  per image: encoder {enc_gmac:.1f} GMAC, generator {dec_gmac:.1f} GMAC, total {enc_gmac + dec_gmac:.1f} GMAC")
    rows = []
    for b in args.batch:
        x = torch.randn(b, 3, 256, 256, device=device, dtype=dtype)
        with torch.inference_mode():
            t_enc = time_call(lambda x=x: model.encoder(x), device, args.reps)
            t_full = time_call(lambda x=x: model(x, resize=True, randomize_noise=False), device, args.reps)
        for what, t, gmac in (("encoder", t_enc, enc_gmac), ("full pSp", t_full, enc_gmac + dec_gmac)):
            rows.append((f"{size}px", what, b, b / t, 1000 * t / b, 2 * gmac * b / t))
    if args.profile and size == 1024:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.inference_mode(), profile(activities=acts) as prof:
            model(x1, resize=True, randomize_noise=False)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], choices=[256, 1024])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="batch 1, 1 repetition")
    ap.add_argument("--profile", action="store_true", help="print the top operators of one 1024 forward")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.reps = [1], 1
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; dtype {args.dtype}; ops backend {get_backend()}; torch {torch.__version__}")

    rows = []
    for size in args.sizes:
        rows += bench_size(size, args, device, dtype)

    print(f"\n{'model':>7} {'part':>9} {'batch':>5} {'img/s':>8} {'ms/img':>9} {'GFLOP/s':>8}")
    for r in rows:
        print(f"{r[0]:>7} {r[1]:>9} {r[2]:>5} {r[3]:>8.2f} {r[4]:>9.1f} {r[5]:>8.1f}")


if __name__ == "__main__":
    main()
