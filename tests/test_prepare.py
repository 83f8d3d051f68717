"""``instyle prepare`` and ``instyle align`` on real face photos, and the per-task grid."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instyle.cli.main import main
from instyle.tasks import get_task
from instyle.tasks.transforms import labels_to_palette_image

from .conftest import shared_path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three FFHQ-aligned photos (copied to a temporary folder) plus one corrupt file."""
    src = shared_path("data", "faces", "ffhq_aligned")
    folder = tmp_path_factory.mktemp("photos")
    for name in ("0143.png", "0500.png", "0885.png"):
        Image.open(src / name).convert("RGB").resize((128, 128), Image.Resampling.BILINEAR).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def run_cli(*argv: str) -> int:
    return main([str(a) for a in argv])


@pytest.mark.parametrize("task", ["sketch2face", "super_resolution", "inpainting", "inversion"])
def test_prepare_writes_pairs_reports_bad_files_and_resumes(task, photos, tmp_path, capsys):
    out = tmp_path / task
    assert run_cli("prepare", task, "--photos", photos, "--out", out, "--size", "64") == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "skipped files:" in captured.err
    assert "prepared 3 pair(s)" in captured.out
    targets = sorted(p.name for p in (out / "target").iterdir())
    assert targets == ["0143.png", "0500.png", "0885.png"]
    if task == "inversion":
        assert not (out / "source").exists()
    else:
        assert sorted(p.name for p in (out / "source").iterdir()) == targets
        src = Image.open(out / "source" / "0143.png")
        assert src.size == (64, 64) and src.mode == ("L" if task == "sketch2face" else "RGB")
    assert json.loads((out / "prepare.json").read_text())["task"] == task
    before = (out / "target" / "0143.png").stat().st_mtime_ns
    assert run_cli("prepare", task, "--photos", photos, "--out", out, "--size", "64") == 1
    assert "3 already done" in capsys.readouterr().out
    assert (out / "target" / "0143.png").stat().st_mtime_ns == before


def test_prepare_is_deterministic_per_file(photos, tmp_path):
    for run in ("a", "b"):
        run_cli("prepare", "super_resolution", "--photos", photos, "--out", tmp_path / run, "--size", "64")
    for name in ("0143.png", "0500.png"):
        a = np.asarray(Image.open(tmp_path / "a" / "source" / name))
        b = np.asarray(Image.open(tmp_path / "b" / "source" / name))
        assert np.array_equal(a, b)


def test_prepare_seg2face_from_landmarks_and_from_given_labels(photos, tmp_path, capsys):
    pytest.importorskip("dlib")
    good = tmp_path / "good"
    good.mkdir()
    for name in ("0143.png", "0500.png"):
        shutil.copy(photos / name, good / name)
    out = tmp_path / "seg"
    assert run_cli("prepare", "seg2face", "--photos", good, "--out", out, "--size", "64") == 0
    x = get_task("seg2face", size=64).input_from_image(Image.open(out / "source" / "0143.png"))
    assert x.shape == (19, 64, 64) and len(x.argmax(0).unique()) >= 8

    labels = tmp_path / "labels"
    labels.mkdir()
    rng = np.random.default_rng(0)
    given = np.kron(rng.integers(0, 19, (4, 4)), np.ones((8, 8), dtype=np.uint8))
    labels_to_palette_image(given).save(labels / "0143.png")
    Image.fromarray(np.full((32, 32), 40, np.uint8)).save(labels / "0500.png")  # class 40: out of range
    out2 = tmp_path / "seg_given"
    assert run_cli("prepare", "seg2face", "--photos", good, "--labels", labels, "--out", out2, "--size", "64") == 1
    assert "outside [0, 18]" in capsys.readouterr().err
    written_img = Image.open(out2 / "source" / "0143.png")
    written = np.asarray(written_img)
    assert written_img.mode == "L" and written.shape == (64, 64) and set(np.unique(written)) == set(np.unique(given))  # nearest resize


def test_prepare_rejects_bad_task_and_options(photos, tmp_path, capsys):
    assert run_cli("prepare", "sketch2photo", "--photos", photos, "--out", tmp_path) == 2
    assert "available tasks" in capsys.readouterr().err
    assert run_cli("prepare", "super_resolution", "--photos", photos, "--out", tmp_path, "--option", "factors=3") == 2
    assert run_cli("prepare", "image2image", "--photos", photos, "--out", tmp_path) == 2


