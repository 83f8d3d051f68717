"""Batch jobs never lose or overwrite data (issue 13 section 3): output names, output folders
inside input folders, resumable alignment, file modes, full disks and malformed inputs."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from instyle.cli.main import main
from instyle.inference.io import InputFile, collect_input_files, output_names
from instyle.models import get_config
from instyle.models.init import random_psp
from instyle.utils.atomic import atomic_path, atomic_write_bytes

from .conftest import shared_path
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
    assert output_names(same_label) == ["a/p/x.png", "b/p/x.png"]  # last resort: the whole path
    by_case = [InputFile(Path("/a") / "X.png", Path("/a")), InputFile(Path("/a") / "x.png", Path("/a"))]
    assert output_names(by_case) == ["a/X.png", "a/x.png"]  # never X and x: one file on macOS
    with pytest.raises(ValueError, match="/a/x.png, /a/x.png"):
        output_names([by_case[1], by_case[1]])


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


@pytest.mark.parametrize("command", ["encode", "mix", "prepare", "edit"])
def test_output_into_the_input_folder_is_refused_and_inputs_untouched(tiny_dir, same_stems, tmp_path, capsys, command):
    before = _files(same_stems)
    np.save(tmp_path / "d.npy", np.ones(64, np.float32))
    if command == "prepare":
        argv = ["prepare", "inversion", "--photos", str(same_stems)]
    elif command == "edit":
        argv = ["edit", "direction", str(same_stems), "-c", str(tiny_dir), "--direction", str(tmp_path / "d.npy"), "--device", "cpu"]
    else:
        argv = [command, "-c", str(tiny_dir), str(same_stems), "--device", "cpu"]
    rc = main([*argv, "--out", str(same_stems)])
    err = capsys.readouterr().err
    assert rc == 2 and "is an input folder" in err and "Traceback" not in err
    assert _files(same_stems) == before
    if command in ("encode", "mix"):
        single = same_stems / "face.png"
        assert main([command, "-c", str(tiny_dir), str(single), "--out", str(same_stems), "--device", "cpu"]) == 2
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


# --------------------------------------------------------------------------- full disk, unwritable output


def _full_disk(monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("instyle.utils.atomic.os.fsync", fsync)


def _argv(command: str, tiny_dir: Path, photos: Path) -> list[str]:
    if command == "prepare":
        return ["prepare", "sketch2face", "--photos", str(photos), "--size", "32"]
    if command == "align":
        return ["align", str(photos), "--size", "32"]
    return [command, "-c", str(tiny_dir), str(photos), "--device", "cpu", "--batch-size", "1"]


@pytest.mark.parametrize("command", ["encode", "mix", "prepare"])
def test_full_disk_is_one_line_and_leaves_nothing_half_written(tiny_dir, same_stems, tmp_path, monkeypatch, capsys, command):
    out = tmp_path / "out"
    _full_disk(monkeypatch)
    rc = main([*_argv(command, tiny_dir, same_stems), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    lines = [line for line in err.splitlines() if "No space left on device" in line]
    assert 1 <= len(lines) <= 2, err  # the first failed output (and the summary), not one line per file
    assert [p for p in out.rglob("*") if p.is_file()] == []  # no partial outputs, no temporary files


@pytest.mark.parametrize("command", ["encode", "mix", "prepare", "evaluate"])
def test_unwritable_output_folder_is_one_line(tiny_dir, same_stems, tmp_path, capsys, command):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    argv = _argv(command, tiny_dir, same_stems)
    if command == "evaluate":
        argv = ["evaluate", "-c", str(tiny_dir), "--data", str(same_stems), "--device", "cpu", "--identity", "none"]
    rc = main([*argv, "--out", str(blocker / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and "cannot write there" in err and str(blocker / "out") in err


# --------------------------------------------------------------------------- face alignment in threads, resume

SMALL_UNALIGNED = ["img5.jpg", "img12.jpg", "img46.jpg", "img50.jpg"]


@pytest.fixture
def unaligned_copy(tmp_path) -> Path:
    pytest.importorskip("dlib", reason="face alignment needs dlib (pip install 'instyle[faces]')")
    src = shared_path("data", "faces", "unaligned")
    d = tmp_path / "photos"
    d.mkdir()
    for name in SMALL_UNALIGNED:
        shutil.copy(src / name, d / name)
    return d


def test_dlib_models_are_one_per_thread():
    pytest.importorskip("dlib")
    from instyle.alignment.models import hog_detector

    main_thread = hog_detector()
    assert hog_detector() is main_thread
    other = []
    t = threading.Thread(target=lambda: other.append(hog_detector()))
    t.start()
    t.join()
    assert other[0] is not main_thread


@pytest.mark.slow
def test_encode_align_over_several_batches_does_not_crash(tiny_dir, unaligned_copy, tmp_path):
    # Background loaders align while the model runs: a shared dlib detector segfaulted here (rc 139).
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "instyle.cli.main", "encode", "-c", str(tiny_dir), str(unaligned_copy), "--out", str(out),
           "--device", "cpu", "--align", "--batch-size", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert sorted(p.name for p in out.glob("*.png")) == sorted(n.replace(".jpg", ".png") for n in SMALL_UNALIGNED)


@pytest.mark.slow
def test_align_workers_match_a_single_thread(unaligned_copy, tmp_path):
    outs = []
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        assert main(["align", str(unaligned_copy), "--out", str(out), "--size", "64", "--workers", str(workers)]) == 0
        outs.append(out)
    assert _files(outs[0]) == _files(outs[1])


def test_align_killed_run_resumes_with_every_crop_recorded(unaligned_copy, tmp_path, monkeypatch, capsys):
    from PIL import Image

    out = tmp_path / "out"
    real_save = Image.Image.save
    calls = []

    def dies_on_third_crop(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:
            raise KeyboardInterrupt  # stands for the kill
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", dies_on_third_crop)
    assert main(["align", str(unaligned_copy), "--out", str(out), "--size", "64"]) != 0
    monkeypatch.undo()
    assert len(list(out.glob("*.png"))) == 2
    assert main(["align", str(unaligned_copy), "--out", str(out), "--size", "64"]) == 0
    index = json.loads((out / "alignment.json").read_text())
    crops = sorted(p.name for p in out.glob("*.png"))
    assert sorted(index) == crops and len(crops) == len(SMALL_UNALIGNED)
    for name, record in index.items():
        assert Path(record["source"]).name == name.replace(".png", ".jpg") and len(record["quad"]) == 4
    assert "2 already done" in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"{not json", b'{"img5.png": {"quad": [1, 2]}}', b"\xff\xfe"])
def test_align_rebuilds_a_corrupt_index(unaligned_copy, tmp_path, capsys, content):
    out = tmp_path / "out"
    assert main(["align", str(unaligned_copy / "img5.jpg"), "--out", str(out), "--size", "64"]) == 0
    (out / "alignment.json").write_bytes(content)
    capsys.readouterr()
    assert main(["align", str(unaligned_copy / "img5.jpg"), "--out", str(out), "--size", "64"]) == 0
    err = capsys.readouterr().err
    assert "alignment.json is corrupt" in err and "Traceback" not in err
    assert (out / "alignment.json.corrupt").read_bytes() == content
    assert list(json.loads((out / "alignment.json").read_text())) == ["img5.png"]


# --------------------------------------------------------------------------- evaluate and prepare: shared stems, odd names


@pytest.fixture
def odd_names(tmp_path) -> Path:
    """a.png + a.jpg (a shared stem), a file name that is not UTF-8, and two corrupt files sharing a stem."""
    d = tmp_path / "faces"
    d.mkdir()
    rgb((64, 64), 1).save(d / "a.png")
    rgb((64, 64), 2).save(d / "a.jpg", quality=95)
    rgb((64, 64), 3).save(os.path.join(os.fsencode(d), b"\xffodd.png"))
    (d / "c.png").write_bytes(b"")
    (d / "c.jpg").write_bytes(b"garbage")
    return d


def test_evaluate_keeps_shared_stems_and_odd_names(tiny_dir, odd_names, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["evaluate", "-c", str(tiny_dir), "--data", str(odd_names), "--out", str(out), "--device", "cpu",
               "--identity", "none"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err  # 1: the two corrupt files
    assert "c.png: empty file" in err and "c.jpg: not an image" in err
    report = json.loads((out / "report.json").read_text())
    assert sorted(r["name"] for r in report["per_image"]) == ["a.jpg", "a.png", "\udcffodd"]
    assert len(report["failed"]) == 2
    csv_rows = (out / "per_image.csv").read_text().splitlines()
    assert len(csv_rows) == 4 and any("\\udcffodd" in row for row in csv_rows)
    assert (out / "report.md").is_file() and (out / "best_worst.png").is_file()


def test_prepare_makes_one_pair_per_photo_and_accepts_odd_names(odd_names, tmp_path, capsys):
    out = tmp_path / "pairs"
    assert main(["prepare", "sketch2face", "--photos", str(odd_names), "--out", str(out), "--size", "32"]) == 1
    captured = capsys.readouterr()
    assert "prepared 3 pair(s)" in captured.out and "0 already done" in captured.out
    assert "codec" not in captured.err and "Traceback" not in captured.err
    names = sorted(os.listdir(os.fsencode(out / "target")))
    assert names == [b"a.jpg.png", b"a.png.png", b"\xffodd.png"]
    assert sorted(os.listdir(os.fsencode(out / "source"))) == names


# --------------------------------------------------------------------------- malformed values and files


def test_evaluate_exits_nonzero_when_named_weights_are_refused(tiny_dir, odd_names, tmp_path, capsys):
    bad = tmp_path / "alexnet.pth"
    bad.write_bytes(b"not a state dict")
    data = tmp_path / "good"
    data.mkdir()
    shutil.copy(odd_names / "a.png", data / "a.png")
    rc = main(["evaluate", "-c", str(tiny_dir), "--data", str(data), "--out", str(tmp_path / "r"), "--device", "cpu",
               "--identity", "none", "--lpips-weights", str(bad)])
    err = capsys.readouterr().err
    assert rc == 1 and f"--lpips-weights {bad}: the weights were refused" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "content",
    [b"", b"[1, 2]", b'{"metrics": []}', b'{"metrics": {"mse": "abc"}}', b'{"metrics": {"mse": {"mean": [1]}}}',
     b'{"metrics": {}, "fid": {"x": 1}}'],
)
def test_malformed_compare_report_is_one_line(tmp_path, capsys, content):
    good = {"method": "a", "metrics": {"mse": {"mean": 0.1, "std": 0.0, "n": 1}}, "fid": None}
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_bytes(content)
    rc = main(["evaluate", "--compare", str(tmp_path / "good.json"), str(tmp_path / "bad.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and "bad.json" in err


@pytest.fixture
def latent_and_direction(tmp_path) -> tuple[Path, Path]:
    lat = tmp_path / "code.npy"
    np.save(lat, np.zeros((10, 64), np.float32))
    direction = tmp_path / "smile.npy"
    np.save(direction, np.ones(64, np.float32))
    return lat, direction


@pytest.mark.parametrize("which", ["latent", "direction"])
def test_zero_byte_npy_is_one_line(tiny_dir, latent_and_direction, tmp_path, capsys, which):
    lat, direction = latent_and_direction
    (lat if which == "latent" else direction).write_bytes(b"")
    out = tmp_path / "out"
    rc = main(["edit", "direction", str(lat), "-c", str(tiny_dir), "--direction", str(direction), "--out", str(out),
               "--device", "cpu", "--strengths=-1,1"])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    bad = lat if which == "latent" else direction
    lines = [line for line in err.splitlines() if str(bad) in line]
    assert len(lines) == 1 and "empty file" in lines[0], err
    assert not out.exists() or [p for p in out.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("spec", [",", " , ", "nan", "1,inf", "0:1:0", "0:1:100000000"])
def test_bad_strengths_are_one_line_naming_the_value(tiny_dir, latent_and_direction, tmp_path, capsys, spec):
    lat, direction = latent_and_direction
    out = tmp_path / "out"
    rc = main(["edit", "direction", str(lat), "-c", str(tiny_dir), "--direction", str(direction), "--out", str(out),
               "--device", "cpu", f"--strengths={spec}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1 and repr(spec) in err
    assert not out.exists()


def test_load_image_refuses_special_files_without_blocking(tmp_path):
    from instyle.inference.io import ImageLoadError, load_image

    os.mkfifo(tmp_path / "pipe.png")  # opening it for reading would wait for a writer forever
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(tmp_path / "pipe.png")


@pytest.mark.slow
def test_concurrent_alignment_in_threads_does_not_crash(unaligned_copy):
    # What `serve --concurrency 2` and encode's background loaders do; in a child process, as a
    # shared dlib detector crashes the whole process (segfault) rather than raising.
    code = (
        "import sys\nfrom concurrent.futures import ThreadPoolExecutor\nfrom PIL import Image\n"
        "from instyle.alignment import align_faces\n"
        "imgs = [Image.open(p).convert('RGB') for p in sys.argv[1:]] * 2\n"
        "with ThreadPoolExecutor(2) as pool:\n"
        "    found = list(pool.map(lambda im: len(align_faces(im, size=32, detector='hog')), imgs))\n"
        "print(found)\n"
    )
    paths = [str(unaligned_copy / n) for n in SMALL_UNALIGNED[:2]]
    r = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.strip() == "[1, 1, 1, 1]"


def test_align_full_disk_is_one_line(unaligned_copy, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    _full_disk(monkeypatch)
    rc = main(["align", str(unaligned_copy), "--size", "32", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert len([line for line in err.splitlines() if "No space left on device" in line]) == 1, err
    assert [p for p in out.rglob("*") if p.is_file()] == []
