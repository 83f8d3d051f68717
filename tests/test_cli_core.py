"""`instyle encode`, `convert` and `quickstart` end to end, with every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instyle.cli.main import main
from instyle.inference.io import pil_to_tensor
from instyle.models import get_config
from instyle.models.init import random_psp

from .helpers import png_header_only, rgb


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model") / "tiny"
    random_psp(get_config("tiny"), seed=3, latent_samples=256).save_pretrained(d)
    return d


@pytest.fixture
def inputs(tmp_path) -> Path:
    """A folder with good images of many kinds and every kind of bad file."""
    d = tmp_path / "in"
    d.mkdir()
    rgb((80, 60), 1).save(d / "good_rgb.png")
    rgb((70, 70), 2).convert("L").save(d / "gray.png")
    Image.new("RGBA", (50, 50), (200, 10, 10, 128)).save(d / "rgba.png")
    rgb((64, 64), 3).convert("P").save(d / "palette.png")
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(d / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb((80, 40), 4).save(d / "exif.jpg", exif=exif)
    (d / "empty.png").write_bytes(b"")
    (d / "text.jpg").write_bytes(b"not an image\n" * 20)
    full = (d / "good_rgb.png").read_bytes()
    (d / "truncated.png").write_bytes(full[: len(full) // 3])
    rgb((8, 8), 5).save(d / "tiny.png")
    png_header_only(d / "huge.png", 20000, 20000)
    return d


GOOD = ["good_rgb", "gray", "rgba", "palette", "deep16", "exif"]
BAD = ["empty", "text", "truncated", "tiny", "huge"]


def test_encode_processes_good_files_and_reports_bad_ones(tiny_dir, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "does_not_exist.png"
    rc = main(["encode", "-c", str(tiny_dir), str(inputs), str(missing), "--out", str(out), "--batch-size", "3",
               "--device", "cpu", "--save-latents", "--grid"])
    err = capsys.readouterr().err
    assert rc == 1
    for name in GOOD:
        assert (out / f"{name}.png").is_file(), name
        lat = np.load(out / "latents" / f"{name}.npy")
        assert lat.shape == (10, 64) and lat.dtype == np.float32
        assert Image.open(out / f"{name}.png").size == (64, 64)
    for name in BAD:
        assert not list(out.glob(f"{name}.*")), name
        lines = [line for line in err.splitlines() if f"{name}." in line]
        assert len(lines) == 1, (name, err)  # exactly one clear line per bad file
    assert "does_not_exist.png: no such file" in err
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["encoded"] == len(GOOD) and summary["failed"] == len(BAD) + 1
    assert Image.open(out / "grid.png").size[1] > 64
    assert not list(out.rglob(".*tmp*"))


def test_encode_reports_bad_files_but_not_bugs(tiny_dir, tmp_path, monkeypatch):
    """A plain ValueError from preprocessing is a bug: it surfaces instead of 'skipped <file>'."""
    import instyle.inference.pipeline as pipeline

    img = tmp_path / "face.png"
    rgb((64, 64), 5).save(img)

    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(pipeline, "prepare_input", broken)  # the batch job's input preparation
    with pytest.raises(ValueError, match="could not be broadcast"):
        main(["encode", "-c", str(tiny_dir), str(img), "--out", str(tmp_path / "out"), "--device", "cpu"])


def test_encode_matches_library_and_is_deterministic(tiny_dir, tmp_path):
    img_path = tmp_path / "face.png"
    rgb((90, 90), 7).save(img_path)
    outs = []
    for run in range(2):
        out = tmp_path / f"run{run}"
        assert main(["encode", "-c", str(tiny_dir), str(img_path), "--out", str(out), "--device", "cpu", "--save-latents"]) == 0
        outs.append(np.load(out / "latents" / "face.npy"))
    assert np.array_equal(outs[0], outs[1])
    import instyle

    model = instyle.load(tiny_dir)
    x = pil_to_tensor(Image.open(img_path).convert("RGB"), 64)[None]
    with torch.no_grad():
        w = model.encode(x)
    np.testing.assert_allclose(outs[0], w[0].numpy(), atol=1e-5)


def test_encode_side_by_side_and_full_resolution(tiny_dir, tmp_path):
    img = tmp_path / "a.png"
    rgb((64, 64)).save(img)
    out = tmp_path / "o"
    assert main(["encode", "-c", str(tiny_dir), str(img), "--out", str(out), "--device", "cpu", "--side-by-side",
                 "--full-resolution", "--format", "jpg"]) == 0
    assert Image.open(out / "a.jpg").size == (128, 64)


def test_encode_duplicate_stems_do_not_overwrite(tiny_dir, tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        rgb((64, 64)).save(tmp_path / sub / "face.png")
    out = tmp_path / "o"
    assert main(["encode", "-c", str(tiny_dir), str(tmp_path / "x"), str(tmp_path / "y"), "--out", str(out),
                 "--device", "cpu"]) == 0
    # Same relative path under two input roots: the root's name keeps them apart (no made-up counter).
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["x/face.png", "y/face.png"]


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "truncated"])
def test_encode_bad_checkpoint_is_one_clear_line(tiny_dir, tmp_path, capsys, kind):
    ckpt = tmp_path / "model.pt"
    if kind == "empty":
        ckpt.write_bytes(b"")
    elif kind == "garbage":
        ckpt.write_bytes(b"\x00garbage" * 100)
    elif kind == "truncated":
        model = random_psp(get_config("tiny"), seed=0, latent_samples=64)
        torch.save({"state_dict": model.state_dict(), "opts": {"output_size": 64}}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
    img = tmp_path / "a.png"
    rgb((64, 64)).save(img)
    rc = main(["encode", "-c", str(ckpt), str(img), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(ckpt) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_encode_wrong_checkpoint_kind(tmp_path, capsys):
    g = random_psp(get_config("tiny"), seed=0, latent_samples=64).decoder
    ckpt = tmp_path / "g.pt"
    torch.save({"g_ema": g.state_dict()}, ckpt)
    rc = main(["encode", "-c", str(ckpt), str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2 and "load_generator" in capsys.readouterr().err


def test_convert_official_to_own_format(tmp_path, capsys):
    model = random_psp(get_config("tiny"), seed=1, latent_samples=64)
    ckpt = tmp_path / "official.pt"
    torch.save(
        {"state_dict": model.state_dict() | {}, "opts": {"output_size": 64, "encoder_type": "GradualStyleEncoder",
                                                          "device": "cuda:0", "dataset_type": "ffhq_encode"},
         "latent_avg": model.latent_avg.clone()},
        ckpt,
    )
    sd = torch.load(ckpt, weights_only=True)
    sd["state_dict"].pop("latent_avg")
    torch.save(sd, ckpt)
    out = tmp_path / "converted"
    assert main(["convert", str(ckpt), str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    import instyle

    back = instyle.load(out)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # The official format always pools to 256 on resize=True (face_pool); compare raw outputs.
        assert torch.equal(back(x, resize=False, randomize_noise=False), model(x, resize=False, randomize_noise=False))
    g_out = tmp_path / "gen"
    assert main(["convert", str(ckpt), str(g_out), "--kind", "generator"]) == 0
    assert json.loads((g_out / "config.json").read_text())["kind"] == "generator"


def test_quickstart_runs_on_bundled_sample(tmp_path):
    out = tmp_path / "qs"
    photos = tmp_path / "photos"
    photos.mkdir()
    rgb((100, 100), 9).save(photos / "p.png")
    rc = main(["quickstart", "--out", str(out), "--photos", str(photos), "--config", "tiny", "--device", "cpu"])
    assert rc == 0
    assert (out / "model" / "config.json").is_file()
    assert (out / "results" / "p.png").is_file() and (out / "results" / "grid.png").is_file()
    meta = json.loads((out / "model" / "config.json").read_text())["metadata"]
    assert "NOT a trained model" in meta["note"]


def test_cli_help_and_exit_code_subprocess(tiny_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "instyle.cli.main", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "encode" in r.stdout and "quickstart" in r.stdout
    # a subcommand's help in-process (one interpreter start per test is enough)
    from instyle.cli.main import build_parser

    encode_help = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "encode")[1]
    assert "--save-latents" in encode_help.format_help() and "--full-resolution" in encode_help.format_help()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    r = subprocess.run(
        [sys.executable, "-m", "instyle.cli.main", "encode", "-c", str(tiny_dir), str(bad), "--out", str(tmp_path / "o"),
         "--device", "cpu"],
        capture_output=True, text=True,
    )
    assert r.returncode == 1 and "bad.png: not an image" in r.stderr


def test_encode_align_reports_faceless_images(tiny_dir, faces_dir, tmp_path, capsys):
    pytest.importorskip("dlib", reason="face alignment needs dlib (pip install 'instyle[faces]')")
    src = tmp_path / "in"
    src.mkdir()
    (src / "face.jpg").write_bytes((faces_dir / "unaligned" / "img5.jpg").read_bytes())
    Image.new("RGB", (200, 200), (90, 90, 90)).save(src / "flat.png")
    out = tmp_path / "o"
    rc = main(["encode", "-c", str(tiny_dir), str(src), "--out", str(out), "--device", "cpu", "--align"])
    assert rc == 1
    assert (out / "face.png").is_file() and not (out / "flat.png").exists()
    assert "flat.png: no face found" in capsys.readouterr().err


def _task_model_dir(tmp_path, task: str, input_nc: int, label_nc: int) -> Path:
    cfg = get_config("tiny").to_dict()
    cfg["encoder"]["input_nc"] = input_nc
    cfg.update(task=task, label_nc=label_nc)
    from instyle.models.psp import PSPConfig

    d = tmp_path / task
    random_psp(PSPConfig.from_dict(cfg), seed=0, latent_samples=64).save_pretrained(d)
    return d


@pytest.mark.parametrize("label_nc", [19, 11])
def test_encode_seg2face_accepts_palette_and_label_id_pngs(tmp_path, label_nc):
    from instyle.tasks.seg2face import labels_to_palette

    model_dir = _task_model_dir(tmp_path, "seg2face", label_nc, label_nc)
    labels = np.zeros((64, 64), dtype=np.uint8)
    labels[16:48, 16:48] = 1
    labels[20:28, 20:30] = 4 if label_nc == 19 else 2
    src = tmp_path / "maps"
    src.mkdir()
    labels_to_palette(labels).save(src / "palette.png")
    Image.fromarray(labels, "L").save(src / "ids.png")
    bad = labels.copy()
    bad[0, 0] = label_nc + 5
    Image.fromarray(bad, "L").save(src / "out_of_range.png")
    out = tmp_path / "o"
    rc = main(["encode", "-c", str(model_dir), str(src), "--out", str(out), "--device", "cpu", "--side-by-side",
               "--save-latents"])
    assert rc == 1  # the out-of-range map is reported
    assert (out / "palette.png").is_file() and (out / "ids.png").is_file() and not (out / "out_of_range.png").exists()
    a = np.load(out / "latents" / "palette.npy")
    b = np.load(out / "latents" / "ids.npy")
    np.testing.assert_allclose(a, b, atol=1e-6)  # both file kinds give the same one-hot input


def test_encode_sketch2face_preview(tmp_path):
    model_dir = _task_model_dir(tmp_path, "sketch2face", 1, 1)
    sketch = np.full((64, 64), 255, dtype=np.uint8)
    sketch[10:54, 30:33] = 0
    p = tmp_path / "sketch.png"
    Image.fromarray(sketch, "L").save(p)
    out = tmp_path / "o"
    assert main(["encode", "-c", str(model_dir), str(p), "--out", str(out), "--device", "cpu", "--side-by-side"]) == 0
    pair = np.asarray(Image.open(out / "sketch.png").convert("L"))
    left = pair[:, :64]
    assert left.max() >= 250 and left.min() <= 5  # white paper and black line, not a washed-out preview


def test_encode_limit_takes_the_first_inputs_in_path_order(tiny_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        rgb((64, 64), k).save(src / f"{k}.png")
    out = tmp_path / "o"
    assert main(["encode", "-c", str(tiny_dir), str(src), "--out", str(out), "--device", "cpu", "--limit", "2"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png", "1.png"]
    assert json.loads((out / "summary.json").read_text())["encoded"] == 2


def _checkerboard(path, size=64):
    """Finest-scale detail: gone once the photo is down-sampled."""
    board = (np.indices((size, size)).sum(0) % 2 * 255).astype(np.uint8)
    Image.fromarray(np.stack([board] * 3, -1)).save(path)


def test_encode_resize_factor_degrades_super_resolution_inputs(tmp_path, capsys):
    """The original's --resize_factors: the photo is down-sampled by N first (as in training),
    and --side-by-side writes source | down-sampled | output."""
    from instyle.inference.preprocess import prepare_input
    from instyle.models.psp import PSPConfig

    model_dir = _task_model_dir(tmp_path, "super_resolution", 3, 0)
    img = tmp_path / "board.png"
    _checkerboard(img)
    config = PSPConfig.from_dict(json.loads((model_dir / "config.json").read_text())["config"])
    plain, degraded = prepare_input(img, config), prepare_input(img, config, resize_factor=4)
    assert plain.std() > 0.9 and degraded.std() < 0.1  # the checkerboard averages out to grey
    out = tmp_path / "o"
    assert main(["encode", "-c", str(model_dir), str(img), "--out", str(out), "--device", "cpu", "--resize-factor", "4",
                 "--side-by-side", "--save-latents"]) == 0
    assert Image.open(out / "board.png").size == (3 * 64, 64)
    model = __import__("instyle").load(model_dir)
    with torch.no_grad():
        expected = model.encode(degraded[None])[0]
    np.testing.assert_allclose(np.load(out / "latents" / "board.npy"), expected.numpy(), atol=1e-5)
    # other tasks refuse a resize factor, naming it
    capsys.readouterr()
    assert main(["encode", "-c", str(_task_model_dir(tmp_path, "inversion", 3, 0)), str(img), "--out",
                 str(tmp_path / "o2"), "--device", "cpu", "--resize-factor", "4"]) == 1
    assert "super-resolution models only" in capsys.readouterr().err
