"""Where the time goes: per-operator CPU time of a pSp part on the reference or fast path.

    python benchmarks/profile_generator.py                          # 1024-px generator, both paths
    python benchmarks/profile_generator.py --part encoder --paths fast
    python benchmarks/profile_generator.py --torch-profiler         # torch.profiler table instead

The default profiler times every ATen call with the calling thread's CPU clock on ONE
intra-op thread, so its numbers barely move when other processes load the machine
(wall-clock profiles on a shared 2-core box swing by 2-3x). Use ``--torch-profiler``
for the usual ``torch.profiler`` table (wall time, all threads).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from instyle.models import get_config
from instyle.models.init import random_psp
from instyle.ops import use_backend
from instyle.ops.fast_memory import retained_memory


class ThreadTimeProfiler(TorchDispatchMode):
    """Accumulates thread CPU seconds per (ATen op, first two input shapes)."""

    def __init__(self):
        super().__init__()
        self.seconds: dict[tuple, float] = collections.defaultdict(float)
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t = time.thread_time()
        out = func(*args, **(kwargs or {}))
        shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))[:2]
        key = (func.overloadpacket.__name__, shapes)
        self.seconds[key] += time.thread_time() - t
        self.calls[key] += 1
        return out

    def report(self, top: int) -> str:
        total = sum(self.seconds.values())
        by_op: dict[str, float] = collections.defaultdict(float)
        for (name, _), sec in self.seconds.items():
            by_op[name] += sec
        lines = [f"total {total:.3f} s CPU"]
        lines.append("by op: " + ", ".join(f"{n} {s:.3f}" for n, s in sorted(by_op.items(), key=lambda kv: -kv[1])[:8]))
        for key, sec in sorted(self.seconds.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"  {sec:7.3f} s {100 * sec / total:5.1f}%  x{self.calls[key]:<3d} {key[0]:26s} {key[1]}")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="psp_ffhq_1024", help="registered pSp config")
    parser.add_argument("--part", choices=("generator", "encoder"), default="generator")
    parser.add_argument("--paths", default="reference,fast", help="comma-separated: reference, fast")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--top", type=int, default=20, help="rows per table")
    parser.add_argument("--torch-profiler", action="store_true", help="torch.profiler wall-time table instead")
    args = parser.parse_args(argv)

    if not args.torch_profiler:
        torch.set_num_threads(1)
    model = random_psp(get_config(args.config), seed=0, latent_samples=256)
    x = torch.randn(args.batch, model.input_nc, model.input_size, model.input_size)
    with torch.no_grad(), use_backend("reference"):
        w = model.encode(x)

    def run():
        return model.encode(x) if args.part == "encoder" else model.decode(w)

    for path in [p for p in args.paths.split(",") if p]:
        backend = {"reference": "reference", "fast": "auto"}[path]
        with torch.no_grad(), use_backend(backend), retained_memory(path == "fast"):
            run()  # warm-up
            print(f"== {args.config} {args.part}, batch {args.batch}, {path} path")
            if args.torch_profiler:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                    run()
                print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.top))
            else:
                with ThreadTimeProfiler() as prof:
                    run()
                print(prof.report(args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
