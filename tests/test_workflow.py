"""The user's workflow end to end with the commands as documented: prepare -> train ->
evaluate -> encode -> edit / interpolate on the written latents (default layouts, no renaming
between steps), and fine-tuning from a checkpoint without repeating its architecture."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import instyle
from instyle.cli.main import main
from instyle.training import TrainConfig, build_model
from instyle.training.toy import save_toy_generator, toy_config, toy_generator, write_toy_dataset

#: A tiny W+ encoder for the toy generators (what a user passes with --set for a small model).
TINY = [
    "--set", "encoder_init=random", "--set", "encoder_widths=[8,16,32,64]", "--set", "encoder_units=[1,1,1,1]",
    "--set", "random_loss_networks=true", "--set", "optim_name=adam", "--set", "workers=0",
    "--set", "test_workers=0", "--set", "progress=false", "--set", "device=cpu", "--set", "batch_size=4",
    "--set", "id_lambda=0",  # the identity loss reads a 256 px face window
]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wf")
    g = toy_generator(size=32, style_dim=16, seed=0)
    save_toy_generator(g, root / "gen")
    write_toy_dataset(g, root / "train", 8, seed=1)
    return {"root": root, "gen": root / "gen", "train": root / "train"}


def _run(*argv) -> None:
    rc = main([str(a) for a in argv])
    assert rc == 0, f"instyle {' '.join(map(str, argv))} exited with {rc}"


def test_fine_tuning_reads_the_architecture_from_the_checkpoint(toy, tmp_path, capsys):
    """`train --checkpoint` used to need the checkpoint's architecture again with --set
    (here learn_in_w, the encoder type, image_size and start_from_latent_avg)."""
    cfg = toy_config(toy["gen"], toy["train"], encoder_type="BackboneEncoderUsingLastLayerIntoW", learn_in_w=True,
                     start_from_latent_avg=False)
    build_model(cfg).save_pretrained(tmp_path / "psp")
    _run("train", "--checkpoint", tmp_path / "psp", "--train", toy["train"], "--out", tmp_path / "run",
         "--set", "max_steps=1", *TINY)
    used = TrainConfig.load(tmp_path / "run" / "config.json")
    assert (used.encoder_type, used.learn_in_w, used.image_size, used.objective.start_from_latent_avg) == (
        "BackboneEncoderUsingLastLayerIntoW", True, 32, False)
    assert used.task == "inversion" and used.objective.l2_lambda == 1.0  # the checkpoint's task and its recipe
    # an explicit value contradicting the checkpoint is refused, naming the key and both values
    rc = main(["train", "--checkpoint", str(tmp_path / "psp"), "--train", str(toy["train"]), "--out",
               str(tmp_path / "run2"), "--set", "image_size=64", *TINY])
    assert rc == 2
    assert "image_size: config 64 vs checkpoint 32" in capsys.readouterr().err
    assert not (tmp_path / "run2" / "checkpoints").exists()


def test_fine_tuning_message_names_the_contradicting_key(toy, tmp_path):
    from instyle.utils.config import ConfigError

    cfg = toy_config(toy["gen"], toy["train"])
    build_model(cfg).save_pretrained(tmp_path / "psp")
    with pytest.raises(ConfigError, match=r"image_size: config 64 vs checkpoint 32.*reads them from the checkpoint"):
        build_model(cfg.replace(checkpoint_path=str(tmp_path / "psp"), image_size=64))


def test_building_around_a_small_generator_says_what_is_built(toy, caplog):
    """A tiny generator with a large encoder input used to build it silently."""
    cfg = toy_config(toy["gen"], toy["train"], image_size=64)
    with caplog.at_level(logging.INFO, logger="instyle.training"):
        model = build_model(cfg)
    text = caplog.text
    n = sum(p.numel() for p in model.encoder.parameters())
    assert f"input 64 px x 3 channels: {n / 1e6:.1f}M parameters" in text
    assert "generator: 32 px" in text
    assert "the encoder reads 64 px inputs but the generator makes 32 px images: set image_size=32" in text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="instyle.training"):
        build_model(cfg.replace(image_size=32))
    assert "parameters" in caplog.text and "but the generator makes" not in caplog.text


def _images(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))


@pytest.mark.slow
def test_prepare_train_evaluate_encode_edit_interpolate_on_real_photos(faces_dir, toy, tmp_path):
    photos = faces_dir / "ffhq_aligned"
    names = sorted(p.stem for p in photos.glob("*.png"))[:6]
    assert len(names) >= 4, f"{photos}: expected at least 4 aligned face photos"
    subset = tmp_path / "photos"
    subset.mkdir()
    for n in names:  # a subset keeps the test small; the photos are read, never copied into the project
        (subset / f"{n}.png").symlink_to(photos / f"{n}.png")
    data, run, report = tmp_path / "data", tmp_path / "run", tmp_path / "report"

    _run("prepare", "super_resolution", "--photos", subset, "--out", data, "--size", 32, "--option", "factors=2,4")
    assert _images(data / "target") == _images(data / "source") == [f"{n}.png" for n in names]

    _run("train", "--preset", "super_resolution", "--generator", toy["gen"], "--train", data, "--val", data,
         "--out", run, "--set", "image_size=32", "--set", "max_steps=2", "--set", "val_interval=2",
         "--set", "image_interval=1", "--set", "resize_factors=2,4", *TINY)
    model_dir = run / "checkpoints" / "latest"
    assert instyle.load(model_dir).config.task == "super_resolution"
    assert _images(run / "images" / "train"), "training wrote no sample image files"

    _run("evaluate", "--checkpoint", model_dir, "--data", data, "--out", report, "--identity", "none")
    scored = json.loads((report / "report.json").read_text())
    assert (scored["n_images"], scored["failed"], scored["task"]) == (len(names), [], "super_resolution")
    per_image = (report / "per_image.csv").read_text()
    assert all(n in per_image for n in names)  # the prepared pairs, not their inputs as extra "targets"

    enc = tmp_path / "encoded"
    _run("encode", "--checkpoint", model_dir, data / "source", "--out", enc, "--save-latents", "--device", "cpu")
    latents = sorted((enc / "latents").glob("*.npy"))
    assert [p.stem for p in latents] == names

    direction = tmp_path / "d.npy"
    np.save(direction, np.random.default_rng(0).standard_normal(16).astype(np.float32))
    _run("edit", "direction", latents[0], "--checkpoint", model_dir, "--direction", direction,
         "--strengths=-1,0,1", "--out", tmp_path / "edited", "--device", "cpu")
    assert len(_images(tmp_path / "edited" / latents[0].stem)) == 3  # one image per strength
    _run("interpolate", "--checkpoint", model_dir, latents[0], latents[-1], "--steps", 3, "--out",
         tmp_path / "interp", "--animation", "none", "--device", "cpu")
    assert len(_images(tmp_path / "interp")) >= 3
