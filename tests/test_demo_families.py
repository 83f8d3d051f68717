"""The demo with StyleFeatureEditor and ReStyle-over-StyleGAN3 models (plain Python part):
SFE edits through its own feature editor with the original's degrees (strips included), its
downloads are its encoding files; StyleGAN3 models load, encode, render, mix, interpolate and
edit with InterFaceGAN ``.npy`` boundaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from instyle.demo import DemoInputError, ModelStore, actions
from instyle.demo.editing import edit_photo, load_edits
from instyle.inference.encoding import load_encoding, load_sfe_encoding
from instyle.inference.io import tensor_to_pil
from instyle.models.family import family_of
from instyle.utils.image import pil_to_tensor
from tests.test_sfe import D as SFE_D
from tests.test_sfe import tiny_model as tiny_sfe
from tests.test_sfe import write_official
from tests.test_stylegan3 import tiny_restyle3

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def sfe():
    return tiny_sfe()


@pytest.fixture(scope="module")
def sg3():
    return tiny_restyle3()


@pytest.fixture
def photo():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8))


def _direction(tmp_path, dim: int, name: str = "older", shape=None):
    d = np.random.default_rng(1).standard_normal(dim).astype(np.float32)
    path = tmp_path / f"{name}.npy"
    np.save(path, d.reshape(shape) if shape else d)
    return path, torch.from_numpy(d)


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# --------------------------------------------------------------------------- StyleFeatureEditor


def test_sfe_edit_uses_its_feature_editor_and_the_originals_degree(sfe, photo, tmp_path):
    path, d = _direction(tmp_path, SFE_D)
    edits = load_edits([str(path)])
    r = edit_photo(sfe, photo, edits, {"older": 2.0})
    x = pil_to_tensor(photo, sfe.output_size)[None]  # the original's transform: the generator's size
    enc = sfe.encode(x)
    ref = sfe.edit(enc, lambda w: w + 1.0 * d)  # InterFaceGAN at degree / 2, on both latents
    torch.testing.assert_close(r.latent, ref.w_edit[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(r.encoding.extra.edited_feat, ref.edited_feat, atol=1e-5, rtol=0)
    want = tensor_to_pil(F.adaptive_avg_pool2d(sfe.decode(ref), sfe.pooled_size)[0])
    assert np.abs(_pixels(r.after) - _pixels(want)).max() <= 1
    # the download is the edited SFE encoding: it re-renders without the photo
    file = actions.write_latent(r.encoding, tmp_path / "face_older+2.npy")
    assert file.suffix == ".npz"
    back = load_sfe_encoding(file)
    torch.testing.assert_close(back.edited_feat, ref.edited_feat, atol=1e-5, rtol=0)


def test_sfe_strip_in_the_demo_is_the_command_line_strip(sfe, photo, tmp_path):
    path, d = _direction(tmp_path, SFE_D)
    edits = load_edits([f"age={path}"])
    r = edit_photo(sfe, photo, edits, {"age": 0.0}, "age=-2..2:3")
    assert len(r.frames) == 3 and r.latent.shape == (3, sfe.n_styles, SFE_D) and r.name == "age-2..+2x3"
    assert r.after.size[0] > r.frames[0].size[0]  # the captioned strip
    enc = sfe.encode(pil_to_tensor(photo, sfe.output_size)[None])
    for k, degree in enumerate((-2.0, 0.0, 2.0)):
        ref = sfe.edit(enc, lambda w, s=degree: w + s / 2 * d)
        torch.testing.assert_close(r.latent[k], ref.w_edit[0], atol=1e-6, rtol=0)
    with pytest.raises(DemoInputError, match="one value each"):
        edit_photo(sfe, photo, edits, {}, "age=-1..1:3; age=0,1")
    with pytest.raises(DemoInputError, match="at most 4"):
        edit_photo(sfe, photo, edits, {}, "age=-1..1:5", max_values=4)


def test_sfe_ganspace_sets_the_coordinate_on_both_latents(sfe, photo, tmp_path):
    from instyle.inference.sfe_editing import edit_fn

    pca = {"mean": torch.randn(1, SFE_D), "comp": F.normalize(torch.randn(6, 1, SFE_D), dim=-1), "std": torch.rand(6) + 0.5}
    torch.save(pca, tmp_path / "pca.pt")
    edits = load_edits([str(tmp_path / "pca.pt")])
    r = edit_photo(sfe, photo, edits, {}, "ganspace:2,1,4=3")
    enc = sfe.encode(pil_to_tensor(photo, sfe.output_size)[None])
    ref = sfe.edit(enc, edit_fn(edits["pca"], 3.0, (2, 1, 4)))
    torch.testing.assert_close(r.encoding.extra.edited_feat, ref.edited_feat, atol=1e-5, rtol=0)


def test_sfe_mix_and_refinement_are_refused_with_a_message(sfe, photo, tmp_path):
    path, _ = _direction(tmp_path, SFE_D)
    w, extra = actions.encode_image(sfe, photo)
    with pytest.raises(DemoInputError, match="StyleFeatureEditor.*Edit tab"):
        actions.mix(sfe, w, 2, offsets=extra)
    with pytest.raises(DemoInputError, match="Refine first"):
        edit_photo(sfe, photo, load_edits([str(path)]), {"older": 1.0}, refine="pti", steps=1)


def test_sfe_reconstruct_interpolate_and_download(sfe, photo, tmp_path):
    r = actions.reconstruct(sfe, photo)
    enc = sfe.encode(pil_to_tensor(photo, sfe.output_size)[None])
    torch.testing.assert_close(r.latent, enc.w_recon[0])
    file = actions.write_latent(r.encoding, tmp_path / "face.npy")
    assert file.suffix == ".npz" and torch.equal(load_sfe_encoding(file).fused_feat, r.encoding.extra.fused_feat)
    other = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    (w_a, a), (w_b, b) = actions.encode_image(sfe, photo), actions.encode_image(sfe, other)
    frames = actions.interpolate(sfe, w_a, w_b, 3, (a, b))
    assert np.abs(_pixels(frames[0]) - _pixels(r.output)).max() <= 1
    mid = a.blend([a, b], torch.tensor([[0.5, 0.5]]))
    want = tensor_to_pil(F.adaptive_avg_pool2d(sfe.decode(mid), sfe.pooled_size)[0])
    assert np.abs(_pixels(frames[1]) - _pixels(want)).max() <= 1  # the features are blended, not edited


def test_store_gives_official_sfe_files_their_companions(sfe, tmp_path):
    files = write_official(sfe, tmp_path)
    store = ModelStore.from_checkpoints([files[0]], device="cpu", e4e=files[1], generator=files[2])
    (entry,) = store.describe()
    assert entry["family"] == "sfe" and entry["n_styles"] == sfe.n_styles
    with pytest.raises(ValueError, match="--e4e .*none of the checkpoints"):
        sfe.save_pretrained(tmp_path / "own")
        ModelStore.from_checkpoints([tmp_path / "own"], device="cpu", e4e=files[1])


# --------------------------------------------------------------------------- StyleGAN3


def test_stylegan3_model_in_the_demo(sg3, photo, tmp_path):
    sg3.save_pretrained(tmp_path / "sg3")
    store = ModelStore.from_checkpoints([tmp_path / "sg3"], device="cpu")
    model = store.get(None).model
    assert store.describe()[0]["family"] == "restyle3" and store.get(None).iterations == 3
    r = actions.reconstruct(model, photo)
    x = pil_to_tensor(photo, model.input_size)[None]
    with torch.no_grad():
        w = model.encode(x)
    torch.testing.assert_close(r.latent, w[0], atol=1e-5, rtol=0)
    assert r.output.size == (model.pooled_size,) * 2
    variants = actions.mix(model, r.latent, 2, layers="3-5", seed=1)
    assert len(variants) == 2 and np.abs(_pixels(variants[0]) - _pixels(variants[1])).max() > 0
    frames = actions.interpolate(model, r.latent, r.latent.flip(0), 3)
    assert len(frames) == 3 and np.abs(_pixels(frames[0]) - _pixels(r.output)).max() <= 1
    # an official StyleGAN3 InterFaceGAN boundary: .npy [1, 512] (here [1, w_dim]), w + s * d on every style
    path, d = _direction(tmp_path, sg3.latent_avg.shape[0], "age", shape=(1, -1))
    edits = load_edits([str(path)])
    e = edit_photo(model, photo, edits, {"age": 2.0}, "age=-1..1:3")
    assert e.latent.shape == (3, model.n_styles, d.shape[0])
    for k, s in enumerate((-1.0, 0.0, 1.0)):
        torch.testing.assert_close(e.latent[k], w[0] + (2.0 + s) * d, atol=1e-5, rtol=0)
    file = actions.write_latent(e.encoding, tmp_path / "edited.npz")
    assert file.suffix == ".npy"  # W+ alone: the plain latent file every command reads
    torch.testing.assert_close(load_encoding(file, model).latents, e.latent, atol=0, rtol=0)


def test_stylegan3_model_refines_with_pti_before_editing_in_the_demo(sg3, photo, tmp_path, monkeypatch):
    """'Refine first: pti' on a StyleGAN3 model renders through the tuned copy of its own
    generator (the demo once called it as a StyleGAN2 generator) and starts from the family's
    published PTI settings under the demo's step count and MSE-only fit."""
    import instyle.inference.refine as refine_mod

    seen = []
    real = refine_mod.refine

    def spy(model, x, w, method, config, *a, **k):
        seen.append(config)
        return real(model, x, w, method, config, *a, **k)

    monkeypatch.setattr(refine_mod, "refine", spy)
    path, _ = _direction(tmp_path, sg3.latent_avg.shape[0], "age", shape=(1, -1))
    edits = load_edits([str(path)])
    plain = edit_photo(sg3, photo, edits, {"age": 1.0})
    tuned = edit_photo(sg3, photo, edits, {"age": 1.0}, refine="pti", steps=2)
    assert len(seen) == 1 and seen[0].steps == 2 and seen[0].lpips_weight == 0.0
    assert seen[0].lr == family_of(sg3).refine_defaults["pti"]["lr"]
    assert np.abs(_pixels(tuned.after) - _pixels(plain.after)).max() > 0


