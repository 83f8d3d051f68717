"""Regression tests for issue 13 section 1: the web demo reads only what was uploaded to it,
never hangs on special files, bounds every layer range before expanding it, cleans up its
temporary folders and reports random-weight models however they were given."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instyle.cli.main import main
from instyle.demo.inputs import NOT_AN_UPLOAD, DemoInputError, UploadArea
from instyle.inference.mixing import parse_latent_mask
from instyle.models import get_config
from instyle.models.init import random_psp

from .helpers import free_port, serve_in_thread

# Gradio's own queue code trips a pandas deprecation warning; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sec") / "tiny"
    random_psp(get_config("tiny"), seed=1, latent_samples=256).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    p = tmp_path_factory.mktemp("photo") / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
    return p


# ----------------------------------------------------------------------------- layer ranges


def test_huge_layer_range_is_refused_before_it_is_expanded():
    # A million-layer range used to be expanded into a list (the 10^9 one was OOM-killed);
    # the bound check must come first, so refusing costs no memory.
    for spec in ("0-1000000", "3-1000000000", "1000000000", "0,2,5-999999999999"):
        tracemalloc.start()
        try:
            with pytest.raises(ValueError, match=r"outside the model's 0-based style layers \[0, 9\]") as e:
                parse_latent_mask(spec, n_styles=10)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 200_000, f"{spec!r}: {peak} bytes allocated before refusing"
        assert spec.split(",")[-1] in str(e.value)  # names the bad part


def test_layer_ranges_without_a_model_are_still_bounded():
    with pytest.raises(ValueError, match="at most"):
        parse_latent_mask("0-1000000000")
    assert parse_latent_mask("0-3") == [0, 1, 2, 3]


@pytest.mark.parametrize("spec", ["1_0", "٣", "+3", "3-+5", "-3"])
def test_layer_indices_are_plain_ascii_digits(spec):
    with pytest.raises(ValueError, match="not an index or a range"):
        parse_latent_mask(spec, n_styles=10)


def test_cli_latent_mask_and_layers_refuse_huge_ranges(tiny_dir, photo, tmp_path, capsys):
    rc = main(["mix", str(photo), "-c", str(tiny_dir), "-o", str(tmp_path / "m"), "--latent-mask", "0-1000000000"])
    err = capsys.readouterr().err
    assert rc == 2 and "0-1000000000" in err and "[0, 9]" in err and "Traceback" not in err
    rc = main(["edit", "combine", str(photo), str(photo), "-c", str(tiny_dir), "-o", str(tmp_path / "e"),
               "--layers", "0-1000000000"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "0-1000000000" in err and "[0, 9]" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- random weights travel with the files


def test_random_weights_flag_travels_with_the_model_files(tiny_dir, tmp_path, tiny_psp):
    from instyle.demo import ModelStore
    from instyle.interop import load_psp

    assert json.loads((tiny_dir / "config.json").read_text())["random_weights"] is True
    assert load_psp(tiny_dir).random_weights is True
    store = ModelStore.from_checkpoints([tiny_dir], device="cpu")
    assert store.any_random and store.describe()[0]["random_weights"] is True
    # Re-saving a loaded random model keeps the flag.
    load_psp(tiny_dir).save_pretrained(tmp_path / "again")
    assert load_psp(tmp_path / "again").random_weights is True
    # A model not made by random init, and a file written before the flag existed: not random.
    tiny_psp.save_pretrained(tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["random_weights"] is False
    old = tmp_path / "old"
    shutil.copytree(tiny_dir, old)
    doc = json.loads((old / "config.json").read_text())
    del doc["random_weights"]
    (old / "config.json").write_text(json.dumps(doc))
    assert load_psp(old).random_weights is False
    assert not ModelStore.from_checkpoints([old, tmp_path / "plain"], device="cpu").any_random


def test_training_from_a_random_checkpoint_does_not_keep_the_flag(tmp_path):
    from instyle.training import build_model
    from instyle.training.toy import save_toy_generator, toy_config, toy_generator, write_toy_dataset

    g = toy_generator(size=32, style_dim=16, seed=0)
    save_toy_generator(g, tmp_path / "gen")
    write_toy_dataset(g, tmp_path / "train", 2, seed=1)
    cfg = dict(encoder_type="BackboneEncoderUsingLastLayerIntoW", learn_in_w=True)
    start = build_model(toy_config(tmp_path / "gen", tmp_path / "train", **cfg))
    start.random_weights = True  # e.g. the quickstart model
    start.save_pretrained(tmp_path / "psp")
    cfg["checkpoint_path"] = str(tmp_path / "psp")
    assert build_model(toy_config(tmp_path / "gen", tmp_path / "train", **cfg)).random_weights is False


def test_page_shows_the_banner_for_a_random_checkpoint(tiny_dir):
    pytest.importorskip("gradio", reason="the web demo needs the demo extra (pip install 'instyle[demo]')")
    from instyle.demo import ModelStore
    from instyle.demo.app import build_demo

    demo = build_demo(ModelStore.from_checkpoints([tiny_dir], device="cpu"))
    banners = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "random-weights-warning"]
    assert len(banners) == 1 and "RANDOM weights" in banners[0].value and "tiny" in banners[0].value


# ----------------------------------------------------------------------------- the running server: only uploads are read


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app of ``instyle serve`` on a loopback port, in a thread of this process, with its
    own Gradio upload folder."""
    pytest.importorskip("gradio", reason="the web demo needs the demo extra (pip install 'instyle[demo]')")

    from instyle.demo import ModelEntry, ModelStore, ServeSettings
    from instyle.demo.app import create_app

    upload_dir = tmp_path_factory.mktemp("gradio-uploads")
    old = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(upload_dir)
    try:
        store = ModelStore([ModelEntry("tiny", random_psp(get_config("tiny"), seed=0, latent_samples=256))])
        settings = ServeSettings(port=free_port(), max_upload_mb=0.05, max_pixels=512 * 512)
        app = create_app(store, settings)
    finally:
        if old is None:
            del os.environ["GRADIO_TEMP_DIR"]
        else:
            os.environ["GRADIO_TEMP_DIR"] = old
    with serve_in_thread(app, settings.port) as url:
        yield url


