"""The trainer: config, presets, model building, the run folder and CLI, precision
options, and 2-process DDP (gloo, CPU) against one process on the combined batch (learning
and bit-exact resume after SIGKILL, for every family: tests/test_family_contract.py; the
``kill_and_resume`` helper here)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import instyle
from instyle.cli import train as train_cli
from instyle.data import PairedImageDataset
from instyle.losses import LAMBDAS, ObjectiveConfig
from instyle.models.encoders import Backbone
from instyle.tasks import Task, register_task
from instyle.tasks import base as task_base
from instyle.training import (
    TrainConfig,
    TrainPreset,
    accepted_keys,
    build_model,
    build_objective,
    build_optimizer,
    get_preset,
    list_presets,
    parse_overrides,
    prepare_for_training,
    train,
    train_step,
)
from instyle.training.toy import save_toy_generator, toy_config, toy_generator, write_toy_dataset
from instyle.utils.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


# Tiny models gain nothing from intra-op threads (and lose a lot on busy cores).
@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    """A frozen 32 px random generator (16-D w) and 64 training / 16 validation images of it."""
    root = tmp_path_factory.mktemp("toy")
    g = toy_generator(size=32, style_dim=16, seed=0)
    save_toy_generator(g, root / "gen")
    write_toy_dataset(g, root / "train", 64, seed=1)
    write_toy_dataset(g, root / "val", 16, seed=2)
    return {"root": root, "gen": root / "gen", "train": root / "train", "val": root / "val"}


def tiny_config(toy, **overrides) -> TrainConfig:
    base = dict(encoder_type="BackboneEncoderUsingLastLayerIntoW", learn_in_w=True, val_target=str(toy["val"]))
    return toy_config(toy["gen"], toy["train"], **{**base, **overrides})


# ----------------------------------------------------------------------------- config


def test_config_validation_names_bad_values():
    with pytest.raises(ConfigError, match="accepted keys") as e:
        TrainConfig.from_dict({"lpips_lamda": 0.8})
    assert "lpips_lambda" in str(e.value)
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig.from_dict({"batch_size": "four"})
    with pytest.raises(ConfigError, match="learn_in_w"):
        TrainConfig(learn_in_w=True)
    with pytest.raises(ConfigError, match="optim_name"):
        TrainConfig(optim_name="sgd")
    with pytest.raises(ConfigError, match="256x256"):
        TrainConfig(image_size=64, id_lambda=0.1)
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")
    assert set(LAMBDAS) <= set(TrainConfig().to_dict()["objective"]) and set(LAMBDAS) <= set(accepted_keys())
    assert TrainConfig().learning_rate == 1e-4 and TrainConfig().optim_name == "ranger"


def test_default_loader_workers_fit_the_cpus(monkeypatch):
    """The original's 4 / 2 workers, but never more than the CPUs (on 2 cores, 4 workers only
    contend and PyTorch warns 'suggested max number of worker ... is 2')."""
    from instyle.training import config as config_module

    monkeypatch.setattr(config_module, "available_cpus", lambda: 2)
    assert (TrainConfig().workers, TrainConfig().test_workers) == (2, 2)
    monkeypatch.setattr(config_module, "available_cpus", lambda: 1)
    assert (TrainConfig().workers, TrainConfig().test_workers) == (1, 1)
    monkeypatch.setattr(config_module, "available_cpus", lambda: 64)
    assert (TrainConfig().workers, TrainConfig().test_workers) == (4, 2)
    assert TrainConfig(workers=8).workers == 8  # an explicit value is kept


def test_train_config_nests_the_objective_and_takes_its_keys_flat():
    """The loss options live once, in the nested ObjectiveConfig; every one of its keys is still
    accepted under the original's flat name (keywords, ``replace``, ``--set``)."""
    import dataclasses

    from instyle.losses import ObjectiveConfig

    cfg = TrainConfig()
    assert cfg.objective == ObjectiveConfig()
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    objective_fields = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    assert not objective_fields & train_fields  # declared once
    assert objective_fields <= set(accepted_keys())
    assert cfg.replace(id_lambda=0.3, lpips_net="vgg").objective == ObjectiveConfig(id_lambda=0.3, lpips_net="vgg")
    assert dataclasses.replace(cfg, lpips_lambda=0.5).objective.lpips_lambda == 0.5
    assert TrainConfig(lpips_lambda=0.5, objective=ObjectiveConfig(l2_lambda=2.0)).objective == ObjectiveConfig(
        l2_lambda=2.0, lpips_lambda=0.5)  # a flat key goes into the nested one
    with pytest.raises(ConfigError, match="l2_lambda=-1"):
        TrainConfig(l2_lambda=-1)
    with pytest.raises(ConfigError, match=r"unknown objective key\(s\) \['lpips'\]"):
        TrainConfig.from_dict({"objective": {"lpips": 0.5}})