def test_latent_download_suffix_comes_from_the_encoding(tiny_psp, photo, tmp_path):
    r = actions.reconstruct(tiny_psp, photo)
    assert r.encoding.file_suffix() == ".npy" and r.encoding.file_suffix({"method": "pti"}) == ".npz"
    assert actions.write_latent(r.encoding, tmp_path / "a.npz").suffix == ".npy"
    assert actions.write_latent(r.encoding, tmp_path / "b.npy", meta={"method": "pti"}).suffix == ".npz"


def test_page_builds_with_sfe_first_and_a_stylegan3_model(sfe, sg3, tmp_path):
    """The Edit tab times a generator pass at start-up: that pass must work for every family
    (it called ``model.decode(w, resize=True)``, which an SFE model does not take)."""
    pytest.importorskip("gradio", reason="the web demo needs the demo extra (pip install 'instyle[demo]')")
    from instyle.demo import ModelEntry, ServeSettings
    from instyle.demo.app import build_demo

    path, _ = _direction(tmp_path, SFE_D)
    store = ModelStore([ModelEntry("sfe", sfe), ModelEntry("sg3", sg3)])
    demo = build_demo(store, ServeSettings(directions=(str(path),)))
    texts = " ".join(str(c.get("props", {}).get("value")) for c in demo.config["components"])
    assert "| sfe | sfe | 1 |" in texts and "| sg3 | restyle3 | 3 |" in texts


