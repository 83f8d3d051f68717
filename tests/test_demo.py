"""The web demo without a browser: settings, upload checks, the model store, the actions behind
the tabs, and the running server through Gradio's client API (loopback only)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from instyle.demo import DemoInputError, ModelEntry, ModelStore, ServeSettings, actions
from instyle.demo.inputs import read_upload, upload_file
from instyle.utils.config import ConfigError

from .helpers import free_port, serve_in_thread

# Gradio's own queue code trips a pandas deprecation warning; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
]

# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"port": 0}, "port=0"),
        ({"port": 70000}, "port=70000"),
        ({"host": ""}, "host=''"),
        ({"max_upload_mb": 0}, "max_upload_mb=0"),
        ({"max_pixels": -5}, "max_pixels=-5"),
        ({"concurrency": 0}, "concurrency=0"),
        ({"max_frames": 1}, "max_frames=1"),
    ],
)
def test_settings_reject_bad_values_by_name(kwargs, names):
    with pytest.raises(ConfigError, match=names.replace("(", r"\(")):
        ServeSettings(**kwargs)


def test_settings_defaults_are_private_and_bounded():
    s = ServeSettings()
    assert s.host == "127.0.0.1" and s.is_loopback
    assert not ServeSettings(host="0.0.0.0").is_loopback
    assert s.max_upload_bytes == 10 * 1024 * 1024


# ----------------------------------------------------------------------------- uploads


@pytest.fixture
def photo_file(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "face.png"
    Image.fromarray(rng.integers(0, 255, (96, 80, 3), dtype=np.uint8)).save(p)
    return p


def test_read_upload_accepts_every_payload_shape(photo_file):
    s = ServeSettings()
    for payload in (
        str(photo_file),
        photo_file,
        {"path": str(photo_file), "orig_name": "mine.png"},
        {"background": None, "layers": [], "composite": {"path": str(photo_file)}},
    ):
        img = read_upload(payload, "a photo", s)
        assert img.size == (80, 96) and img.mode == "RGB"
    assert upload_file({"path": str(photo_file), "orig_name": "mine.png"})[1] == "mine.png"
    assert upload_file(None) is None and upload_file({"path": None}) is None


def test_read_upload_messages(tmp_path, photo_file):
    s = ServeSettings()
    with pytest.raises(DemoInputError, match="Please upload a face photo first"):
        read_upload(None, "a face photo", s)
    text = tmp_path / "notes.txt"
    text.write_text("not an image at all")
    with pytest.raises(DemoInputError, match=r"^notes\.txt: not an image file"):
        read_upload({"path": str(text), "orig_name": "notes.txt"}, "a photo", s)
    with pytest.raises(DemoInputError, match=r"too large \(80x96"):
        read_upload(photo_file, "a photo", ServeSettings(max_pixels=1000))
    with pytest.raises(DemoInputError, match="uploads are limited to 0.0 MB"):
        read_upload(photo_file, "a photo", ServeSettings(max_upload_mb=0.001))
    with pytest.raises(DemoInputError, match="more than the limit"):
        read_upload(Image.new("RGB", (100, 100)), "a photo", ServeSettings(max_pixels=99))
    # No server path leaks into the message.
    with pytest.raises(DemoInputError) as info:
        read_upload({"path": str(text), "orig_name": "notes.txt"}, "a photo", s)
    assert str(tmp_path) not in str(info.value)


# ----------------------------------------------------------------------------- model store


def test_store_names_choice_and_refusal(tiny_psp):
    store = ModelStore([ModelEntry("a", tiny_psp), ModelEntry("b", tiny_psp)])
    assert store.names == ["a", "b"] and store.default == "a"
    assert store.get(None).name == "a" and store.get("b").name == "b"
    assert store.names_for("inversion") == ["a", "b"] and store.names_for("sketch2face") == []
    with pytest.raises(DemoInputError, match="unknown model '/etc/passwd'; this server offers: a, b"):
        store.get("/etc/passwd")
    with pytest.raises(ValueError, match="unique"):
        ModelStore([ModelEntry("a", tiny_psp), ModelEntry("a", tiny_psp)])
    d = store.describe()[0]
    assert d["output_size"] == 64 and d["n_styles"] == tiny_psp.n_styles and d["random_weights"] is False


def test_store_loads_checkpoints_with_unique_names(tiny_psp, tmp_path):
    (tmp_path / "x").mkdir()
    tiny_psp.save_pretrained(tmp_path / "tiny")
    tiny_psp.save_pretrained(tmp_path / "x" / "tiny")
    store = ModelStore.from_checkpoints([tmp_path / "tiny", tmp_path / "x" / "tiny"], device="cpu")
    assert store.names == ["tiny", "tiny (2)"]
    assert not store.any_random


def test_store_names_models_given_as_name_equals_path(tiny_psp, tmp_path):
    """Defect: models were named after their folders only (`latest`, `latest (2)`)."""
    for run in ("a", "b"):
        tiny_psp.save_pretrained(tmp_path / run / "latest")
    odd = tmp_path / "x=y"  # an existing path with '=' stays a path
    tiny_psp.save_pretrained(odd)
    store = ModelStore.from_checkpoints(
        [f"psp={tmp_path / 'a' / 'latest'}", tmp_path / "b" / "latest", str(odd), f"latest={tmp_path / 'a' / 'latest'}"],
        device="cpu",
    )
    assert store.names == ["psp", "latest (2)", "x=y", "latest"]
    assert store.get("psp").source == str(tmp_path / "a" / "latest")
    with pytest.raises(ValueError, match="given more than once: psp"):
        ModelStore.from_checkpoints([f"psp={odd}", f"psp={odd}"], device="cpu")


def test_store_without_checkpoints_is_the_random_quickstart_model():
    store = ModelStore.from_checkpoints([], device="cpu")
    assert store.any_random and store.names == ["quickstart (random weights)"]
    assert store.get(None).model.config.resize_to == 256


# ----------------------------------------------------------------------------- actions


@pytest.fixture
def face(photo_file):
    return Image.open(photo_file).convert("RGB")


def test_reconstruct_matches_the_model(tiny_psp, face):
    from instyle.inference.preprocess import prepare_input

    r = actions.reconstruct(tiny_psp, face)
    assert r.output.size == (64, 64) and r.output.mode == "RGB"
    assert r.input.size == (64, 64)
    assert r.latent.shape == (tiny_psp.n_styles, 64)
    with torch.inference_mode():
        w = tiny_psp.encode(prepare_input(face, tiny_psp.config)[None])
    torch.testing.assert_close(r.latent, w[0])
    torch.testing.assert_close(actions.encode(tiny_psp, face), w[0])


def test_mix_outputs_differ_only_when_layers_come_from_random_styles(tiny_psp, face):
    w = actions.encode(tiny_psp, face)
    outs = actions.mix(tiny_psp, w, 3, layers="0-9", seed=1)
    assert len(outs) == 3 and all(o.size == (64, 64) for o in outs)
    a, b = (np.asarray(o, dtype=np.int16) for o in outs[:2])
    assert np.abs(a - b).max() > 0
    # Blending with alpha 0 keeps the input's code: every variant is the reconstruction.
    same = actions.mix(tiny_psp, w, 2, layers="0-9", alpha=0.0, seed=1)
    ref = np.asarray(actions.decode(tiny_psp, w[None])[0], dtype=np.int16)
    # (a batch of 2 may round a few pixels differently from a batch of 1)
    assert all(np.abs(np.asarray(o, dtype=np.int16) - ref).max() <= 1 for o in same)
    with pytest.raises(DemoInputError, match="outside"):
        actions.mix(tiny_psp, w, 2, layers="3-40")
    with pytest.raises(DemoInputError, match="runs backwards"):
        actions.mix(tiny_psp, w, 2, layers="9-3")


def test_interpolation_endpoints_and_files(tiny_psp, face, tmp_path):
    from instyle.inference.latents import load_latent

    w_a = actions.encode(tiny_psp, face)
    w_b = actions.encode(tiny_psp, face.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    frames = actions.interpolate(tiny_psp, w_a, w_b, 5)
    ends = actions.decode(tiny_psp, torch.stack([w_a, w_b]))
    assert len(frames) == 5
    # The endpoints are the two codes themselves, decoded in a batch of 5 here and of 2 there:
    # batch size may move a value by ~1e-6 and flip a rounded pixel level, never more.
    for frame, end in ((frames[0], ends[0]), (frames[-1], ends[1])):
        diff = np.abs(np.asarray(frame, dtype=np.int16) - np.asarray(end, dtype=np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    # ... while the frames between them differ from both ends by far more.
    mid = np.asarray(frames[2], dtype=np.int16)
    assert np.abs(mid - np.asarray(ends[0], dtype=np.int16)).max() > 1
    gif = actions.write_animation(frames, tmp_path / "a.gif")
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 8  # boomerang: 5 forward + 3 back
    npy = actions.write_latent(w_a, tmp_path / "w.npy")
    loaded, _, _ = load_latent(npy)
    torch.testing.assert_close(loaded[0], w_a)


def test_input_preview_shows_sketches_and_label_maps():
    sketch = torch.zeros(1, 8, 8)
    sketch[:, :, 4:] = 1.0  # [0, 1] sketch: white right half
    arr = np.asarray(actions.input_preview(sketch, "sketch2face"))
    assert arr[:, :4].max() == 0 and arr[:, 4:].min() == 255
    onehot = torch.zeros(19, 8, 8)
    onehot[0], onehot[1, :4] = 1, 1
    onehot[0, :4] = 0
    rgb = np.asarray(actions.input_preview(onehot, "seg2face"))
    assert rgb.shape == (8, 8, 3) and not np.array_equal(rgb[0, 0], rgb[7, 7])


# ----------------------------------------------------------------------------- laziness + CLI


def test_gradio_is_imported_only_by_the_web_app():
    code = (
        "import sys, instyle, instyle.demo, instyle.cli.main; instyle.cli.main.build_parser(); "
        "print(sorted(m for m in ('gradio', 'fastapi', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_help_and_bad_checkpoint(tmp_path, capsys):
    from instyle.cli.main import build_parser, main

    args = build_parser().parse_args(["serve", "-c", "a", "-c", "b"])
    assert args.checkpoint == ["a", "b"] and args.host == "127.0.0.1" and args.port == 7860
    assert main(["serve", "-c", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert main(["serve", "--port", "0"]) == 2
    assert "port=0" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the running server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app of ``instyle serve`` on a loopback port, in a thread of this process."""
    pytest.importorskip("gradio", reason="the web demo needs the demo extra (pip install 'instyle[demo]')")

    from instyle.demo.app import create_app
    from instyle.models import create_psp

    torch.manual_seed(0)
    model = create_psp("tiny")
    model.set_latent_avg(model.decoder.mean_latent(512, seed=0))
    store = ModelStore([ModelEntry("tiny", model.eval())])
    settings = ServeSettings(port=free_port(), max_upload_mb=0.05, max_pixels=512 * 512)
    app = create_app(store, settings)
    with serve_in_thread(app, settings.port) as url:
        yield url, app


