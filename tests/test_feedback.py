"""Issue 27: every command says what it is doing, and every result feeds the next command.

Tiny random models throughout; progress output is read from stderr (never a TTY under
pytest, so the one-line-per-N-items log form is what these tests see)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instyle.cli.main import main
from instyle.models import get_config
from instyle.models.init import random_psp
from instyle.utils.progress import Progress, quiet, say, timed


@pytest.fixture(autouse=True)
def announce_at_once(monkeypatch):
    """Start lines at once (by default only a step slower than half a second announces itself),
    so that the tests below see what a long model load prints, and when it does not."""
    monkeypatch.setattr("instyle.utils.progress.ANNOUNCE_AFTER", 0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model") / "tiny"
    random_psp(get_config("tiny"), seed=4, latent_samples=256).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / f"{name}.png")
    return d


# --------------------------------------------------------------------------- the progress module


def test_progress_log_lines_count_rate_and_eta(capsys):
    with Progress(25, "encode", "img", every=10) as bar:
        for _ in range(25):
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    # the first item, every 10th and the last: a log gets a readable record, not a bar
    assert [ln.split()[2] for ln in lines] == ["1/25", "10/25", "20/25", "25/25"]
    assert "ETA" in lines[1] and "img/s" in lines[1] and "took" in lines[-1]


def test_progress_of_a_resumed_job_counts_from_where_it_was(capsys, monkeypatch):
    """A resumed job (video PTI passes) starts at ``initial``; its rate counts this run's items only."""
    import instyle.utils.progress as progress

    clock = iter([0.0, 10.0, 10.0, 20.0, 20.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    with Progress(300, "pti", "pass", every=100, initial=100) as bar:
        bar.update(1)
    line = capsys.readouterr().err.splitlines()[0]
    assert line.split()[2] == "101/300" and "10s/pass" in line.replace(" ", "").replace(".0", ""), line


def test_progress_shows_loss_and_quiet_silences_everything(capsys):
    with Progress(4, "pti a", "step", every=2) as bar:
        for k in range(4):
            bar.update(1, loss=1.0 / (k + 1))
    assert "loss 0.25" in capsys.readouterr().err.splitlines()[-1]
    with quiet():
        say("hello")
        with timed("loading x", "loaded x"), Progress(3, "encode") as bar:
            bar.update(3)
    assert capsys.readouterr().err == ""


def test_quick_steps_and_quick_failures_print_no_start_line(capsys, monkeypatch):
    import time

    monkeypatch.setattr("instyle.utils.progress.ANNOUNCE_AFTER", 0.2)
    with timed("loading quick", "loaded quick"):
        pass
    assert capsys.readouterr().err.startswith("instyle: loaded quick in ")
    with pytest.raises(ValueError), timed("loading bad", "loaded bad"):
        raise ValueError("refused")
    assert capsys.readouterr().err == ""  # the command's one-line error stays the only line
    with timed("loading slow", "loaded slow"):
        time.sleep(0.5)
    assert capsys.readouterr().err.splitlines()[0] == "instyle: loading slow ..."


def test_timed_says_what_and_how_long(capsys):
    with timed("loading model m", "loaded model m") as t:
        t.detail = "psp, 64 px"
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "instyle: loading model m ..."
    assert err[1].startswith("instyle: loaded model m (psp, 64 px) in ") and err[1].endswith("s")


def test_encode_says_what_it_loads_and_shows_progress_and_quiet_turns_it_off(tiny_dir, photos, tmp_path, capsys):
    args = ["encode", str(photos), "-c", str(tiny_dir), "--device", "cpu", "--batch-size", "1"]
    assert main([*args, "-o", str(tmp_path / "o1")]) == 0
    out, err = capsys.readouterr()
    assert f"loading model {tiny_dir} ..." in err and f"loaded model {tiny_dir} (psp, 64 px" in err
    assert "encode 3/3 img" in err
    assert out.startswith("encoded 3 image(s)")  # the result line is unchanged, on stdout
    for argv in ([*args, "-o", str(tmp_path / "o2"), "--quiet"], ["--quiet", *args, "-o", str(tmp_path / "o3")]):
        assert main(argv) == 0
        quiet_out, quiet_err = capsys.readouterr()
        assert quiet_err == "" and quiet_out.startswith("encoded 3 image(s)")
    assert json.loads((tmp_path / "o2" / "summary.json").read_text())["encoded"] == 3


# --------------------------------------------------------------------------- PTI results lead somewhere


@pytest.fixture(scope="module")
def pti_out(tiny_dir, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("pti") / "out"
    rc = main(["encode", str(photos / "a.png"), str(photos / "b.png"), "-c", str(tiny_dir), "-o", str(out),
               "--device", "cpu", "--refine", "pti", "--refine-steps", "2", "--refine-lpips", "0", "--grid"])
    assert rc == 0
    return out


def test_refine_follows_encode_layout(pti_out, capsys):
    summary = json.loads((pti_out / "summary.json").read_text())
    assert summary["method"] == "pti" and summary["refined"] == 2
    files = {Path(r["input"]).name: r for r in summary["files"]}
    assert files["a.png"]["status"] == "refined"
    assert files["a.png"]["outputs"] == ["a.png", "latents/a.npz", "pti/a.safetensors"]
    assert all((pti_out / o).is_file() for r in summary["files"] for o in r["outputs"])
    assert (pti_out / "grid.png").is_file()


def test_refine_shows_steps_and_loss_per_image(tiny_dir, photos, tmp_path, capsys):
    assert main(["encode", str(photos / "a.png"), "-c", str(tiny_dir), "-o", str(tmp_path / "o"), "--device", "cpu",
                 "--refine", "optimize", "--refine-steps", "4", "--refine-lpips", "0"]) == 0
    err = capsys.readouterr().err
    assert "optimize a 4/4 step" in err and "loss " in err


def test_pti_latent_references_its_tuned_generator_by_sha256(pti_out):
    with np.load(pti_out / "latents" / "a.npz") as data:
        meta = json.loads(str(data["meta"]))
    delta = pti_out / "latents" / meta["generator_delta"]
    assert delta.resolve() == (pti_out / "pti" / "a.safetensors").resolve()
    assert meta["generator_delta_sha256"] == hashlib.sha256(delta.read_bytes()).hexdigest()


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def test_edit_mix_interpolate_render_pti_latents_on_the_tuned_generator(tiny_dir, pti_out, tmp_path, capsys):
    """Strength 0 of an edit of a PTI latent is the refined reconstruction, not the untuned one."""
    latent = pti_out / "latents" / "a.npz"
    out = tmp_path / "e"
    d = tmp_path / "dir.npy"
    np.save(d, np.random.default_rng(1).standard_normal(64).astype(np.float32))
    assert main(["edit", "direction", str(latent), "-c", str(tiny_dir), "-o", str(out), "--device", "cpu",
                 "--direction", str(d), "--strengths", "0"]) == 0
    edited = _pixels(out / "a" / "strength_+0.000.png")
    refined = _pixels(pti_out / "a.png")
    assert np.abs(edited - refined).mean() < 1.0
    # the same code on the untuned generator differs (else this test could not fail)
    np.save(tmp_path / "plain.npy", np.load(latent)["w_plus"])
    assert main(["edit", "direction", str(tmp_path / "plain.npy"), "-c", str(tiny_dir), "-o", str(tmp_path / "p"),
                 "--device", "cpu", "--direction", str(d), "--strengths", "0"]) == 0
    assert np.abs(_pixels(tmp_path / "p" / "plain" / "strength_+0.000.png") - refined).mean() > 1.0
    assert main(["mix", str(latent), "-c", str(tiny_dir), "-o", str(tmp_path / "m"), "--device", "cpu", "-n", "1"]) == 0
    assert main(["interpolate", str(latent), str(pti_out / "latents" / "b.npz"), "-c", str(tiny_dir), "-o",
                 str(tmp_path / "i"), "--device", "cpu", "--steps", "2", "--animation", "none"]) == 0
    first = _pixels(tmp_path / "i" / "frames" / "frame_0000.png")
    assert np.abs(first - refined).mean() < 1.0


def test_pti_latent_with_a_missing_or_changed_generator_is_refused(tiny_dir, pti_out, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(pti_out, copy)
    (copy / "pti" / "a.safetensors").unlink()
    tampered = copy / "pti" / "b.safetensors"
    tampered.write_bytes(tampered.read_bytes() + b" ")
    d = tmp_path / "dir.npy"
    np.save(d, np.ones(64, dtype=np.float32))
    rc = main(["edit", "direction", str(copy / "latents" / "a.npz"), str(copy / "latents" / "b.npz"), "-c", str(tiny_dir),
               "-o", str(tmp_path / "e"), "--device", "cpu", "--direction", str(d), "--strengths", "0"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "a.safetensors" in err and "missing" in err
    assert "b.safetensors" in err and "sha256" in err


def test_refine_settings_the_model_cannot_run_fail_before_it_loads(tiny_dir, photos, tmp_path, capsys, monkeypatch):
    base = ["encode", str(photos / "a.png"), "-c", str(tiny_dir), "-o", str(tmp_path / "o"), "--device", "cpu"]
    assert main([*base, "--refine", "restyle"]) == 2
    err = capsys.readouterr().err
    assert "'restyle' refinement needs a ReStyle checkpoint" in err and "this is a psp model" in err
    assert "loading model" not in err
    # no LPIPS weights anywhere: the message names this command's flags, before the model loads
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    assert main([*base, "--refine", "pti"]) == 2
    err = capsys.readouterr().err
    assert "--lpips-weights PATH" in err and "--refine-lpips 0" in err and "instyle train" not in err
    assert "loading model" not in err


def test_peek_family_reads_official_files_without_building_the_model(tmp_path):
    import torch

    from instyle.interop.loading import peek_family

    model = random_psp(get_config("tiny"), seed=0, latent_samples=64)
    torch.save({"state_dict": model.state_dict(), "opts": {"output_size": 64, "n_iters_per_batch": 5}}, tmp_path / "r.pt")
    torch.save({"state_dict": model.state_dict(), "opts": {"stylegan_size": 64}}, tmp_path / "e.pt")
    assert peek_family(tmp_path / "r.pt") == "restyle" and peek_family(tmp_path / "e.pt") == "e4e"
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    assert peek_family(tmp_path / "bad.pt") is None  # the real load reports it


# --------------------------------------------------------------------------- serve


@pytest.mark.slow  # imports Gradio (~10 s on one core)
def test_serve_takes_w_encoder_and_says_loading_then_its_url(tiny_dir, tmp_path, capsys, monkeypatch):
    pytest.importorskip("gradio")
    import instyle.demo.app as app
    from tests.test_hyperstyle import tiny_model, write_official

    hs, w = write_official(tiny_model(), tmp_path / "hs.pt", tmp_path / "w.pt")
    seen = {}

    def fake_run(asgi, **kwargs):  # stands in for uvicorn: record, do not block
        seen.update(kwargs)

    monkeypatch.setattr("uvicorn.run", fake_run)
    monkeypatch.setattr(app, "create_app", lambda store, settings: type("A", (), {"state": type("S", (), {
        "outputs": type("O", (), {"close": lambda self: None})()})()})())
    port = 7999
    assert main(["serve", "-c", f"hs={hs}", "-c", str(tiny_dir), "--w-encoder", str(w), "--device", "cpu",
                 "--port", str(port)]) == 0
    out, err = capsys.readouterr()
    assert f"loading model {hs} ..." in err and f"loaded model {hs} (hyperstyle" in err and f"loaded model {tiny_dir} (psp" in err
    assert "built the demo page" in err
    assert f"http://127.0.0.1:{port}/" in out and seen["port"] == port
    # a --w-encoder no checkpoint needs is refused, before anything loads
    assert main(["serve", "-c", str(tiny_dir), "--w-encoder", str(w), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "none of the checkpoints" in err and "loading model" not in err


# --------------------------------------------------------------------------- evaluate


@pytest.mark.slow
def test_evaluate_iterations_per_iteration_metrics_and_no_cpu_warmup(photos, tmp_path, capsys, monkeypatch):
    import instyle.evaluation.report as report_module
    from tests.test_families import tiny

    tiny("restyle", "BackboneEncoder").save_pretrained(tmp_path / "restyle")
    calls = []
    real = report_module._reconstruct
    monkeypatch.setattr(report_module, "_reconstruct", lambda net, x, it=None: calls.append(it) or real(net, x, it))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no LPIPS weights anywhere
    out = tmp_path / "report"
    rc = main(["evaluate", "-c", str(tmp_path / "restyle"), "--data", str(photos), "--out", str(out), "--device", "cpu",
               "--identity", "none", "--iterations", "2", "--per-iteration", "--limit", "2", "--batch-size", "1"])
    assert rc == 0
    err = capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["iterations"] == 2 and report["n_images"] == 2
    assert calls == [2, 2]  # one timed pass per batch, no warm-up pass on the CPU
    assert "after 0 warm-up pass(es)" in report["runtime_note"]
    steps = report["per_iteration"]
    assert [s["iteration"] for s in steps] == [1, 2]
    assert steps[1]["mse"]["mean"] == pytest.approx(report["metrics"]["mse"]["mean"])
    assert steps[0]["mse"]["mean"] != steps[1]["mse"]["mean"]
    assert "## Per iteration" in (out / "report.md").read_text()
    assert "evaluate 2/2 img" in err
    # what will be missing is said before the model loads, and only for the metrics asked for
    assert err.index("lpips will be n/a") < err.index("loaded model") and "identity will be n/a" not in err
    # the LPIPS note names this command's flag
    assert "instyle evaluate --lpips-weights PATH" in report["unavailable"]["lpips"]
    # --iterations 0 is refused where it is parsed (counts are bounded there); --max-images still
    # parses as --limit's old spelling
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "-c", str(tmp_path / "restyle"), "--data", str(photos), "--out", str(tmp_path / "r2"),
              "--device", "cpu", "--identity", "none", "--max-images", "1", "--iterations", "0"])
    assert exit_info.value.code == 2 and "--iterations: '0' is not an integer in 1..100" in capsys.readouterr().err


# --------------------------------------------------------------------------- align + paste-back


@pytest.fixture(scope="module")
def aligned_run(tiny_dir, faces_dir, tmp_path_factory):
    pytest.importorskip("dlib", reason="face alignment needs dlib (pip install 'instyle[faces]')")
    root = tmp_path_factory.mktemp("align")
    src = root / "in"
    src.mkdir()
    (src / "face.jpg").write_bytes((faces_dir / "unaligned" / "img5.jpg").read_bytes())
    out = root / "out"
    rc = main(["encode", "-c", str(tiny_dir), str(src), "--out", str(out), "--device", "cpu", "--align",
               "--paste-back", "--save-latents"])
    assert rc == 0
    return src, out


def test_encode_align_keeps_crops_and_pastes_back(aligned_run):
    src, out = aligned_run
    index = json.loads((out / "aligned" / "alignment.json").read_text())
    assert list(index) == ["face.png"] and len(index["face.png"]["quad"]) == 4
    assert Path(index["face.png"]["source"]).resolve() == (src / "face.jpg").resolve()
    crop = Image.open(out / "aligned" / "face.png")
    assert crop.size == (64, 64)  # the network input, as aligned for this model
    original = Image.open(src / "face.jpg").convert("RGB")
    pasted = Image.open(out / "pasted" / "face.png").convert("RGB")
    assert pasted.size == original.size
    diff = np.abs(np.asarray(pasted, dtype=np.int16) - np.asarray(original, dtype=np.int16)).max(-1)
    # the face region changed (random model), the corners of the photo did not
    assert diff.mean() > 0.5 and diff[:5, :5].max() == 0 and diff[-5:, -5:].max() == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"][0]["outputs"] == ["face.png", "latents/face.npy", "aligned/face.png", "pasted/face.png"]


def test_refine_with_align_keeps_crops_and_pastes_back(tiny_dir, aligned_run, tmp_path):
    """``encode --align --refine`` keeps what paste-back needs, as a plain ``encode --align`` does,
    and ``--paste-back`` is not silently dropped when refining."""
    src, _ = aligned_run
    out = tmp_path / "refined"
    assert main(["encode", "-c", str(tiny_dir), str(src), "--out", str(out), "--device", "cpu", "--align",
                 "--paste-back", "--refine", "optimize", "--refine-steps", "2", "--refine-lpips", "0"]) == 0
    index = json.loads((out / "aligned" / "alignment.json").read_text())
    assert list(index) == ["face.png"] and Path(index["face.png"]["source"]).resolve() == (src / "face.jpg").resolve()
    assert Image.open(out / "aligned" / "face.png").size == (64, 64)
    assert Image.open(out / "pasted" / "face.png").size == Image.open(src / "face.jpg").size
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"][0]["outputs"] == ["face.png", "aligned/face.png", "pasted/face.png"]
    # a resumed run keeps the index of the images it skips
    assert main(["encode", "-c", str(tiny_dir), str(src), "--out", str(out), "--device", "cpu", "--align",
                 "--paste-back", "--refine", "optimize", "--refine-steps", "2", "--refine-lpips", "0"]) == 0
    assert list(json.loads((out / "aligned" / "alignment.json").read_text())) == ["face.png"]


def test_edit_pastes_back_through_the_alignment_of_encode(tiny_dir, aligned_run, tmp_path, capsys):
    src, out = aligned_run
    d = tmp_path / "dir.npy"
    np.save(d, np.ones(64, dtype=np.float32))
    for inp in (out / "latents" / "face.npy", out / "aligned" / "face.png"):
        e = tmp_path / inp.suffix[1:]
        assert main(["edit", "direction", str(inp), "-c", str(tiny_dir), "-o", str(e), "--device", "cpu",
                     "--direction", str(d), "--strengths=-1,1", "--paste-back"]) == 0
        pasted = sorted(p.relative_to(e / "pasted").as_posix() for p in (e / "pasted").rglob("*.png"))
        assert pasted == ["face/strength_+1.000.png", "face/strength_-1.000.png"]
        assert Image.open(e / "pasted" / "face" / "strength_+1.000.png").size == Image.open(src / "face.jpg").size
    # an input without alignment: its edit is written, the paste-back refused with the reason (exit 1)
    np.save(tmp_path / "plain.npy", np.load(out / "latents" / "face.npy"))
    rc = main(["edit", "direction", str(tmp_path / "plain.npy"), "-c", str(tiny_dir), "-o", str(tmp_path / "x"),
               "--device", "cpu", "--direction", str(d), "--strengths=1", "--paste-back"])
    assert rc == 1 and "no alignment record" in capsys.readouterr().err
    assert (tmp_path / "x" / "plain" / "strength_+1.000.png").is_file()


def test_every_batch_command_shows_its_progress(tiny_dir, photos, tmp_path, capsys):
    d = tmp_path / "dir.npy"
    np.save(d, np.ones(64, dtype=np.float32))
    model = ["-c", str(tiny_dir), "--device", "cpu"]
    runs = {
        "edit 3/3 img": ["edit", "direction", str(photos), *model, "-o", str(tmp_path / "e"), "--direction", str(d),
                         "--strengths=0,1"],
        "mix 3/3 img": ["mix", str(photos), *model, "-o", str(tmp_path / "m"), "-n", "1"],
        "interpolate 3/3 frame": ["interpolate", str(photos / "a.png"), str(photos / "b.png"), *model, "-o",
                                  str(tmp_path / "i"), "--steps", "3", "--animation", "none"],
        "prepare sketch2face 3/3 img": ["prepare", "sketch2face", "--photos", str(photos), "--out", str(tmp_path / "p")],
    }
    for line, argv in runs.items():
        assert main(argv) == 0, argv
        err = capsys.readouterr().err
        assert line in err, err
        assert main([*argv[:-1], argv[-1], "--quiet"] if argv[0] != "prepare" else ["--quiet", *argv[:-2], "--out",
                    str(tmp_path / "p2")]) == 0
        assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- one vocabulary


def test_one_vocabulary_across_commands():
    """--limit everywhere (old --max-images still read), -d only ever --direction, one strength
    range syntax, and the help of every command taking a model names every family."""
    import argparse

    from instyle.cli.main import build_parser
    from instyle.inference.editing import parse_edit, parse_strengths

    parser = build_parser()
    commands = {name: p for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name, p in a.choices.items()}
    subparsers = dict(commands)
    for name, p in commands.items():
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                subparsers.update({f"{name} {k}": v for k, v in a.choices.items()})
    for name, p in subparsers.items():
        opts = p._option_string_actions
        assert "--max-images" not in opts or opts["--max-images"].help == argparse.SUPPRESS, name
        assert "-d" not in opts or opts["-d"].dest == "direction", name
        if "--checkpoint" in opts:
            text = opts["--checkpoint"].help
            assert all(f in text for f in ("pSp", "e4e", "ReStyle", "HyperStyle")), (name, text)
    assert "--limit" in subparsers["evaluate"]._option_string_actions and "--limit" in subparsers["encode"]._option_string_actions
    assert parse_strengths("-1..1:3") == [-1.0, 0.0, 1.0] == list(parse_edit("age=-1..1:3").strengths)
    assert subparsers["edit direction"].get_default("strengths") == "-3..3:7"
    assert parser.parse_args(["evaluate", "--max-images", "2"]).limit == 2


def test_compare_labels_every_report_the_same_way(tmp_path, capsys):
    """Two reports or three: rows, the best-per-metric line and the JSON use the same distinct
    labels (two runs both called ``latest`` are told apart by their report folders)."""

    def report(folder: str, method: str, mse: float) -> Path:
        d = tmp_path / folder
        d.mkdir()
        metrics = {"mse": {"mean": mse, "std": 0.0, "n": 2}}
        (d / "report.json").write_text(json.dumps({"method": method, "metrics": metrics, "data": "x", "n_images": 2}))
        return d

    a, b, c = report("run_a", "latest", 0.2), report("run_b", "latest", 0.1), report("e4e", "e4e.pt", 0.3)
    assert main(["evaluate", "--compare", str(a), str(b)]) == 0
    two = capsys.readouterr().out
    assert "| latest (run_a) |" in two and "| latest (run_b) |" in two
    assert two.strip().splitlines()[-1] == "best: mse: latest (run_b)"
    assert main(["evaluate", "--compare", str(a), str(b), str(c)]) == 0
    three = capsys.readouterr().out
    assert "| latest (run_a) |" in three and "| e4e.pt |" in three
    assert three.strip().splitlines()[-1] == "best: mse: latest (run_b)"


def test_grid_says_how_many_of_the_images_it_shows(tiny_dir, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(3)
    for k in range(17):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{k:02d}.png")
    assert main(["encode", str(d), "-c", str(tiny_dir), "-o", str(tmp_path / "o"), "--device", "cpu", "--grid",
                 "--batch-size", "8"]) == 0
    assert "grid.png shows the first 16 of 17 images" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["grid"] == {"file": "grid.png", "images": 16}
    assert main(["encode", str(d / "00.png"), "-c", str(tiny_dir), "-o", str(tmp_path / "p"), "--device", "cpu", "--grid"]) == 0
    assert "grid.png shows all 1 image(s)" in capsys.readouterr().out


def test_a_folder_of_latents_feeds_edit_and_mix(tiny_dir, photos, tmp_path, capsys):
    """`encode --save-latents` writes OUT/latents/; that folder is an input of edit and mix."""
    out = tmp_path / "enc"
    assert main(["encode", str(photos), "-c", str(tiny_dir), "-o", str(out), "--device", "cpu", "--save-latents"]) == 0
    d = tmp_path / "dir.npy"
    np.save(d, np.ones(64, dtype=np.float32))
    assert main(["edit", "direction", str(out / "latents"), "-c", str(tiny_dir), "-o", str(tmp_path / "e"),
                 "--device", "cpu", "--direction", str(d), "--strengths=0,1"]) == 0
    assert sorted(p.name for p in (tmp_path / "e").glob("*.png")) == ["a.png", "b.png", "c.png", "grid.png"]
    assert main(["mix", str(out / "latents"), "-c", str(tiny_dir), "-o", str(tmp_path / "m"), "--device", "cpu", "-n", "1"]) == 0
    assert "mixed 3 input(s)" in capsys.readouterr().out


def test_slow_jobs_show_seconds_per_item(monkeypatch, capsys):
    import instyle.utils.progress as progress

    clock = iter([0.0, 5.0, 10.0, 20.0, 30.0, 40.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    with Progress(3, "pti face", "step", every=1) as bar:
        for _ in range(3):
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split("(")[1].split(",")[0] for ln in lines] == ["5.0s/step", "5.0s/step", "6.7s/step"]


def test_paste_back_without_align_is_refused_before_loading(tiny_dir, photos, tmp_path, capsys):
    assert main(["encode", str(photos), "-c", str(tiny_dir), "-o", str(tmp_path / "o"), "--paste-back"]) == 2
    err = capsys.readouterr().err
    assert "--paste-back --align" in err and "loading model" not in err


def test_serve_iterations_reach_hyperstyle_models_too():
    """`serve --iterations N` (ModelStore.set_iterations) used to be ignored by HyperStyle models,
    whose encode reads its config; the page's table then showed the wrong count."""
    from instyle.demo.store import ModelEntry, ModelStore
    from tests.test_hyperstyle import tiny_model

    model = tiny_model()
    store = ModelStore([ModelEntry("hs", model)])
    store.set_iterations(2)
    assert store.describe()[0]["iterations"] == 2
    import torch

    with torch.no_grad():
        w, _ = model.encode(torch.zeros(1, 3, 256, 256), return_all=True)
    assert len(w) == 2


def test_quiet_turns_the_training_bar_off_too(tmp_path):
    from instyle.training.logger import RunLogger

    with quiet():
        logger = RunLogger(tmp_path / "run", True, 3, 0, progress=True)
    assert logger.bar.disable
    logger.close()


def test_a_pti_latent_without_its_generator_is_refused(tiny_dir, pti_out, tmp_path, capsys):
    """A PTI code whose tuned generator is not referenced (e.g. the demo's download, or an older
    file) is refused by name instead of being rendered on the untuned generator."""
    from instyle.inference.latents import load_latent, save_latent

    w, _, meta = load_latent(pti_out / "latents" / "a.npz")
    save_latent(tmp_path / "lone.npz", w[0], meta={"method": "pti", "steps": 2})
    d = tmp_path / "dir.npy"
    np.save(d, np.ones(64, dtype=np.float32))
    rc = main(["edit", "direction", str(tmp_path / "lone.npz"), "-c", str(tiny_dir), "-o", str(tmp_path / "e"),
               "--device", "cpu", "--direction", str(d), "--strengths=0"])
    assert rc == 1 and "lone.npz" in capsys.readouterr().err


def test_demo_pti_edit_download_says_it_needs_its_tuned_generator(tiny_psp, tmp_path):
    from instyle.demo import actions
    from instyle.demo.editing import edit_photo
    from instyle.inference.latents import load_latent
    from instyle.inference.refine import RefineError, referenced_delta

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    r = edit_photo(tiny_psp, photo, {}, {}, refine="pti", steps=1)
    path = actions.write_latent(r.latent, tmp_path / "face.npy", meta=r.meta)
    _, _, meta = load_latent(path)
    assert path.suffix == ".npz" and meta["method"] == "pti"
    with pytest.raises(RefineError, match="tuned generator"):
        referenced_delta(path, meta, tiny_psp.decoder)
