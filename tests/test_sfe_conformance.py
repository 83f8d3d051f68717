"""Conformance with the official StyleFeatureEditor inference (``../shared/conformance/sfe``).

The three checkpoints of config S1 (SFE, e4e, StyleGAN2 generator) are regenerated once with
the fixtures' own writer, checked against the stored fingerprints and loaded with
``instyle.load(path, e4e=..., generator=...)``. The inversion and every edit the fixture
lists (names and degrees read from its ``meta_json``; directions from ``shared/data/edits``)
must reproduce every checked array within max abs diff 1e-4 (CPU float32). Images are
processed one at a time (the fixture's README documents the batch-1 error as ~7x below the
bound) to keep memory low.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import instyle
from instyle.inference.sfe_editing import named_edit_fn
from tests.helpers import run_checkpoint_writer

pytestmark = [pytest.mark.conformance, pytest.mark.slow]

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def fixture_dir(shared_dir) -> Path:
    d = shared_dir / "conformance" / "sfe"
    if not (d / "make_checkpoint.py").is_file() or not (d / "S1.npz").is_file():
        pytest.skip(f"needs {d}/make_checkpoint.py and S1.npz (the shared StyleFeatureEditor fixtures)")
    return d


def _fingerprint(path: Path, part: str) -> np.ndarray:
    """float64 sums of |t| over the state dict in file order, then over ``latent_avg``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    sums = [t.double().abs().sum().item() for t in ckpt[part].values()]
    sums.append(ckpt["latent_avg"].double().abs().sum().item())
    del ckpt
    return np.array(sums)


def _feature_arrays(name: str, feat: torch.Tensor) -> dict[str, np.ndarray]:
    """The fixture's two views of a ``[..., C, R, R]`` feature: channels 0::32, and per channel
    ``[mean, rms]`` over H, W in float64."""
    d = feat.double()
    stats = torch.stack([d.mean((-2, -1)), d.square().mean((-2, -1)).sqrt()], -1)
    return {f"{name}__c32": feat[..., ::32, :, :].numpy(), f"{name}__chstats": stats.float().numpy()}


def _image_arrays(name: str, img: torch.Tensor, crops: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    lead = img.shape[:-3]
    flat = img.reshape(-1, *img.shape[-3:])
    area = F.interpolate(flat.double(), size=(256, 256), mode="area").float().reshape(*lead, 3, 256, 256)
    out = {f"{name}__area256": area.numpy()}
    for r, c in crops:
        out[f"{name}__crop_r{r}_c{c}"] = img[..., r:r + 64, c:c + 64].numpy()
    return out


def _crops(expected: dict) -> list[tuple[int, int]]:
    found = []
    for k in expected:
        if k.startswith("inversion_image__crop_r"):
            r, c = k.removeprefix("inversion_image__crop_r").split("_c")
            found.append((int(r), int(c)))
    return found


@pytest.fixture(scope="module")
def outputs(fixture_dir, shared_dir, tmp_path_factory):
    """``(expected, ours, meta, model)``: every checked array, computed once."""
    with np.load(fixture_dir / "S1.npz") as data:
        expected = {k: data[k] for k in data.files}
    meta = json.loads(str(expected["meta_json"]))
    out = tmp_path_factory.mktemp("sfe_checkpoints")
    keys = fixture_dir / "keys"
    script = fixture_dir / "make_checkpoint.py"
    sfe = run_checkpoint_writer(script, keys / "S1.txt", 51, out / "S1.pt", "--project", "sfe")
    e4e = run_checkpoint_writer(script, keys / "S1_e4e.txt", 52, out / "S1_e4e.pt", "--project", "e4e")
    gen = run_checkpoint_writer(script, keys / "S1_g.txt", 53, out / "S1_g.pt", "--format", "rosinality")
    for path, part, key in ((sfe, "state_dict", "sfe"), (e4e, "state_dict", "e4e"), (gen, "g_ema", "g")):
        np.testing.assert_allclose(_fingerprint(path, part), expected[f"{key}_ckpt_fingerprint"], rtol=1e-9, atol=0)
    model = instyle.load(sfe, device="cpu", e4e=e4e, generator=gen)
    for p in (sfe, e4e, gen):
        p.unlink()  # loaded: free the disk
    gc.collect()

    crops = _crops(expected)
    x_all = (torch.from_numpy(expected["input_uint8"]).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    per_image: list[dict[str, np.ndarray]] = []
    with torch.no_grad():
        for i in range(x_all.shape[0]):
            x = x_all[i:i + 1]
            o: dict[str, np.ndarray] = {}
            x256 = model.resize_input(x)
            o["input_256"] = x256.numpy()
            w_raw, predicted = model.inverter.fs_backbone(x256)
            o["w_recon_raw"] = w_raw.numpy()
            o.update(_feature_arrays("predicted_feat", predicted))
            o.update(_feature_arrays("w_feat", model.generator_feature(w_raw + model.latent_avg)))
            o["w_e4e_raw"] = model.e4e_encoder(x256).numpy()
            enc = model.encode(x)  # the public API gives the rest
            o["w_recon"], o["w_e4e"] = enc.w_recon.numpy(), enc.w_e4e.numpy()
            o.update(_feature_arrays("fused_feat", enc.fused_feat))
            o.update(_feature_arrays("edited_feat", model.edited_feature(enc.fused_feat)))
            o.update(_image_arrays("inversion_image", model.decode(enc), crops))
            for e in meta["edits"]:
                tag = f"edit_{e['tag']}"
                fn = named_edit_fn(e["editing_name"], float(e["degree"]), shared_dir / "data" / "edits" / "ffhq")
                edited = model.edit(enc, fn)
                o[f"{tag}_latents"] = edited.w_edit[:, None].numpy()
                o[f"{tag}_e4e_latents"] = fn(enc.w_e4e)[:, None].numpy()
                delta = model.generator_feature(enc.w_e4e) - model.generator_feature(fn(enc.w_e4e))
                o.update(_feature_arrays(f"{tag}_delta", delta[:, None]))
                o.update(_feature_arrays(f"{tag}_edited_feat", edited.edited_feat[:, None]))
                o.update(_image_arrays(f"{tag}_image", model.decode(edited)[:, None], crops))
            per_image.append(o)
            gc.collect()
    ours = {k: np.concatenate([o[k] for o in per_image]) for k in per_image[0]}
    return expected, ours, meta, model


def test_every_checked_array_is_compared(outputs):
    expected, ours, meta, _ = outputs
    checked = sorted(k for k, v in meta["checked"].items() if v)
    assert len(checked) == 37
    assert sorted(ours) == checked


def test_checked_arrays_match(outputs):
    expected, ours, meta, _ = outputs
    failures, diffs = [], {}
    for key in sorted(k for k, v in meta["checked"].items() if v):
        exp, got = expected[key], ours[key]
        assert got.shape == exp.shape, f"{key}: shape {got.shape} vs fixture {exp.shape}"
        diffs[key] = diff = float(np.abs(got.astype(np.float64) - exp.astype(np.float64)).max())
        if not diff <= TOLERANCE:
            failures.append(f"{key}: max abs diff {diff:.3g}")
    assert not failures, "; ".join(failures)
    worst = max(diffs, key=diffs.get)
    print(f"SFE conformance: {len(diffs)} arrays, worst {worst} {diffs[worst]:.3g}")

