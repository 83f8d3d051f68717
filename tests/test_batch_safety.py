"""Batch jobs never lose or overwrite data (issue 13 section 3): output names, output folders
inside input folders, resumable alignment, file modes, full disks and malformed inputs."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from instyle.cli.main import main
from instyle.inference.io import InputFile, collect_input_files, output_names
from instyle.models import get_config
from instyle.models.init import random_psp
from instyle.utils.atomic import atomic_path, atomic_write_bytes

from .helpers import rgb


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_honour_the_umask_like_open(tmp_path, umask022):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    with atomic_path(tmp_path / "b.png") as tmp:
        tmp.write_bytes(b"y")
    with open(tmp_path / "plain.bin", "wb") as f:
        f.write(b"z")
    for name in ("a.bin", "b.png", "plain.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    os.umask(0o077)
    atomic_write_bytes(tmp_path / "c.bin", b"x")
    assert stat.S_IMODE((tmp_path / "c.bin").stat().st_mode) == 0o600


# --------------------------------------------------------------------------- output names and folders


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model") / "tiny"
    random_psp(get_config("tiny"), seed=3, latent_samples=256).save_pretrained(d)
    return d


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def same_stems(tmp_path) -> Path:
    """face.png, face.jpg and face_1.png (the name a counter would have made up), plus sub/face.png."""
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    rgb((64, 64), 1).save(d / "face.png")
    rgb((64, 64), 2).save(d / "face.jpg", quality=95)
    rgb((64, 64), 3).save(d / "face_1.png")
    rgb((64, 64), 4).save(d / "sub" / "face.png")
    return d


def test_output_names_keep_structure_and_never_collide():
    root = Path("/data/photos")
    files = [InputFile(root / r, root) for r in ("face.png", "face.jpg", "face_1.png", "sub/face.png", "grid.png")]
    names = output_names(files, reserved=["grid", "summary"])
    assert names == ["face.png", "face.jpg", "face_1", "sub/face", "grid.png"]
    # face.png's escalated name equals the stem of face.png.png: that one escalates too.
    files.append(InputFile(root / "face.png.png", root))
    names = output_names(files)
    assert len({n.casefold() for n in names}) == len(names) and names[-1] == "face.png.png"
    two = [InputFile(Path("/a") / "x.png", Path("/a")), InputFile(Path("/b") / "x.png", Path("/b"))]
    assert output_names(two) == ["a/x", "b/x"]
    same_label = [InputFile(Path("/a/p") / "x.png", Path("/a/p")), InputFile(Path("/b/p") / "x.png", Path("/b/p"))]
    with pytest.raises(ValueError, match="/a/p/x.png, /b/p/x.png"):
        output_names(same_label)


@pytest.mark.parametrize("command", ["encode", "mix"])
def test_same_stems_get_distinct_outputs_and_a_manifest(tiny_dir, same_stems, tmp_path, command):
    out = tmp_path / "out"
    extra = ["-n", "2"] if command == "mix" else ["--save-latents"]
    rc = main([command, "-c", str(tiny_dir), str(same_stems), "--out", str(out), "--device", "cpu", *extra])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    records = {Path(r["input"]).relative_to(same_stems).as_posix(): r for r in summary["files"]}
    assert sorted(records) == ["face.jpg", "face.png", "face_1.png", "sub/face.png"]
    main_outputs = [r["outputs"][0] for r in records.values()]
    assert len(set(main_outputs)) == 4  # one distinct output per input, none overwritten
    for r in records.values():
        assert all((out / o).is_file() for o in r["outputs"]), r
    assert records["sub/face.png"]["outputs"][0] == "sub/face.png"
    assert records["face_1.png"]["outputs"][0] == "face_1.png"
    written = {o for r in records.values() for o in r["outputs"]}
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.png")} - {"grid.png"} == written - {
        o for o in written if o.endswith(".npy")
    }


def test_encode_into_the_input_folder_is_refused_and_inputs_untouched(tiny_dir, same_stems, capsys):
    before = _files(same_stems)
    rc = main(["encode", "-c", str(tiny_dir), str(same_stems), "--out", str(same_stems), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "is an input folder" in err and "Traceback" not in err
    assert _files(same_stems) == before
    single = same_stems / "face.png"
    assert main(["encode", "-c", str(tiny_dir), str(single), "--out", str(same_stems), "--device", "cpu"]) == 2
    assert _files(same_stems) == before


def test_encode_into_a_subfolder_of_the_input_excludes_it(tiny_dir, same_stems):
    before = _files(same_stems)
    out = same_stems / "reconstructions"
    for _ in range(2):  # the rerun must not encode the first run's outputs
        assert main(["encode", "-c", str(tiny_dir), str(same_stems), "--out", str(out), "--device", "cpu"]) == 0
        assert json.loads((out / "summary.json").read_text())["encoded"] == 4
    assert {k: v for k, v in _files(same_stems).items() if not k.startswith("reconstructions/")} == before


def test_dangling_symlink_and_special_files_are_named(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rgb((32, 32)).save(d / "ok.png")
    (d / "gone.png").symlink_to(tmp_path / "deleted.png")
    os.mkfifo(d / "pipe.png")
    (tmp_path / "gone_too.png").symlink_to(tmp_path / "nowhere.jpg")
    files, problems = collect_input_files([d, tmp_path / "gone_too.png"])
    assert [f.path.name for f in files] == ["ok.png"]
    text = "\n".join(problems)
    assert "gone.png: broken symbolic link" in text and "deleted.png" in text
    assert "gone_too.png: broken symbolic link" in text
    assert "pipe.png: not a regular file" in text


def test_unreadable_input_folder_is_named(tmp_path, monkeypatch, capsys):
    d = tmp_path / "in"
    (d / "locked").mkdir(parents=True)
    rgb((32, 32)).save(d / "ok.png")
    real_scandir = os.scandir

    def scandir(path="."):  # root reads every folder: simulate the permission error
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    files, problems = collect_input_files([d])
    assert [f.path.name for f in files] == ["ok.png"]
    assert problems == [f"{d / 'locked'}: cannot read folder (Permission denied)"]