def test_old_flat_config_json_loads_as_the_nested_form(tmp_path):
    """A run folder written before the objective was nested (its keys flat at the top) still
    loads (``--resume`` reads it), equal to the nested config; a new file is nested."""
    flat = {"family": "psp", "image_size": 256, "batch_size": 2, "seed": 7, "id_lambda": 0.1, "lpips_lambda": 0.6,
            "start_from_latent_avg": True, "lpips_net": "vgg", "ir_se50_weights": "/weights/model_ir_se50.pth"}
    (tmp_path / "config.json").write_text(json.dumps(flat))
    old = TrainConfig.load(tmp_path / "config.json")
    nested = TrainConfig(family="psp", image_size=256, batch_size=2, seed=7, objective=ObjectiveConfig(
        id_lambda=0.1, lpips_lambda=0.6, start_from_latent_avg=True, lpips_net="vgg",
        ir_se50_weights="/weights/model_ir_se50.pth"))
    assert old == nested
    old.save(tmp_path / "new.json")
    data = json.loads((tmp_path / "new.json").read_text())
    assert data["objective"]["lpips_lambda"] == 0.6 and "lpips_lambda" not in data
    assert TrainConfig.load(tmp_path / "new.json") == nested
    # --resume's way: the saved (nested) config with a flat --set on top
    assert TrainConfig.from_dict({**data, "lpips_lambda": 0.9}).objective.lpips_lambda == 0.9


