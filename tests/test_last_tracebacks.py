"""The last tracebacks and misleading lines of the hostile re-test (issue 28, third part).

Each case was a traceback, a hang or a sentence that said the wrong thing; each must now be
one line naming the file (or option) and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import instyle
from instyle.cli.main import main
from instyle.errors import CheckpointError
from instyle.models import create_psp
from tests.test_hyperstyle import tiny_model, write_official

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def psp_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tb") / "psp"
    create_psp("tiny").save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def hs_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tb") / "hs"
    tiny_model().save_pretrained(d)
    return d


def _photo(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


# ----------------------------------------------------------------------------- evaluate --compare


def _report(path: Path) -> Path:
    path.write_text(json.dumps({"metrics": {"mse": {"mean": 0.1}}, "n_images": 1}))
    return path


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "deep", "folder"])
def test_compare_reads_are_bounded(tmp_path, capsys, kind):
    good = _report(tmp_path / "good.json")
    bad = tmp_path / "bad.json"
    if kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs on this system")
        os.mkfifo(bad)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", bad)
    elif kind == "deep":
        bad.write_text("[" * 100_000 + "]" * 100_000)
    else:
        bad.mkdir()
        (bad / "report.json").mkdir()
    rc, err = _cli(capsys, "evaluate", "--compare", good, bad)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "bad.json" in lines[0], err


# ----------------------------------------------------------------------------- own-format files


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda doc: doc.update(version="abc"), "version"),
        (lambda doc: doc.update(config=None), "config"),
        (lambda doc: doc.update(metadata=[1]), "metadata"),
        (lambda doc: doc["config"].update(deep=json.loads("[" * 200 + "]" * 200)), "nested"),
    ],
    ids=["version-text", "config-null", "metadata-list", "deep"],
)
def test_own_format_config_fields_are_named(psp_dir, tmp_path, change, field):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(psp_dir, d)
    doc = json.loads((d / "config.json").read_text())
    change(doc)
    (d / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=rf"config\.json.*{field}"):
        instyle.load(d)


def test_weights_linked_to_dev_zero_are_not_called_missing(psp_dir, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(psp_dir, d)
    (d / "model.safetensors").unlink()
    os.symlink("/dev/zero", d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a regular file: a device") as e:
        instyle.load(d)
    assert "missing" not in str(e.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_weights_are_not_called_missing(psp_dir, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(psp_dir, d)
    (d / "model.safetensors").chmod(0)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read.*ermission") as e:
        instyle.load(d)
    assert "missing" not in str(e.value)


def test_unreadable_weights_simulated(psp_dir, tmp_path, monkeypatch):
    """The same as above where the tests run as root: opening the file fails with EACCES."""
    import builtins
    import shutil

    import instyle.utils.files as files

    d = tmp_path / "m"
    shutil.copytree(psp_dir, d)

    def refuse(path, *args, **kwargs):
        if str(path).endswith("model.safetensors"):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(files, "open", refuse, raising=False)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read the weights file \(Permission denied\)"):
        instyle.load(d)


def test_w_encoder_dev_zero_is_not_called_empty(tmp_path, capsys):
    path, _ = write_official(tiny_model(), tmp_path / "hs.pt", tmp_path / "w.pt")
    rc, err = _cli(capsys, "encode", _photo(tmp_path / "a.png"), "-c", path, "--w-encoder", "/dev/zero",
                   "--out", tmp_path / "o", "--device", "cpu")
    assert rc == 2 and "/dev/zero: not a regular file: a device" in err and "empty" not in err, err


def test_safetensors_written_with_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        torch.manual_seed(0)
        create_psp("tiny").save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((tmp_path / "m" / name).stat().st_mode) == 0o644, name


# ----------------------------------------------------------------------------- HyperStyle


def test_bf16_on_hyperstyle_is_one_line(hs_dir, tmp_path, capsys):
    rc, err = _cli(capsys, "encode", _photo(tmp_path / "a.png"), "-c", hs_dir, "--out", tmp_path / "o",
                   "--device", "cpu", "--precision", "bf16")
    # one error line, no traceback (the model's loading lines before it are progress, as for every load)
    lines = [line for line in err.strip().splitlines() if not line.startswith(("instyle: loading ", "instyle: loaded "))]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("instyle: error:") and "fp32" in err, err


def test_hyperstyle_opts_contradicting_the_encoder_type(tmp_path):
    path, w_path = write_official(tiny_model(), tmp_path / "hs.pt", tmp_path / "w.pt", encoder_type="GradualStyleEncoder")
    with pytest.raises(CheckpointError, match=r"opts\['encoder_type'\]='GradualStyleEncoder'"):
        instyle.load(path, w_encoder=w_path)


@pytest.mark.parametrize("opts, key", [({"encoder_type": "GradualStyleEncoder"}, "encoder_type"),
                                       ({"encoder_type": "WEncoder", "output_size": 1024}, "output_size"),
                                       ({"encoder_type": "WEncoder", "input_nc": 6}, "input_nc")])
def test_w_encoder_opts_contradicting_its_tensors(tmp_path, opts, key):
    path, w_path = write_official(tiny_model(), tmp_path / "hs.pt", tmp_path / "w.pt")
    w = torch.load(w_path, weights_only=True)
    w["opts"] = opts
    torch.save(w, w_path)
    with pytest.raises(CheckpointError, match=rf"w\.pt.*opts\['{key}'\]"):
        instyle.load(path, w_encoder=w_path)


@pytest.mark.parametrize("name", ["WEncoder", "BackboneEncoderUsingLastLayerIntoW"])
def test_w_encoder_opts_may_name_either_spelling_of_the_w_encoder(tmp_path, name):
    """Published W-encoder files were trained as pSp's ``BackboneEncoderUsingLastLayerIntoW``
    (HyperStyle renames it ``WEncoder`` when it loads them): both names describe these tensors."""
    path, w_path = write_official(tiny_model(), tmp_path / "hs.pt", tmp_path / "w.pt")
    w = torch.load(w_path, weights_only=True)
    w["opts"] = {"encoder_type": name, "input_nc": 3}
    torch.save(w, w_path)
    assert instyle.load(path, w_encoder=w_path) is not None


def test_demo_dimension_error_quotes_the_style_width(tmp_path):
    from instyle.demo.editing import edit_photo, load_edits
    from instyle.demo.inputs import DemoInputError

    np.save(tmp_path / "d7.npy", np.ones(7, np.float32))
    edits = load_edits([str(tmp_path / "d7.npy")])
    model = tiny_model()  # 12 styles of width 32
    with pytest.raises(DemoInputError, match=r"7 components but the model's styles have 32"):
        edit_photo(model, Image.open(_photo(tmp_path / "a.png")), edits, {"d7": 1.0})


# ----------------------------------------------------------------------------- folders and resumes


def test_named_input_inside_unreadable_folder_is_skipped(psp_dir, tmp_path, capsys, monkeypatch):
    """``encode locked/a.png b.png`` where ``locked/`` cannot be searched (EACCES, simulated:
    tests may run as root)."""
    good = _photo(tmp_path / "b.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_stat = os.stat

    def stat_(path, *args, **kwargs):
        if str(path).startswith(str(locked) + os.sep):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat_)
    for cmd in (["encode"], ["mix", "-n", "1"]):
        out = tmp_path / f"o_{cmd[0]}"
        rc, err = _cli(capsys, *cmd, locked / "a.png", good, "-c", psp_dir, "--out", out, "--device", "cpu")
        assert rc == 1, err
        assert "locked/a.png: cannot read" in err and "Permission denied" in err, err
        assert any(p.name.startswith("b") for p in out.rglob("*.png")), cmd


def test_odd_paths_are_problems_not_exceptions():
    from instyle.inference.io import collect_input_files

    files, problems = collect_input_files(["a\x00b", "x" * 5000])
    assert not files and "not a valid path" in problems[0] and "cannot read" in problems[1]
