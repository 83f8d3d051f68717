"""Training benchmarks.

``curve`` (default): the toy inversion experiment of tests/test_training.py, longer.
A frozen random 32 px generator renders images from known w; a small W encoder is
trained to invert them. The run is done in chunks, each one resumed from the previous
checkpoint (so it also exercises resume), and after every chunk the script prints
reconstruction L2, random-backbone LPIPS, the distance of the recovered w to the true
ones and the cosine between their deviations from the average latent.

``speed``: step time and images/s of the training step for the tiny toy config and,
optionally, for the published architectures with random weights of the real sizes
(``--sizes 256 1024``; IR-SE-50 encoder, ArcFace ID loss, LPIPS, Ranger), in fp32 or
bf16, on any device.

    python benchmarks/train_curve.py curve --steps 1000 --chunk 100
    python benchmarks/train_curve.py speed --device cuda --sizes 256 1024 --precision fp32 bf16 --batch 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import instyle
from instyle.data import PairedImageDataset
from instyle.losses import LPIPSLoss, Objective, ObjectiveConfig
from instyle.models import PSPConfig
from instyle.models.init import random_psp
from instyle.training import TrainConfig, build_optimizer, prepare_for_training, train, train_step
from instyle.training.step import Precision
from instyle.training.toy import save_toy_generator, toy_config, toy_generator, write_toy_dataset
from instyle.utils.device import resolve_device


@torch.no_grad()
def evaluate(model, x: torch.Tensor, w_true: torch.Tensor, lpips: LPIPSLoss) -> dict[str, float]:
    model.eval()
    w_plus = model.encode(x)
    y_hat = model.decode(w_plus, resize=True)
    w, avg = w_plus[:, 0], model.latent_avg[0]
    return {
        "l2": torch.nn.functional.mse_loss(y_hat, x).item(),
        "lpips": lpips(y_hat, x).item(),
        "w_dist": (w - w_true).norm(dim=1).mean().item(),
        "w_cos": torch.nn.functional.cosine_similarity(w - avg, w_true - avg, dim=1).mean().item(),
    }


def curve(args) -> None:
    root = Path(tempfile.mkdtemp(prefix="instyle_curve_"))
    g = toy_generator(size=32, style_dim=16, seed=0)
    save_toy_generator(g, root / "gen")
    w_true = write_toy_dataset(g, root / "train", args.images, seed=1)
    cfg = toy_config(root / "gen", root / "train", encoder_type="BackboneEncoderUsingLastLayerIntoW", learn_in_w=True,
                     learning_rate=args.lr, batch_size=args.batch, max_steps=args.chunk, board_interval=args.chunk)
    ds = PairedImageDataset.from_folders(root / "train", image_size=32)
    x = torch.stack([ds[i]["x"] for i in range(len(ds))])
    torch.manual_seed(123)
    lpips = LPIPSLoss("alex", random_backbone=True)
    run = root / "run"
    from instyle.training import build_model

    start = evaluate(build_model(cfg), x, w_true, lpips)
    print(f"{'step':>6} {'L2':>8} {'LPIPS':>8} {'|w-w*|':>8} {'cos':>6} {'s/step':>7}")
    print(f"{0:6d} {start['l2']:8.4f} {start['lpips']:8.4f} {start['w_dist']:8.3f} {start['w_cos']:6.3f}")
    step = 0
    while step < args.steps:
        step = min(step + args.chunk, args.steps)
        t = time.perf_counter()
        train(cfg.replace(max_steps=step), run, resume=step > args.chunk)
        dt = (time.perf_counter() - t) / args.chunk
        m = evaluate(instyle.load(run / "checkpoints" / "latest"), x, w_true, lpips)
        print(f"{step:6d} {m['l2']:8.4f} {m['lpips']:8.4f} {m['w_dist']:8.3f} {m['w_cos']:6.3f} {dt:7.3f}", flush=True)
    print(f"L2 fell {start['l2'] / m['l2']:.1f}x, LPIPS {start['lpips'] / m['lpips']:.1f}x; |w-w*| "
          f"{start['w_dist']:.2f} -> {m['w_dist']:.2f} (run folder {run})")


def _time_steps(model, objective, optimizer, x, precision, steps: int, warmup: int, device) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        train_step(model, objective, optimizer, model.latent_avg, x, x, True, precision)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        train_step(model, objective, optimizer, model.latent_avg, x, x, True, precision)
    sync()
    return (time.perf_counter() - t) / steps


def speed(args) -> None:
    device = resolve_device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch}")
    for name in ["tiny", *[str(s) for s in args.sizes]]:
        for precision in args.precision:
            torch.manual_seed(0)
            if name == "tiny":
                root = Path(tempfile.mkdtemp(prefix="instyle_speed_"))
                save_toy_generator(toy_generator(size=32, style_dim=16), root / "gen")
                cfg = toy_config(root / "gen", root, encoder_type="BackboneEncoderUsingLastLayerIntoW", learn_in_w=True)
                from instyle.training import build_model

                model = build_model(cfg)
                objective = Objective(cfg.objective())
                size = 32
            else:
                size = int(name)
                model = random_psp(PSPConfig.for_output_size(size), seed=0).train()
                obj_cfg = ObjectiveConfig(id_lambda=0.1, l2_lambda=1.0, lpips_lambda=0.8, start_from_latent_avg=True,
                                          random_loss_networks=True)
                objective = Objective(obj_cfg)  # seeded random LPIPS / ArcFace networks
                cfg = TrainConfig(image_size=256, optim_name="ranger")
            model.to(device)
            objective.to(device)
            optimizer = build_optimizer(prepare_for_training(model, cfg), "ranger", 1e-4)
            x = torch.rand(args.batch, 3, model.input_size, model.input_size, device=device) * 2 - 1
            try:
                dt = _time_steps(model, objective, optimizer, x, Precision(precision, device.type), args.steps,
                                 args.warmup, device)
            except (RuntimeError, ValueError) as e:
                print(f"{name:>5} px {precision}: failed ({str(e).splitlines()[0][:120]})")
                continue
            print(f"{name:>5} {'' if name == 'tiny' else 'px'} {precision}: {dt * 1000:8.1f} ms/step, "
                  f"{args.batch / dt:7.1f} images/s (output {size}px, encoder input {model.input_size}px)")
            del model, objective, optimizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode")
    c = sub.add_parser("curve")
    c.add_argument("--steps", type=int, default=1000)
    c.add_argument("--chunk", type=int, default=100)
    c.add_argument("--images", type=int, default=64)
    c.add_argument("--batch", type=int, default=8)
    c.add_argument("--lr", type=float, default=2e-3)
    s = sub.add_parser("speed")
    s.add_argument("--device", default="auto")
    s.add_argument("--sizes", type=int, nargs="*", default=[])
    s.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    if args.mode == "speed":
        speed(args)
    else:
        if args.mode is None:
            args = c.parse_args([])
        curve(args)


if __name__ == "__main__":
    main()