def test_config_overrides_and_json_round_trip(tmp_path):
    o = parse_overrides(["lpips_lambda=0.5", "train_decoder=true", "encoder_widths=[8,16,32,64]",
                         "train_target=123", "val_target=null", "workers=2"])
    assert o == {"lpips_lambda": 0.5, "train_decoder": True, "encoder_widths": [8, 16, 32, 64],
                 "train_target": "123", "val_target": None, "workers": 2}
    cfg = TrainConfig.from_dict(o)
    assert cfg.encoder_widths == (8, 16, 32, 64)
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ConfigError, match="accepted keys"):
        parse_overrides(["nope=1"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lpips_lambda"])
    obj = TrainConfig(id_lambda=0.1, start_from_latent_avg=True).objective
    assert obj.id_lambda == 0.1 and obj.start_from_latent_avg


def test_presets_registry(monkeypatch):
    inv = get_preset("inversion")
    cfg = TrainConfig.from_dict(dict(inv.overrides))
    assert cfg.objective.id_lambda == 0.1 and cfg.objective.lpips_lambda == 0.8 and cfg.objective.start_from_latent_avg
    # A new preset is a new task: one registry.
    monkeypatch.setattr(task_base, "_REGISTRY", dict(task_base._REGISTRY))  # undone after the test
    register_task(Task("unit_test_noise", description="t", loss={"l2_lambda": 2.0}))
    p = get_preset("unit_test_noise")
    assert isinstance(p, TrainPreset) and p.description == "t" and p.overrides["l2_lambda"] == 2.0
    assert "unit_test_noise" in list_presets()
    assert TrainConfig.from_dict(dict(p.overrides)).task == "unit_test_noise"
    with pytest.raises(ConfigError, match="inversion"):
        get_preset("no_such_preset")


# ----------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def ir_se50_file(tmp_path_factory) -> tuple[Path, dict]:
    """A randomly initialised ArcFace IR-SE-50 state dict in the official file format."""
    torch.manual_seed(5)
    sd = Backbone(112, 50, "ir_se").state_dict()
    sd = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in sd.items()}
    path = tmp_path_factory.mktemp("irse") / "model_ir_se50.pth"
    torch.save(sd, path)
    return path, sd


def test_build_from_scratch_loads_generator_and_ir_se50(toy, ir_se50_file):
    path, sd = ir_se50_file
    cfg = tiny_config(toy, encoder_init="ir_se50", ir_se50_weights=str(path), encoder_widths=None, encoder_units=None)
    model = build_model(cfg)
    enc = model.encoder.state_dict()
    assert torch.equal(enc["body.5.res_layer.1.weight"], sd["body.5.res_layer.1.weight"])
    assert torch.equal(enc["input_layer.0.weight"], sd["input_layer.0.weight"])
    g = instyle.load_generator(toy["gen"])
    assert torch.equal(model.decoder.state_dict()["convs.0.conv.weight"], g.state_dict()["convs.0.conv.weight"])
    torch.testing.assert_close(model.latent_avg, g.latent_avg)  # learn_in_w: [1, D]
    assert model.training
    params = prepare_for_training(model, cfg)
    assert len(params) == len(list(model.encoder.parameters()))
    assert not any(p.requires_grad for p in model.decoder.parameters())
    # a 1-channel input keeps its own (random) input layer
    gray = build_model(cfg.replace(input_nc=1, source_mode="gray", flip=False))
    assert gray.encoder.input_layer[0].weight.shape == (64, 1, 3, 3)
    assert torch.equal(gray.encoder.state_dict()["body.5.res_layer.1.weight"], sd["body.5.res_layer.1.weight"])
    assert not torch.equal(gray.encoder.input_layer[1].weight, sd["input_layer.1.weight"])
    assert not torch.equal(gray.encoder.input_layer[2].weight, sd["input_layer.2.weight"])
    with pytest.raises(ConfigError, match="encoder_init=random"):
        build_model(tiny_config(toy, encoder_init="ir_se50", ir_se50_weights=str(path)))  # narrow widths


def test_build_from_psp_checkpoint_and_mismatch(toy, tmp_path):
    model = build_model(tiny_config(toy))
    model.save_pretrained(tmp_path / "psp")
    again = build_model(tiny_config(toy, checkpoint_path=str(tmp_path / "psp")))
    assert torch.equal(again.encoder.linear.weight, model.encoder.linear.weight)
    with pytest.raises(ConfigError, match="learn_in_w"):
        build_model(tiny_config(toy, checkpoint_path=str(tmp_path / "psp"), encoder_type="GradualStyleEncoder",
                                learn_in_w=False))
    with pytest.raises(ConfigError, match="generator"):
        build_model(tiny_config(toy, stylegan_weights=None))


def test_freeze_batchnorm_and_precision_options(toy):
    cfg = tiny_config(toy)
    model = build_model(cfg)
    opt = build_optimizer(prepare_for_training(model, cfg), "ranger", 1e-3)
    obj = build_objective(cfg.objective)
    x = torch.stack([PairedImageDataset.from_folders(toy["train"], image_size=32)[i]["x"] for i in range(4)])
    bn = model.encoder.input_layer[1]
    stats = bn.running_mean.clone()
    out = train_step(model, obj, opt, model.latent_avg, x, x, False, freeze_batchnorm=True)
    assert torch.equal(bn.running_mean, stats) and not bn.training
    assert set(out.objective.terms) == {"loss_l2", "loss_lpips", "loss"}
    train_step(model, obj, opt, model.latent_avg, x, x, False)
    assert not torch.equal(bn.running_mean, stats) and bn.training


def test_bf16_and_channels_last_run(toy, tmp_path):
    cfg = tiny_config(toy, max_steps=2, precision="bf16", channels_last=True, val_target=None)
    result = train(cfg, tmp_path / "run")
    assert result.step == 2 and all(torch.isfinite(torch.tensor(v)) for v in result.last_terms.values())
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        train(cfg.replace(precision="fp16"), tmp_path / "run16")


# ----------------------------------------------------------------------------- CLI and run folder


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers())
    args = parser.parse_args(["train", *argv])
    return args.func(args)


