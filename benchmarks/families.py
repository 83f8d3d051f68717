"""Time per image of the inversion families, side by side in one run: ReStyle (pSp encoder,
5 iterations), HyperStyle (5 iterations) and StyleFeatureEditor, encode + full-size decode.

    python benchmarks/families.py              # published sizes (1024 px), batch 1, 2 repetitions
    python benchmarks/families.py --quick      # smoke run: tiny models, one repetition

Models have seeded random weights of the published architectures (timing does not depend
on the values). Repetitions are interleaved (each runs every family once) and the table
reports medians and the ratio to the first row, so background load hits all rows alike.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from instyle.models import PSP, EncoderConfig, GeneratorConfig, PSPConfig
from instyle.models.encoders.hypernetwork import HyperNetConfig
from instyle.models.encoders.w_encoder import WEncoderConfig
from instyle.models.hyperstyle import HyperStyle, HyperStyleConfig
from instyle.models.sfe import SFE, SFEConfig

ITERATIONS = 5


@dataclass
class Row:
    family: str
    seconds: float
    ratio: float


def _tiny_generator() -> GeneratorConfig:
    return GeneratorConfig(size=32, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 16})


def build(size: str) -> dict[str, tuple[torch.nn.Module, int]]:
    """``{family: (model in eval mode, input side)}`` for ``size`` ``"full"`` or ``"tiny"``."""
    torch.manual_seed(0)
    if size == "full":
        gen = GeneratorConfig(size=1024)
        restyle = PSP(PSPConfig(encoder=EncoderConfig(type="BackboneEncoder", input_nc=6, n_styles=18), generator=gen,
                                family="restyle"))
        hyper = HyperStyle(HyperStyleConfig(generator=gen))
        sfe = SFE(SFEConfig())
        return {"ReStyle (pSp, 5 it.)": (restyle, 256), "HyperStyle (5 it.)": (hyper, 256), "SFE": (sfe, 1024)}
    gen = _tiny_generator()
    narrow = dict(style_dim=32, widths=(8, 16, 24, 32), units=(1, 1, 1, 1), input_size=64)
    restyle = PSP(PSPConfig(encoder=EncoderConfig(type="BackboneEncoder", input_nc=6, n_styles=gen.n_latent, **narrow),
                            generator=gen, family="restyle"))
    hyper = HyperStyle(HyperStyleConfig(
        generator=gen,
        hypernet=HyperNetConfig.for_generator(gen, widths=(8, 8, 16, 16), units=(1, 1, 1, 1), code_dim=16,
                                              shared_inner=8, inner=8),
        w_encoder=WEncoderConfig(n_styles=gen.n_latent, style_dim=32, widths=(8, 12, 16, 24), units=(1, 1, 1, 1),
                                 input_size=64),
        resize_to=64,
    ))
    e4e = EncoderConfig(type="Encoder4Editing", n_styles=gen.n_latent, **narrow)
    sfe = SFE(SFEConfig(generator=gen, e4e=e4e, widths=(8, 8, 16, 16), units=(1, 1, 1, 1), fuser_blocks=1,
                        feature_index=5, input_size=64))
    return {"ReStyle (pSp, 5 it.)": (restyle, 64), "HyperStyle (5 it.)": (hyper, 64), "SFE": (sfe, 32)}


def invert(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Encode and render at the generator's full size, as each family's inference does."""
    with torch.inference_mode():
        if isinstance(model, SFE):
            return model.decode(model.encode(x))
        if isinstance(model, HyperStyle):
            w, deltas = model.encode(x, iterations=ITERATIONS)
            return model.decode(w, weights_deltas=deltas)
        return model.decode(model.encode(x, iterations=ITERATIONS))


def rows(size: str = "full", reps: int = 2) -> list[Row]:
    models = build(size)
    for m, _ in models.values():
        m.eval()
    times: dict[str, list[float]] = {name: [] for name in models}
    inputs = {name: torch.rand(1, 3, side, side) * 2 - 1 for name, (_, side) in models.items()}
    for name, (m, _) in models.items():  # warm-up, untimed
        invert(m, inputs[name])
    for _ in range(reps):
        for name, (m, _) in models.items():
            t = time.perf_counter()
            invert(m, inputs[name])
            times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(v) for name, v in times.items()}
    first = next(iter(med.values()))
    return [Row(name, s, s / first) for name, s in med.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny models, one repetition")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = rows("tiny" if args.quick else "full", 1 if args.quick else args.reps)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, batch 1, CPU float32")
    print("| family | s / image | vs first row |")
    print("| --- | --- | --- |")
    for r in result:
        print(f"| {r.family} | {r.seconds:.3f} | {r.ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
