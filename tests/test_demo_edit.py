"""The demo's Edit tab: slider edits, typed named edits and refinement (plain Python part),
and the tab in the page."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from instyle.demo.editing import edit_photo, load_edits, slider_names
from instyle.demo.inputs import DemoInputError
from instyle.inference.io import pil_to_tensor


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "older.npy", rng.standard_normal(64).astype(np.float32))
    torch.save({"mean": torch.randn(1, 64), "comp": torch.randn(5, 1, 64), "std": torch.rand(5) + 0.5}, tmp_path / "pca.pt")
    photo = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return tmp_path, photo


def test_sliders_and_typed_edits_give_the_library_codes(tiny_psp, files):
    from instyle.inference.editing import edit_codes, parse_edit

    tmp, photo = files
    edits = load_edits([str(tmp / "older.npy"), f"g={tmp / 'pca.pt'}"])
    assert slider_names(edits) == ["older"]
    r = edit_photo(tiny_psp, photo, edits, {"older": 2.0}, "ganspace:3,0,4=1.5")
    with torch.no_grad():
        w = tiny_psp.encode(pil_to_tensor(photo, 64)[None])[0]
    expected = edit_codes(w + 2 * edits["older"].vector, edits["g"], parse_edit("g:3,0,4=1.5"))[0]
    torch.testing.assert_close(r.latent, expected, atol=1e-5, rtol=1e-5)
    same = edit_photo(tiny_psp, photo, edits, {"older": 0.0})
    assert np.array_equal(np.asarray(same.before), np.asarray(same.after))
    for bad in ("ganspace:9,0,4=1", "older=1,2; older=3,4", "nope=1"):  # (one strip is allowed, two are not)
        with pytest.raises(DemoInputError):
            edit_photo(tiny_psp, photo, edits, {}, bad)


def test_refine_before_editing(tiny_psp, files):
    tmp, photo = files
    edits = load_edits([str(tmp / "older.npy")])
    plain = edit_photo(tiny_psp, photo, edits, {"older": 1.0})
    tuned = edit_photo(tiny_psp, photo, edits, {"older": 1.0}, refine="pti", steps=2)
    assert not np.array_equal(np.asarray(plain.before), np.asarray(tuned.before))
    torch.testing.assert_close(tuned.latent, plain.latent)  # pti keeps the pivot; the generator changed
    with pytest.raises(DemoInputError, match="ReStyle"):
        edit_photo(tiny_psp, photo, edits, {}, refine="restyle", steps=1)


def test_edit_tab_is_on_the_page(files):
    pytest.importorskip("gradio", reason="the web demo needs the demo extra (pip install 'instyle[demo]')")
    from instyle.demo import ModelStore, ServeSettings
    from instyle.demo.app import build_demo

    tmp, _ = files
    store = ModelStore.quickstart(device="cpu", config="tiny")
    demo = build_demo(store, ServeSettings(directions=(str(tmp / "older.npy"),)))
    names = {d.get("api_name") for d in demo.config["dependencies"]}
    assert "edit" in names
    labels = {c.get("props", {}).get("label") for c in demo.config["components"]}
    assert "older" in labels and "Refine first" in labels


def test_edit_reuses_the_cached_encoding_of_the_same_upload(tiny_psp, files, monkeypatch):
    """A second Edit click on the same photo (another slider value) neither encodes nor refines
    again; the edited latent is named after its edit."""
    from instyle.demo.editing import EncodingCache

    tmp, photo = files
    edits = load_edits([str(tmp / "older.npy")])
    calls = {"encode": 0, "steps": 0}
    encode = tiny_psp.encode
    monkeypatch.setattr(tiny_psp, "encode", lambda *a, **k: calls.__setitem__("encode", calls["encode"] + 1) or encode(*a, **k))
    cache = EncodingCache()
    on_step = lambda k, loss: calls.__setitem__("steps", calls["steps"] + 1)  # noqa: E731
    first = edit_photo(tiny_psp, photo, edits, {"older": 1.0}, refine="pti", steps=2, cache=cache, on_step=on_step)
    second = edit_photo(tiny_psp, photo, edits, {"older": -2.0}, refine="pti", steps=2, cache=cache, on_step=on_step)
    assert calls == {"encode": 1, "steps": 2} and not first.cached and second.cached
    assert first.refine_seconds > 0 and second.refine_seconds == 0
    assert np.array_equal(np.asarray(first.before), np.asarray(second.before))  # the same tuned reconstruction
    assert first.name == "older+1" and second.name == "older-2"
    other = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    edit_photo(tiny_psp, other, edits, {"older": 1.0}, refine="pti", steps=2, cache=cache)
    assert calls["encode"] == 2  # another photo is encoded


def test_demo_page_names_family_iterations_real_port_and_cpu_refine_defaults(files):
    pytest.importorskip("gradio", reason="the web demo needs the demo extra (pip install 'instyle[demo]')")
    from instyle.demo import ModelStore, ServeSettings
    from instyle.demo.app import build_demo

    tmp, _ = files
    store = ModelStore.quickstart(device="cpu", config="tiny")
    demo = build_demo(store, ServeSettings(port=8123, directions=(str(tmp / "older.npy"),)))
    texts = " ".join(str(c.get("props", {}).get("value")) for c in demo.config["components"])
    assert "| model | family | iterations |" in texts and "| psp | 1 |" in texts
    assert 'Client("http://127.0.0.1:8123/")' in texts and "7860" not in texts
    steps = next(c["props"] for c in demo.config["components"] if c.get("props", {}).get("elem_id") == "edit-steps")
    assert steps["value"] == 5 and "s per step on this server (cpu)" in steps["info"]