def test_cli_config_file_nested_objective_paths_absolute_and_flat_set_wins(tmp_path, monkeypatch):
    """``--config`` with the nested objective (a new run's config.json): its weight files are made
    absolute like the top-level ones, and ``--set`` of a flat objective key overrides it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text(json.dumps({"objective": {"lpips_weights": "alex.pth", "lpips_lambda": 0.3,
                                                               "l2_lambda": 2.0}}))
    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--config", "c.json", "--out", "run", "--set", "lpips_lambda=0.5"])
    cfg, _ = train_cli.resolve_config(args)
    assert cfg.objective == ObjectiveConfig(lpips_weights=str(tmp_path.resolve() / "alex.pth"), lpips_lambda=0.5,
                                            l2_lambda=2.0)


def test_cli_run_folder_contents_and_resume_extension(toy, tmp_path, capsys):
    cfg = tiny_config(toy, max_steps=4, val_interval=2, save_interval=2, image_interval=2, board_interval=1,
                      optim_name="ranger")
    cfg.save(tmp_path / "cfg.json")
    run = tmp_path / "run"
    assert cli(["--config", str(tmp_path / "cfg.json"), "--out", str(run), "--set", "seed=3"]) == 0
    saved = TrainConfig.load(run / "config.json")
    assert saved.seed == 3 and saved.max_steps == 4 and Path(saved.train_target).is_absolute()
    for name in ("latest", "best"):
        model = instyle.load(run / "checkpoints" / name)
        assert model.config.learn_in_w and model.config.output_size == 32
    meta = json.loads((run / "checkpoints" / "latest" / "config.json").read_text())["metadata"]
    assert meta["step"] == 4 and meta["train_config"]["seed"] == 3
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "val"}
    assert [r["step"] for r in records if r["split"] == "val"] == [2, 4]
    assert set(records[0]) >= {"loss", "loss_l2", "loss_lpips", "lr"}
    assert list((run / "logs").glob("events.out.tfevents.*"))
    # sample grids as files, like the original's images/train/faces/*.jpg: steps 1, 2, 4 (train), 2, 4 (val)
    assert sorted(p.name for p in (run / "images" / "train").iterdir()) == ["000001.png", "000002.png", "000004.png"]
    assert sorted(p.name for p in (run / "images" / "val").iterdir()) == ["000002.png", "000004.png"]
    grid = Image.open(run / "images" / "train" / "000002.png")
    assert grid.width > 3 * 32 and grid.height > 32  # input | target | output per row
    state = torch.load(run / "checkpoints" / "latest" / "training_state.pt", weights_only=True)
    assert state["step"] == 4 and "slow_buffer" in state["optimizer"]["state"][0]
    # a fresh run into an existing run folder is refused; --resume extends it
    assert cli(["--config", str(tmp_path / "cfg.json"), "--out", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli(["--resume", str(run), "--set", "max_steps=6"]) == 0
    assert json.loads((run / "checkpoints" / "latest" / "config.json").read_text())["metadata"]["step"] == 6


def test_cli_errors_are_one_clear_line(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path / "cache"))
    assert cli(["--preset", "inversion", "--out", str(tmp_path / "r"), "--set", "bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'bogus'" in err and "lpips_lambda" in err and "Traceback" not in err
    assert cli(["--preset", "inversion", "--out", str(tmp_path / "r"), "--set", "batch_size=x"]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert cli(["--preset", "inversion", "--generator", str(toy["gen"]), "--train", str(toy["train"]),
                "--out", str(tmp_path / "r2"), "--set", "image_size=32", "--set", "id_lambda=0"]) == 2
    assert "model_ir_se50.pth" in capsys.readouterr().err  # encoder init needs the ArcFace weights
    listed = cli(["--list-keys"]) == 0 and capsys.readouterr().out
    assert "max_steps = 500000" in listed and "lpips_lambda = 0.8" in listed and "objective" not in listed
    from instyle.cli.main import COMMANDS

    assert "train" in COMMANDS


def test_bad_training_images_are_skipped_and_flagged(toy, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for p in sorted(toy["train"].glob("*.png"))[:16]:
        (data / p.name).write_bytes(p.read_bytes())
    (data / "00003.png").write_bytes(b"garbage")
    cfg = tiny_config(toy, train_target=str(data), val_target=None, max_steps=3)
    cfg.save(tmp_path / "cfg.json")
    assert cli(["--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "run")]) == 1
    assert "1 unreadable image file(s) were skipped" in capsys.readouterr().err


# ----------------------------------------------------------------------------- resume, DDP (subprocesses)

RUNNER = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from instyle.training import TrainConfig, train
    config, run, mode = sys.argv[1:4]
    cfg = TrainConfig.load(config)
    train(cfg, run, resume=mode == "resume")
    """
)