def test_edit_encoding_dispatch_and_its_refusals(tiny_psp, photo, tmp_path):
    import importlib

    from instyle.inference.editing import EditSpec, load_edit
    from instyle.inference.encoding import edit_encoding, encode
    from instyle.models.family import get_family, list_families

    for name in list_families():  # a family that edits its own way names a module that does
        module = get_family(name).editing
        assert not module or callable(importlib.import_module(module).edit_encoding)
    path, d = _direction(tmp_path, 64)
    edit = load_edit(path)
    with torch.no_grad():
        enc = encode(tiny_psp, pil_to_tensor(photo, 64)[None])
        two = edit_encoding(tiny_psp, enc, [[(edit, EditSpec("older", None, (1.0,)))], []])
    torch.testing.assert_close(two.latents[0], enc.latents[0] + d, atol=1e-6, rtol=0)
    assert torch.equal(two.latents[1], enc.latents[0])  # an empty chain: the inversion
    with pytest.raises(ValueError, match="mask"):
        edit_encoding(tiny_psp, enc, [[(edit, EditSpec("older", None, (1.0,)))]], mask=torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match="one strength"):
        edit_encoding(tiny_psp, enc, [[(edit, EditSpec("older", None, (1.0, 2.0)))]])
    wrong = load_edit(_direction(tmp_path, 32, "short")[0])
    with pytest.raises(ValueError):
        edit_encoding(tiny_psp, enc, [[(wrong, EditSpec("short", None, (1.0,)))]])
