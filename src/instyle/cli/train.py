"""``instyle train``: train a pSp encoder (or resume a run)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from instyle.cli.common import error
from instyle.errors import InstyleError

EXAMPLES = """\
examples:
  instyle train --preset inversion --generator stylegan2-ffhq-config-f.pt --id-weights model_ir_se50.pth \\
      --train ffhq/ --val celeba_test/ --out runs/ffhq_encode
  instyle train --resume runs/ffhq_encode --set max_steps=600000     # continue exactly where it stopped
  instyle train --checkpoint psp_ffhq_encode.pt --train faces/ --out runs/finetune   # architecture from the file
  torchrun --nproc_per_node 4 -m instyle.cli.main train --preset inversion ...   # 4 GPUs, same options

--set takes any config key (see --list-keys); values are JSON where they parse (0.5, true, [8,16,32,64], null).
"""

#: Command-line flags that set config keys (flag dest -> key).
FLAG_KEYS = {
    "generator": "stylegan_weights",
    "checkpoint": "checkpoint_path",
    "id_weights": "ir_se50_weights",
    "w_encoder": "w_encoder_checkpoint_path",
    "train": "train_target",
    "train_source": "train_source",
    "val": "val_target",
    "val_source": "val_source",
    "device": "device",
}
PATH_KEYS = {"stylegan_weights", "checkpoint_path", "ir_se50_weights", "train_target", "train_source", "val_target",
             "val_source", "lpips_weights", "moco_weights", "w_encoder_checkpoint_path",
             "resnet34_weights"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a pSp, e4e, ReStyle or HyperStyle encoder (resumable, TensorBoard, multi-GPU with torchrun)",
        description="Train a pSp-family encoder (pSp, e4e, ReStyle, HyperStyle: the family key) on image folders. The run folder gets config.json, TensorBoard logs, "
        "metrics.jsonl and checkpoints/{latest,best} in instyle's format; kill it any time and --resume.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", type=Path, help="a JSON training config (e.g. a run's config.json)")
    src.add_argument("--preset", help="a task recipe, e.g. 'inversion' (see --list-presets)")
    p.add_argument("--generator", help="pretrained StyleGAN2 (rosinality .pt, NVIDIA .pkl, pSp .pt or instyle dir); "
                   "StyleGAN3 for family=restyle3 (NVIDIA .pkl, .pt state dict or instyle dir)")
    p.add_argument("--checkpoint", help="fine-tune this pSp, e4e, ReStyle, HyperStyle or ReStyle-over-StyleGAN3 checkpoint (its architecture and task are read from it)")
    p.add_argument("--id-weights", dest="id_weights", help="ArcFace model_ir_se50.pth (identity loss, encoder init)")
    p.add_argument("--w-encoder", dest="w_encoder", help="HyperStyle (family=hyperstyle): the frozen W-encoder file")
    p.add_argument("--train", help="folder of training target images, or a prepared folder (target/ + source/)")
    p.add_argument("--train-source", dest="train_source", help="folder of training inputs, paired by file name")
    p.add_argument("--val", help="folder of validation target images, or a prepared folder (target/ + source/)")
    p.add_argument("--val-source", dest="val_source", help="folder of validation inputs, paired by file name")
    p.add_argument("--out", type=Path, help="run folder to create")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in this folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--list-keys", action="store_true", help="print the config keys with their defaults and exit")
    p.add_argument("--list-presets", action="store_true", help="print the available presets and exit")
    p.set_defaults(func=run)


def _absolute(values: dict) -> dict:
    from instyle.training.config import flatten_objective_keys

    values = flatten_objective_keys(values)  # the objective's weight files too, when nested
    return {k: (str(Path(v).expanduser().resolve()) if k in PATH_KEYS and isinstance(v, str) else v) for k, v in values.items()}


def resolve_config(args):
    """The TrainConfig and run folder an invocation describes (raises ConfigError)."""
    from instyle.training import TrainConfig, fine_tuning_base, get_preset, parse_overrides
    from instyle.utils.config import ConfigError

    flags = {FLAG_KEYS[k]: v for k, v in vars(args).items() if k in FLAG_KEYS and v is not None}
    overrides = parse_overrides(args.overrides)
    if args.resume is not None:
        extra = sorted(k for k in flags if k != "device")
        if args.config or args.preset or args.out or extra:
            raise ConfigError("--resume continues a run with its own config; change keys with --set (and --device)")
        base = TrainConfig.load(args.resume / "config.json").to_dict()
        return TrainConfig.from_dict({**base, **_absolute({**flags, **overrides})}), args.resume
    if args.out is None:
        raise ConfigError("give the run folder with --out RUN_DIR (or --resume RUN_DIR)")
    base: dict = {}
    if args.preset:
        preset = get_preset(args.preset)
        base = {**preset.overrides, "task": preset.name}
    elif args.config:
        try:
            base = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{args.config}: unreadable training config ({e})") from None
        if not isinstance(base, dict):
            raise ConfigError(f"{args.config}: a training config must be a JSON object")
    checkpoint = overrides.get("checkpoint_path", flags.get("checkpoint_path"))
    if checkpoint:  # fine-tuning: the architecture comes from the checkpoint, not from --set
        base = fine_tuning_base(str(Path(checkpoint).expanduser()), base)
    return TrainConfig.from_dict(_absolute({**base, **flags, **overrides})), args.out


def run(args) -> int:
    from instyle.training import TrainConfig, list_presets, train

    if args.list_keys:
        for k, v in TrainConfig().to_flat_dict().items():
            print(f"{k} = {json.dumps(v)}")
        return 0
    if args.list_presets:
        from instyle.training import get_preset

        for name in list_presets():
            print(f"{name}: {get_preset(name).description}")
        return 0
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config, run_dir = resolve_config(args)
        result = train(config, run_dir, resume=args.resume is not None)
    except (InstyleError, OSError) as e:  # a bug elsewhere keeps its traceback
        error(str(e))
        return 2
    if result.bad_files:
        error(f"training finished, but {result.bad_files} unreadable image file(s) were skipped (named above)")
        return 1
    return 0