def _runner(tmp_path: Path) -> tuple[Path, dict]:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), "PYTHONFAULTHANDLER": "1"}
    return script, env


def single_and_two_processes(single: TrainConfig, per_process: TrainConfig, tmp_path: Path) -> tuple[dict, dict]:
    """Train ``single`` in one process and ``per_process`` under ``torch.distributed.run`` with
    two processes (each its half of the combined batch); the two runs' final weights."""
    script, env = _runner(tmp_path)
    single.save(tmp_path / "single.json")
    subprocess.run([sys.executable, str(script), str(tmp_path / "single.json"), str(tmp_path / "one"), "fresh"], env=env,
                   check=True, capture_output=True)
    per_process.save(tmp_path / "ddp.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp_path / "ddp.json"), str(tmp_path / "two"), "fresh"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _weights(tmp_path / "one"), _weights(tmp_path / "two")


def _latest_step(run: Path) -> int | None:
    try:
        return json.loads((run / "checkpoints" / "latest" / "config.json").read_text())["metadata"]["step"]
    except (OSError, ValueError, KeyError):
        return None


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "latest" / "model.safetensors"))


def kill_and_resume(cfg: TrainConfig, tmp_path: Path, n: int) -> tuple[Path, Path]:
    """Run ``cfg`` (``n`` steps) uninterrupted, and again SIGKILLed after its first checkpoint
    then resumed; assert both end at step ``n`` with the same weights and the same
    ``metrics.jsonl`` (none twice). Returns the two run folders ``(full, killed)``."""
    cfg.save(tmp_path / "cfg.json")
    script, env = _runner(tmp_path)
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([sys.executable, str(script), str(tmp_path / "cfg.json"), str(full), "fresh"], env=env, check=True,
                   capture_output=True)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "cfg.json"), str(killed), "fresh"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _latest_step(killed) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = _latest_step(killed)
    assert proc.returncode == -signal.SIGKILL and step is not None and step < n, "the run was not killed mid-way"
    subprocess.run([sys.executable, str(script), str(killed / "config.json"), str(killed), "resume"], env=env,
                   check=True, capture_output=True)
    assert _latest_step(killed) == n
    assert _metrics(killed) == _metrics(full)
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    return full, killed


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_on_the_combined_batch(toy, tmp_path):
    common = dict(max_steps=3, optim_name="ranger", learning_rate=1e-2, freeze_batchnorm=True, flip=True,
                  val_target=None)
    single = tiny_config(toy, batch_size=8, **common)
    one, two = single_and_two_processes(single, tiny_config(toy, batch_size=4, **common), tmp_path)
    start = build_model(single).state_dict()
    moved = max((one[k] - start[k]).abs().max().item() for k in one if k.startswith("encoder."))
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    print(f"largest update {moved:.3g}, largest 1- vs 2-process difference {diff:.3g}")
    assert moved > 1e-3
    assert diff < 1e-5, f"2-process result differs by {diff} (update size {moved})"
