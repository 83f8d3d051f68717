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

pytestmark = pytest.mark.usefixtures("single_thread")


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
    for bad in ("ganspace:9,0,4=1", "older=1,2", "nope=1"):
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
