"""End to end: ``instyle serve`` started as a user would, driven in headless Chromium.

Uses the system's Chromium (Debian's ``chromium``; ``INSTYLE_CHROMIUM`` overrides the path)
through Playwright -- no browser is ever downloaded. Screenshots go to the test's temporary
folder, and are also copied to ``INSTYLE_DEMO_SCREENSHOTS`` when that variable names a folder.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .helpers import free_port

pytestmark = pytest.mark.slow


def _chromium() -> str:
    path = os.environ.get("INSTYLE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("needs Chromium (Debian: apt-get install chromium; or set INSTYLE_CHROMIUM)")
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``python -m instyle.cli.main serve`` with a tiny generated checkpoint, on a free loopback port."""
    pytest.importorskip("gradio", reason="the web demo needs the demo extra (pip install 'instyle[demo]')")
    from instyle.models import PSPConfig, get_config
    from instyle.models.init import random_psp

    root = tmp_path_factory.mktemp("serve")
    random_psp(get_config("tiny"), seed=0, latent_samples=512).save_pretrained(root / "tiny")
    seg = get_config("tiny").to_dict()
    seg.update(task="seg2face", label_nc=19)
    seg["encoder"]["input_nc"] = 19
    random_psp(PSPConfig.from_dict(seg), seed=1, latent_samples=512).save_pretrained(root / "tiny-seg")
    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(root / "gradio")}
    log = open(root / "server.log", "w")  # noqa: SIM115 (closed at teardown)
    cmd = [sys.executable, "-m", "instyle.cli.main", "serve", "-c", str(root / "tiny"), "-c", str(root / "tiny-seg"), "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    health = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2) as r:
                health = json.loads(r.read())
                break
        except OSError:
            time.sleep(0.5)
    if health is None:
        proc.kill()
        log.close()
        pytest.fail(f"`instyle serve` did not become ready; its log:\n{(root / 'server.log').read_text()[-3000:]}")
    yield url, health
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the Playwright package (pip install playwright)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _save(page, name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    extra = os.environ.get("INSTYLE_DEMO_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / name)
    return path


def _fetch_image(page, selector: str) -> Image.Image:
    src = page.locator(selector).get_attribute("src")
    body = page.request.get(src).body()
    img = Image.open(io.BytesIO(body))
    img.load()
    return img


def test_browser_reconstruct_mix_interpolate_and_bad_upload(served, browser, faces_dir, tmp_path):
    url, health = served
    photos = sorted((faces_dir / "ffhq_aligned").glob("*.png"))
    if len(photos) < 2:
        pytest.skip(f"needs two photos in {faces_dir / 'ffhq_aligned'}")
    out_size = health["models"][0]["output_size"]
    requests: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.on("request", lambda r: requests.append(r.url))
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(url)
        page.get_by_role("button", name="Reconstruct").wait_for()
        assert "tiny" in page.inner_text("body")
        # The checkpoints were made by random init: their files say so, and the page warns.
        assert page.locator("#random-weights-warning").count() == 1

        # A real photo -> a reconstruction of the model's output size.
        page.locator("#rec-input input[type=file]").set_input_files(str(photos[0]))
        page.locator("#rec-input img").wait_for()
        page.click("#rec-run")
        page.locator("#rec-output img").wait_for()
        out = _fetch_image(page, "#rec-output img")
        assert out.format == "PNG" and out.size == (out_size, out_size) and out.mode == "RGB"
        assert max(hi - lo for lo, hi in out.getextrema()) > 0  # not a blank image
        link = page.locator(f'#rec-latent a[download="{photos[0].stem}.npy"]')
        link.wait_for()
        latent = np.load(io.BytesIO(page.request.get(link.get_attribute("href")).body()))
        assert latent.shape == (health["models"][0]["n_styles"], 64) and latent.dtype == np.float32
        _save(page, "demo_reconstruct.png", tmp_path)

        # A file that is not an image -> a message on the page, no stack trace.
        page.reload()
        bad = tmp_path / "notes.png"
        bad.write_text("these are notes, not a picture")
        page.locator("#rec-input input[type=file]").set_input_files(str(bad))
        page.click("#rec-run")
        message = page.get_by_text("notes.png: not an image file")
        message.first.wait_for()
        text = page.inner_text("body")
        assert "Traceback" not in text and "UnidentifiedImageError" not in text
        _save(page, "demo_bad_upload.png", tmp_path)
        page.reload()  # clears the message toast

        # Style mixing: the requested number of variants.
        page.get_by_role("tab", name="Style mixing").click()
        page.locator("#mix-input input[type=file]").set_input_files(str(photos[0]))
        page.locator("#mix-input img").wait_for()
        page.click("#mix-run")
        page.locator("#mix-output img").nth(3).wait_for()
        assert page.locator("#mix-output .thumbnail-item img, #mix-output .grid-wrap img").count() in (0, 4)
        _save(page, "demo_mixing.png", tmp_path)

        # Interpolation between two uploads: frames and an animated GIF.
        page.get_by_role("tab", name="Interpolation").click()
        page.locator("#interp-a input[type=file]").set_input_files(str(photos[0]))
        page.locator("#interp-b input[type=file]").set_input_files(str(photos[1]))
        page.locator("#interp-a img").wait_for()
        page.locator("#interp-b img").wait_for()
        page.click("#interp-run")
        page.locator("#interp-gif img").wait_for()
        gif = _fetch_image(page, "#interp-gif img")
        assert gif.format == "GIF" and gif.n_frames > 2 and gif.size == (out_size, out_size)
        _save(page, "demo_interpolation.png", tmp_path)

        # Edit with PTI first: the steps' progress, then the outputs; the download is named after the edit.
        page.get_by_role("tab", name="Edit").click()
        page.locator("#edit-input input[type=file]").set_input_files(str(photos[0]))
        page.locator("#edit-input img").wait_for()
        page.get_by_role("radio", name="pti", exact=True).check()
        page.click("#edit-run")
        page.locator("#edit-output img").wait_for()
        page.locator(f'#edit-latent a[download="{photos[0].stem}_unedited.npz"]').wait_for()  # PTI: says so
        _save(page, "demo_edit.png", tmp_path)

        # The API tab's example calls this very server.
        page.get_by_role("tab", name="API").click()
        # the tab renders after the click (on a loaded machine not yet when the click returns)
        page.wait_for_function("s => document.body.innerText.includes(s)", arg=f'Client("{url}")', timeout=30_000)
        assert f'Client("{url}")' in page.inner_text("body")
        _save(page, "demo_api.png", tmp_path)
    finally:
        context.close()

    # Every request the page made went to the demo server itself.
    outside = sorted({u for u in requests if not u.startswith(url) and not u.startswith(("data:", "blob:"))})
    assert requests and not outside, f"requests to other hosts: {outside}"


def test_browser_label_map_tab(served, browser, tmp_path):
    """The task tab of a label-map model: a palette PNG in, its colour preview and an output out."""
    from instyle.tasks.transforms import CELEBAMASK_PALETTE, labels_to_palette_image, palette_to_labels

    url, health = served
    seg = next(m for m in health["models"] if m["task"] == "seg2face")
    rng = np.random.default_rng(0)
    labels = np.kron(rng.integers(0, 19, (8, 8)), np.ones((8, 8), dtype=np.int64))
    path = tmp_path / "labels.png"
    labels_to_palette_image(labels).save(path)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)
    try:
        page.goto(url)
        page.get_by_role("tab", name="Label map → face").click()
        page.locator("#task-seg2face-input input[type=file]").set_input_files(str(path))
        page.locator("#task-seg2face-seen img").wait_for()  # the colour preview of the classes
        seen = _fetch_image(page, "#task-seg2face-seen img").convert("RGB")
        assert np.array_equal(palette_to_labels(np.asarray(seen), CELEBAMASK_PALETTE), labels)  # classes intact
        page.click("#task-seg2face-run")
        page.locator("#task-seg2face-output img").wait_for()
        out = _fetch_image(page, "#task-seg2face-output img")
        assert out.size == (seg["output_size"], seg["output_size"]) and out.mode == "RGB"
        assert max(hi - lo for lo, hi in out.getextrema()) > 0
        link = page.locator(f'#task-seg2face-latent a[download="{path.stem}.npy"]')
        link.wait_for()
        latent = np.load(io.BytesIO(page.request.get(link.get_attribute("href")).body()))
        assert latent.shape == (seg["n_styles"], 64)
        assert "Traceback" not in page.inner_text("body")
        _save(page, "demo_label_map.png", tmp_path)
    finally:
        page.close()