def _upload(url: str, path: Path) -> str:
    """POST one file to Gradio's upload route; its path on the server."""
    boundary = "instyleboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        url + "gradio_api/upload", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())[0]


def _file(path: str) -> dict:
    return {"path": path, "orig_name": "face.png", "meta": {"_type": "gradio.FileData"}}


def _call(url: str, api: str, data: list, timeout: float = 60) -> tuple[str, object]:
    """One call through Gradio's HTTP API: ``("complete", outputs)`` or ``("error", message)``."""
    req = urllib.request.Request(
        f"{url}gradio_api/call/{api}",
        data=json.dumps({"data": data}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        event_id = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{api}/{event_id}", timeout=timeout) as r:
        event = None
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: ") and event in ("complete", "error"):
                data = json.loads(line[len("data: ") :])
                return event, data["error"] if isinstance(data, dict) and "error" in data else data
    raise AssertionError(f"no result from /{api}")


def _healthy(url: str, timeout: float = 5) -> bool:
    with urllib.request.urlopen(url + "healthz", timeout=timeout) as r:
        return json.loads(r.read())["status"] == "ok"


def test_api_reads_nothing_but_uploads(server, photo, tmp_path):
    url = server
    ok = _call(url, "reconstruct", [None, _file(_upload(url, photo)), False])
    assert ok[0] == "complete", ok  # a real upload works

    # A symlink inside the upload folder pointing out of it (the upload replaced after the fact).
    linked = Path(_upload(url, photo.with_name("face.png")))
    outside = tmp_path / "outside.png"
    shutil.copy(photo, outside)
    linked.unlink()
    linked.symlink_to(outside)
    # A file in the upload folder that did not arrive through this server's upload route
    # (the folder may be shared with other Gradio apps).
    planted = linked.parent.parent / "planted" / "face.png"
    planted.parent.mkdir()
    shutil.copy(photo, planted)
    refused = {
        "server file": _file("/etc/passwd"),
        "image outside the upload folder": _file(str(outside)),
        "missing file": _file(str(tmp_path / "missing.png")),
        "symlink out of the upload folder": _file(str(linked)),
        "relative path": _file("../../etc/passwd"),
        "file planted in the upload folder": _file(str(planted)),
        "URL": _file("https://example.com/face.png"),
        "URL of this server": _file(f"{url}gradio_api/file={outside}"),
        "bare path string": "/etc/passwd",
        "bare URL string": "https://example.com/face.png",
    }
    messages = {}
    for what, payload in refused.items():
        event, msg = _call(url, "reconstruct", [None, payload, False])
        assert event == "error", f"{what}: {msg}"
        messages[what] = msg
    assert len({json.dumps(m) for m in messages.values()}) == 1, messages  # one generic message: no existence/size leak
    msg = next(iter(messages.values()))
    assert "upload" in msg and "passwd" not in msg and str(tmp_path) not in msg
    # Every endpoint taking images is guarded, not just /reconstruct.
    assert _call(url, "mix", [None, _file(str(outside)), 2, "", False, 0.5, 0, 1.0]) == ("error", msg)
    assert _call(url, "interpolate", [None, _file(_upload(url, photo)), _file("/etc/hostname"), 2]) == ("error", msg)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_special_files_never_freeze_the_server(server, photo):
    url = server
    fifo = Path(_upload(url, photo))
    fifo.unlink()
    os.mkfifo(fifo)  # a FIFO where an upload was: opening it for reading would block forever
    for payload in (_file("/dev/zero"), _file("/dev/urandom"), _file(str(fifo)), _file("/proc/self/environ")):
        started = time.monotonic()
        event, msg = _call(url, "reconstruct", [None, payload, False], timeout=30)
        assert event == "error" and "upload" in msg, (payload, msg)
        assert time.monotonic() - started < 20
        assert _healthy(url)


def test_api_mix_refuses_a_huge_layer_range_at_once(server, photo):
    url = server
    started = time.monotonic()
    event, msg = _call(url, "mix", [None, _file(_upload(url, photo)), 2, "0-1000000000", False, 0.5, 0, 1.0])
    assert event == "error" and "0-1000000000" in msg and "[0, 9]" in msg, msg
    assert time.monotonic() - started < 20 and _healthy(url)


# ----------------------------------------------------------------------------- the upload area, without a server


@pytest.fixture
def area(tmp_path, photo):
    root = tmp_path / "uploads"
    (root / "abc").mkdir(parents=True)
    shutil.copy(photo, root / "abc" / "face.png")
    return UploadArea(root, max_bytes=50_000)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_upload_area_accepts_only_regular_files_inside_it(area, photo, tmp_path):
    inside = area.root / "abc" / "face.png"
    assert area.verify(str(inside)) == inside
    (area.root / "abc" / "alias.png").symlink_to(inside)  # a link that stays inside is fine
    assert area.verify(str(area.root / "abc" / "alias.png")) == inside
    (area.root / "abc" / "out.png").symlink_to(photo)
    os.mkfifo(area.root / "abc" / "fifo.png")
    (area.root / "abc" / "big.png").write_bytes(b"\0" * 50_001)
    for bad in [str(photo), str(area.root / "abc" / "out.png"), str(area.root / "abc" / "fifo.png"),
                str(area.root / "abc" / "big.png"), str(area.root / "abc"), str(area.root), str(area.root / "nope.png"),
                f"{area.root}/abc/../../{photo.parent.name}/{photo.name}", f"file://{inside}", "/dev/zero", "", None, 3,
                f"{inside}\0.png"]:  # fmt: skip
        with pytest.raises(DemoInputError) as e:
            area.verify(bad)
        assert str(e.value) == NOT_AN_UPLOAD, bad
    assert UploadArea(area.root, 50_000, known=lambda p: False).check_payload(None) is None
    with pytest.raises(DemoInputError, match="only images uploaded"):
        UploadArea(area.root, 50_000, known=lambda p: False).verify(str(inside))


def test_upload_area_walks_editor_payloads(area):
    good = {"path": str(area.root / "abc" / "face.png"), "meta": {"_type": "gradio.FileData"}}
    area.check_payload(good)
    area.check_payload({"background": good, "layers": [good, None], "composite": None, "id": "x"})
    area.check_payload("8-17", file_slot=False)  # text inputs are not file names
    for bad in ["/etc/passwd", {"background": "/etc/passwd"}, {"layers": ["/etc/passwd"]}, {"url": "http://x/y.png"},
                {"composite": {"path": "/etc/passwd"}}, [good, {"path": "/etc/hosts"}]]:  # fmt: skip
        with pytest.raises(DemoInputError, match="only images uploaded"):
            area.check_payload(bad)
    with pytest.raises(DemoInputError):  # a file payload in any input is checked
        area.check_payload({"path": "/etc/passwd"}, file_slot=False)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_read_upload_is_bounded_and_never_blocks(area, photo, tmp_path):
    from instyle.demo import ServeSettings
    from instyle.demo.inputs import read_upload

    s = ServeSettings(max_upload_mb=0.05)
    assert read_upload({"path": str(area.root / "abc" / "face.png")}, "a photo", s, uploads=area).size == (64, 64)
    assert read_upload(photo.read_bytes(), "a photo", s).size == (64, 64)
    with pytest.raises(DemoInputError, match="only images uploaded"):
        read_upload({"path": str(photo)}, "a photo", s, uploads=area)
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(DemoInputError, match="only images uploaded"):
        read_upload(str(fifo), "a photo", s)  # even a trusted caller's FIFO is refused, not waited on
    with pytest.raises(DemoInputError, match="only images uploaded"):
        read_upload("/dev/zero", "a photo", s)
    assert time.monotonic() - started < 5
    with pytest.raises(DemoInputError, match="uploads are limited to 0.0 MB"):
        read_upload(b"\0" * 60_000, "a photo", ServeSettings(max_upload_mb=0.05))


def test_the_sketch_editor_default_canvas_counts_as_this_servers_file(tiny_psp):
    pytest.importorskip("gradio", reason="the web demo needs the demo extra (pip install 'instyle[demo]')")
    import gradio as gr

    from instyle.demo import ModelEntry, ModelStore
    from instyle.demo.app import build_demo
    from instyle.models import PSPConfig

    cfg = get_config("tiny").to_dict()
    cfg.update(task="sketch2face")
    cfg["encoder"]["input_nc"] = 1
    demo = build_demo(
        ModelStore([ModelEntry("sketch", random_psp(PSPConfig.from_dict(cfg), seed=0, latent_samples=64))])
    )
    editors = [b for b in demo.blocks.values() if isinstance(b, gr.ImageEditor)]
    assert len(editors) == 1
    background = editors[0].value["background"]
    path = background["path"] if isinstance(background, dict) else background.path
    demo.uploads.check_payload({"background": {"path": path}, "layers": [], "composite": None})


def test_every_handler_reads_only_uploads_even_behind_the_gate(photo, tmp_path):
    """The page's gate (``preprocess_data``) refuses foreign files first; each handler checks
    again (``read_upload(..., uploads=...)``), so a handler reached some other way, or a gate
    that misses an input, still reads nothing but uploads."""
    gr = pytest.importorskip("gradio", reason="the web demo needs the demo extra (pip install 'instyle[demo]')")
    from instyle.demo import ModelEntry, ModelStore, ServeSettings
    from instyle.demo.app import build_demo
    from instyle.models import PSPConfig

    np.save(tmp_path / "older.npy", np.random.default_rng(0).standard_normal(64).astype(np.float32))
    cfg = get_config("tiny").to_dict()
    cfg.update(task="sketch2face")
    cfg["encoder"]["input_nc"] = 1
    store = ModelStore([
        ModelEntry("tiny", random_psp(get_config("tiny"), seed=0, latent_samples=64)),
        ModelEntry("sketch", random_psp(PSPConfig.from_dict(cfg), seed=0, latent_samples=64)),
    ])
    demo = build_demo(store, ServeSettings(directions=(str(tmp_path / "older.npy"),)))
    handlers = {fn.api_name: fn.fn for fn in demo.fns.values() if fn.api_name}
    outside = {"path": str(photo), "orig_name": "face.png", "meta": {"_type": "gradio.FileData"}}
    calls = {
        "reconstruct": (None, outside, False),
        "mix": (None, outside, 2, "", False, 0.5, 0, 1.0),
        "interpolate": (None, outside, outside, 2),
        "edit": (None, outside, "none", 1, "", 0.0),
        "sketch2face": ("sketch", {"background": outside, "layers": [], "composite": outside}),
    }
    assert set(calls) <= set(handlers), sorted(handlers)
    for api, args in calls.items():
        with pytest.raises(gr.Error, match="only images uploaded"):
            handlers[api](*args)


# ----------------------------------------------------------------------------- `instyle serve` as a process


def _start_serve(tmp_path, tiny_dir, port):
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    (tmp_path / "tmp").mkdir()
    cmd = [
        sys.executable,
        "-m",
        "instyle.cli.main",
        "serve",
        "-c",
        str(tiny_dir),
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (closed by the caller's finally)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log


def _wait_ready(proc, url: str, log_path: Path) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"`instyle serve` did not become ready; its log:\n{log_path.read_text()[-3000:]}")


@pytest.mark.slow
def test_serve_reports_random_checkpoints_and_removes_its_temp_folder_on_sigterm(tmp_path, tiny_dir, photo):
    # (Ctrl-C takes the same path through uvicorn: SIGINT and SIGTERM are handled alike.)
    pytest.importorskip("gradio", reason="the web demo needs the demo extra (pip install 'instyle[demo]')")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc, log = _start_serve(tmp_path, tiny_dir, port)
    try:
        health = _wait_ready(proc, url, tmp_path / "server.log")
        # A random-weight checkpoint given with --checkpoint: reported and warned about.
        assert [m["random_weights"] for m in health["models"]] == [True]
        with urllib.request.urlopen(url + "config", timeout=10) as r:
            assert "random-weights-warning" in r.read().decode()
        # An output is written into the server's temporary folder ...
        assert _call(url, "reconstruct", [None, _file(_upload(url, photo)), False])[0] == "complete"
        made = list((tmp_path / "tmp").glob("instyle-serve-*"))
        assert len(made) == 1 and any(made[0].rglob("*.npy"))
        # ... and the folder is gone once the server is stopped.
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert list((tmp_path / "tmp").glob("instyle-serve-*")) == [], (tmp_path / "server.log").read_text()[-2000:]


@pytest.mark.slow
def test_serve_removes_its_temp_folder_when_it_cannot_start(tmp_path, tiny_dir):
    pytest.importorskip("gradio", reason="the web demo needs the demo extra (pip install 'instyle[demo]')")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc, log = _start_serve(tmp_path, tiny_dir, busy.getsockname()[1])
        try:
            rc = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    assert rc != 0
    assert list((tmp_path / "tmp").glob("instyle-serve-*")) == [], (tmp_path / "server.log").read_text()[-2000:]