def test_healthz_reports_ready_models(server):
    url, _ = server
    with urllib.request.urlopen(url + "healthz", timeout=10) as r:
        data = json.loads(r.read())
    assert data["status"] == "ok"
    assert [m["name"] for m in data["models"]] == ["tiny"] and data["models"][0]["output_size"] == 64


def test_client_api_reconstruct_mix_interpolate_and_errors(server, tmp_path, photo_file):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, _ = server
    client = Client(url, verbose=False)
    image, seen, npy = client.predict(None, handle_file(str(photo_file)), False, api_name="/reconstruct")
    with Image.open(image) as im:
        assert im.format == "PNG" and im.size == (64, 64)
    assert np.load(npy).shape == (10, 64) and npy.endswith("face.npy")

    gallery = client.predict("tiny", handle_file(str(photo_file)), 3, "8-9", True, 0.5, 7, 0.7, api_name="/mix")
    assert len(gallery) == 3 and all(Image.open(g["image"]).size == (64, 64) for g in gallery)

    frames, gif, _ = client.predict(None, handle_file(str(photo_file)), handle_file(str(photo_file)), 4, api_name="/interpolate")
    assert len(frames) == 4
    with Image.open(gif) as im:
        assert im.format == "GIF"

    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(AppError, match=r"notes\.png: not an image file"):
        client.predict(None, handle_file(str(text)), False, api_name="/reconstruct")
    with pytest.raises(AppError, match="unknown model"):
        client.predict("../model.pt", handle_file(str(photo_file)), False, api_name="/reconstruct")
    big = tmp_path / "big.png"
    Image.new("RGB", (600, 600), (1, 2, 3)).save(big)  # small file, too many pixels
    with pytest.raises(AppError, match="too large"):
        client.predict(None, handle_file(str(big)), False, api_name="/reconstruct")
    with pytest.raises(AppError, match="between 1 and 8"):
        client.predict(None, handle_file(str(photo_file)), 50, "", False, 0.5, 0, 1.0, api_name="/mix")