def test_align_cli_reports_no_face_and_bad_files_and_resumes(tmp_path, capsys):
    pytest.importorskip("dlib")
    faces = shared_path("data", "faces", "unaligned")
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(faces / "img5.jpg", inputs / "img5.jpg")
    Image.new("RGB", (120, 120), (90, 90, 90)).save(inputs / "flat.png")
    (inputs / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    assert run_cli("align", inputs, "--out", out, "--size", "128") == 1
    captured = capsys.readouterr()
    assert "no face found in" in captured.err and "flat.png" in captured.err
    assert "empty.jpg" in captured.err
    assert "aligned 1 face(s) from 1 image(s)" in captured.out
    assert Image.open(out / "img5.png").size == (128, 128)
    record = json.loads((out / "alignment.json").read_text())["img5.png"]
    assert len(record["quad"]) == 4 and record["source"].endswith("img5.jpg")
    run_cli("align", inputs / "img5.jpg", "--out", out, "--size", "128")
    assert "1 already done" in capsys.readouterr().out


def test_task_grid_photo_to_prepared_input(tmp_path):
    """Writes grid.png: each row photo | the task's prepared input (as a picture) | the network input.

    Set INSTYLE_TEST_OUTPUTS=DIR to keep the grid for a look.
    """
    from instyle.inference.io import make_grid

    pytest.importorskip("dlib")
    photo = Image.open(shared_path("data", "faces", "ffhq_aligned") / "0500.png").convert("RGB").resize((256, 256))
    rng = np.random.default_rng(0)
    rows = []
    for name in ("inversion", "sketch2face", "seg2face", "super_resolution", "inpainting"):
        task = get_task(name, **({"factors": (8,)} if name == "super_resolution" else {}))
        prepared = task.make_input_image(photo, rng)
        x = task.input_from_image(prepared)
        if x.shape[0] == 19:
            shown = labels_to_palette_image(x.argmax(0).numpy()).convert("RGB")
        elif x.shape[0] == 1:
            shown = Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8)).convert("RGB")
        else:
            shown = Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))
        assert x.shape[1:] == (256, 256)
        if prepared.mode == "L" and name == "seg2face":
            prepared = labels_to_palette_image(np.asarray(prepared))  # index image -> colours to look at
        rows.append([photo, prepared.convert("RGB"), shown])
    inp = get_task("inpainting", mask="random")
    masked = inp.make_input_image(photo, np.random.default_rng(3))
    rows.append([photo, masked, Image.fromarray(((inp.input_from_image(masked).permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))])
    grid = make_grid(rows, cell=128)
    keep = os.environ.get("INSTYLE_TEST_OUTPUTS")
    folder = Path(keep) if keep else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    grid.save(folder / "task_grid.png")
    assert grid.size[0] > grid.size[1] / 2


# ---------------------------------------------------------------- every preset trains


@pytest.fixture(scope="module")
def toy_setup(tmp_path_factory):
    """A tiny random generator (32 px) and 8 face photos with a gray copy (image2image inputs)."""
    from instyle.training.toy import save_toy_generator, toy_generator

    root = tmp_path_factory.mktemp("train")
    gen = save_toy_generator(toy_generator(32), root / "generator")
    photos, gray = root / "photos", root / "gray"
    photos.mkdir()
    gray.mkdir()
    for path in sorted(shared_path("data", "faces", "ffhq_aligned").glob("0*.png"))[:8]:
        img = Image.open(path).convert("RGB").resize((128, 128), Image.Resampling.BILINEAR)
        img.save(photos / path.name)
        img.convert("L").convert("RGB").save(gray / path.name)
    return root, gen, photos, gray


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset", ["inversion", "frontalization", "sketch2face", "seg2face", "super_resolution", "inpainting", "image2image"]
)
def test_each_preset_trains_a_tiny_model_on_prepared_pairs(preset, toy_setup):
    """``instyle prepare`` pairs -> the trainer with the preset's overrides: the loss falls in a few steps."""
    from instyle.training import get_preset, train
    from instyle.training.toy import toy_config

    if preset == "seg2face":
        pytest.importorskip("dlib")
    root, gen, photos, gray = toy_setup
    data = root / preset
    extra = ["--inputs", gray] if preset == "image2image" else []
    assert run_cli("prepare", preset, "--photos", photos, "--out", data, "--size", "32", *extra) == 0
    overrides = {
        k: v
        for k, v in get_preset(preset).overrides.items()
        if k not in ("optim_name", "learning_rate", "batch_size", "encoder_type")  # the toy's own
    }
    # The ID and face-crop terms need 256 px inputs and pretrained nets; the toy runs at 32 px.
    overrides.update(id_lambda=0.0, lpips_lambda_crop=0.0, l2_lambda_crop=0.0)
    source = data / "source"
    cfg = toy_config(
        gen,
        data / "target",
        train_source=str(source) if source.is_dir() else None,
        **overrides,
        batch_size=4,
        max_steps=6,
        board_interval=1,
    )
    run = root / f"run_{preset}"
    train(cfg, run)
    losses = [
        json.loads(line)["loss"]
        for line in next(run.rglob("metrics.jsonl")).read_text().splitlines()
        if json.loads(line)["split"] == "train"
    ]
    assert len(losses) == 6
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