def test_upload_route_enforces_the_size_limit(server, tmp_path):
    url, _ = server
    rng = np.random.default_rng(0)
    noisy = tmp_path / "noise.png"  # incompressible: ~190 KB > the 0.05 MB limit
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(noisy)
    boundary = "instyleboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="noise.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + noisy.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        url + "gradio_api/upload", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 413


def test_model_events_share_one_bounded_queue(server):
    _, app = server
    blocks = app.blocks if hasattr(app, "blocks") else None
    if blocks is None:  # the mounted Gradio app is found among the routes
        blocks = next(r.app.blocks for r in app.routes if hasattr(getattr(r, "app", None), "blocks"))
    named = {fn.api_name: fn for fn in blocks.fns.values() if fn.api_name}
    for name in ("reconstruct", "mix", "interpolate"):
        assert named[name].concurrency_limit == 1 and named[name].concurrency_id == "model"
    assert blocks._queue.max_size == 64  # private in Gradio 6: the demo extra pins gradio<7


def test_edit_endpoint_reports_progress_and_names_its_download(server, photo_file):
    """The Edit handler (with Gradio's progress injected before the slider values) refines, and
    a second click re-uses the cached encoding: the same reconstruction."""
    from gradio_client import Client, handle_file

    url, _ = server
    client = Client(url, verbose=False)
    before, after, npy = client.predict(None, handle_file(str(photo_file)), "pti", 2, "", api_name="/edit")
    again, _, _ = client.predict(None, handle_file(str(photo_file)), "pti", 2, "", api_name="/edit")
    # a PTI code: .npz saying its tuned generator is not included (the CLI refuses it, never misrenders it)
    assert npy.endswith("face_unedited.npz") and np.load(npy)["w_plus"].shape == (10, 64)
    assert np.array_equal(np.asarray(Image.open(before)), np.asarray(Image.open(again)))
