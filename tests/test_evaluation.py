"""Metrics against hand-computed values, FID maths, and `instyle evaluate` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from instyle.cli.main import main
from instyle.errors import InputError
from instyle.evaluation.fid import frechet_distance
from instyle.evaluation.identity import _infer_backbone, _similarity_transform, roc_auc
from instyle.evaluation.metrics import gaussian_window, mse, psnr, ssim
from instyle.evaluation.report import compare, evaluate, load_report
from instyle.models import get_config
from instyle.models.init import random_psp

from .conftest import shared_path


def test_mse_and_psnr_by_hand():
    a = torch.zeros(1, 1, 2, 2)
    b = torch.tensor([[[[1.0, -1.0], [0.0, 0.0]]]])
    assert mse(a, b).tolist() == [0.5]
    assert mse(a[0], b[0]).item() == 0.5  # single image -> 0-d
    assert psnr(a, b, data_range=2.0).item() == pytest.approx(10 * math.log10(4 / 0.5))
    assert psnr(a, a).item() == math.inf
    # [-1, 1] with range 2 equals [0, 1] with range 1
    x, y = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)).unbind(0)
    assert psnr(x * 2 - 1, y * 2 - 1).item() == pytest.approx(psnr(x, y, data_range=1.0).item())


def _ssim_naive(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Loop formula of Wang et al. with an 11x11 Gaussian (sigma 1.5), valid windows, one channel."""
    g = gaussian_window(11, 1.5).numpy()
    w = np.outer(g, g)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_by_hand():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (16, 16))
    b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1)
    ta, tb = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]
    assert ssim(ta, tb).item() == pytest.approx(_ssim_naive(a, b, 2.0), abs=1e-10)
    assert ssim(ta.float(), tb.float()).item() == pytest.approx(_ssim_naive(a, b, 2.0), abs=1e-5)
    assert ssim(ta, ta).item() == 1.0
    # constant images: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1)
    c1 = (0.01 * 2) ** 2
    got = ssim(torch.full((1, 3, 12, 12), 0.2), torch.full((1, 3, 12, 12), -0.4)).item()
    assert got == pytest.approx((2 * 0.2 * -0.4 + c1) / (0.2**2 + 0.4**2 + c1), rel=1e-5)
    noise = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (1, 1, 16, 16)))
    assert abs(ssim(ta, noise).item()) < 0.2  # unrelated images


def test_frechet_distance_and_auc_by_hand():
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    d = frechet_distance(np.array([0.0, 1.0]), np.diag([1.0, 4.0]), np.array([1.0, 1.0]), np.diag([4.0, 4.0]))
    assert d == pytest.approx(1.0 + 1.0)
    assert frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3)) == pytest.approx(0.0, abs=1e-12)
    assert roc_auc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert roc_auc([0.5, 0.5], [1, 0]) == 0.5
    assert roc_auc([0.1, 0.9, 0.4, 0.6], [1, 0, 1, 0]) == 0.0


def test_similarity_transform_and_backbone_inference():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, t = 0.3, 1.7, np.array([5.0, -2.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = _similarity_transform(src, src @ (scale * rot).T + t)
    np.testing.assert_allclose(m, np.hstack([scale * rot, t[:, None]]), atol=1e-9)
    from instyle.models.encoders import Backbone

    arch = _infer_backbone(Backbone(112, 50, "ir_se").state_dict())
    assert arch == {"num_layers": 50, "mode": "ir_se", "input_size": 112, "affine": True}


# --------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random-weight checkpoint and a random AlexNet in torchvision's file format."""
    import torchvision

    root = tmp_path_factory.mktemp("eval")
    random_psp(get_config("tiny"), seed=5, latent_samples=256).save_pretrained(root / "tiny")
    torch.manual_seed(0)
    feats = {k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith("features.")}
    torch.save(feats, root / "alexnet-features.pth")
    return root


@pytest.mark.slow
def test_evaluate_full_report_and_self_comparison(setup, tmp_path, capsys):
    data = shared_path("data", "faces", "celeba_hq")
    out = tmp_path / "report"
    rc = main(["evaluate", "--checkpoint", str(setup / "tiny"), "--data", str(data), "--out", str(out),
               "--batch-size", "4", "--device", "cpu", "--lpips-weights", str(setup / "alexnet-features.pth"),
               "--max-images", "8"])
    assert rc == 0
    report = load_report(out)
    assert report["n_images"] == 8 and report["batch_size"] == 4 and report["device"] == "cpu"
    assert {"report.json", "per_image.csv", "report.md", "best_worst.png"} <= {p.name for p in out.iterdir()}
    for key in ("mse", "lpips", "psnr", "ssim", "runtime_s"):
        assert report["metrics"][key]["n"] == 8, key
        assert math.isfinite(report["metrics"][key]["mean"]), key
    # a random-weight model draws textures: no identity value for a non-face, each one counted
    assert report["metrics"]["identity"]["n"] == 0 and report["identity_excluded"] == {"no face in output": 8}
    assert report["metrics"]["mse"]["mean"] > 0 and report["metrics"]["runtime_s"]["mean"] > 0
    assert "dlib" in report["networks"]["identity"] and "fid" in report["unavailable"]
    md = (out / "report.md").read_text()
    assert "| Method | ↑ Similarity | ↓ LPIPS | ↓ MSE | ↓ Runtime (s) |" in md
    assert "batch size 4" in md and "no face in output for 8 of 8 images" in md
    assert "best_worst.png: target | output per row" in md and "sorted by lpips, lower" in md
    assert len((out / "per_image.csv").read_text().splitlines()) == 9
    print(md)  # noqa: T201 -- shown with -s as the sample report

    # targets as predictions: a perfect reconstruction
    self_report = evaluate(None, data, predictions_dir=data, lpips_weights=setup / "alexnet-features.pth",
                           out_dir=tmp_path / "self", max_images=8, device="cpu")
    m = self_report["metrics"]
    assert m["mse"]["mean"] == 0.0 and m["lpips"]["mean"] == 0.0
    assert m["identity"]["mean"] == pytest.approx(1.0, abs=1e-9)
    assert m["ssim"]["mean"] == 1.0 and m["psnr"]["mean"] == math.inf
    assert json.loads((tmp_path / "self" / "report.json").read_text())["metrics"]["psnr"]["mean"] == "inf"

    result = compare(out / "report.json", tmp_path / "self")
    assert result["better"]["mse"] == "b" and "identity" not in result["better"]  # n/a for the textures
    assert result["delta"]["mse"] == pytest.approx(-report["metrics"]["mse"]["mean"])
    capsys.readouterr()
    assert main(["evaluate", "--compare", str(out / "report.json"), str(tmp_path / "self" / "report.json")]) == 0
    # the delta row names both reports by the labels every compare uses (not "a" / "b")
    delta_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| Δ ("))
    assert delta_row.startswith(f"| Δ ({result['labels'][1]} − {result['labels'][0]}) |"), delta_row


def test_evaluate_reports_bad_files_and_missing_networks(setup, tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (70, 70, 3), dtype=np.uint8)).save(data / f"{i}.png")
    (data / "broken.jpg").write_bytes(b"garbage")
    out = tmp_path / "rep"
    rc = main(["evaluate", "-c", str(setup / "tiny"), "--data", str(data), "--out", str(out), "--device", "cpu",
               "--identity", "none", "--lpips-weights", str(tmp_path / "nope.pth"), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert rc == 1 and "broken.jpg" in captured.err
    report = load_report(out)
    assert report["n_images"] == 3 and len(report["failed"]) == 1
    assert "nope.pth" in report["unavailable"]["lpips"]
    assert "n/a" in (out / "report.md").read_text()
    assert main(["evaluate", "--data", str(data), "--out", str(out)]) == 2


def test_fid_caveat_below_the_comparable_size():
    from instyle.evaluation.fid import FID_MIN_COMPARABLE, fid_caveat

    assert "NOT comparable" in fid_caveat(8) and "8 images" in fid_caveat(8)
    assert fid_caveat(FID_MIN_COMPARABLE - 1) is not None
    assert fid_caveat(FID_MIN_COMPARABLE) is None


@pytest.mark.slow
def test_fid_over_a_few_images_is_reported_with_the_caveat(setup, tmp_path):
    """FID through the real path (a random Inception-v3 in torchvision's file format)."""
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"
    torch.save(torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), weights)
    data = shared_path("data", "faces", "celeba_hq")
    out = tmp_path / "report"
    rc = main(["evaluate", "--checkpoint", str(setup / "tiny"), "--data", str(data), "--out", str(out),
               "--device", "cpu", "--inception-weights", str(weights), "--max-images", "4"])
    assert rc == 0
    report = load_report(out)
    assert math.isfinite(report["fid"]) and "fid" not in report["unavailable"]
    assert "4 images is NOT comparable" in report["caveats"]["fid"]
    assert "4 images is NOT comparable" in (out / "report.md").read_text()


def test_evaluate_super_resolution_uses_and_reports_the_resize_factor(tmp_path):
    """It silently used x32; the factor is chosen with resize_factor and named in the report."""
    from instyle.models.psp import PSPConfig

    cfg = get_config("tiny").to_dict()
    cfg["task"] = "super_resolution"
    model = random_psp(PSPConfig.from_dict(cfg), seed=0, latent_samples=64)
    data = tmp_path / "photos"
    data.mkdir()
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    Image.fromarray(np.stack([board] * 3, -1)).save(data / "a.png")
    kw = dict(device="cpu", identity=None, lpips_weights=None, warmup=0)
    default = evaluate(model, data, **kw)
    assert "x32" in default["input_note"] and "--resize-factor" in default["input_note"]
    chosen = evaluate(model, data, resize_factor=2, **kw)
    assert "x2" in chosen["input_note"]
    assert chosen["per_image"][0]["mse"] != default["per_image"][0]["mse"]
    with pytest.raises(InputError, match="super-resolution models only"):
        evaluate(random_psp(get_config("tiny"), seed=0, latent_samples=64), data, resize_factor=2, **kw)


def test_best_worst_grid_is_captioned_and_the_report_names_its_sort_metric(tmp_path):
    """Defect: best_worst.png had no captions and the report did not say it fell back to MSE."""
    rng = np.random.default_rng(0)
    data, preds = tmp_path / "data", tmp_path / "preds"
    data.mkdir(), preds.mkdir()
    for i, noise in enumerate((5, 60, 20)):  # MSE order: case0 < case2 < case1
        target = rng.integers(60, 190, (64, 64, 3))
        Image.fromarray(target.astype(np.uint8)).save(data / f"case{i}.png")
        pred = np.clip(target + rng.normal(0, noise, target.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pred).save(preds / f"case{i}.png")
    out = tmp_path / "rep"
    report = evaluate(None, data, predictions_dir=preds, out_dir=out, device="cpu", identity=None,
                      lpips_weights=tmp_path / "missing.pth", grid_cases=1, size=64)
    assert report["grid_sorted_by"] == "mse" and report["grid_order"] == ["case0", "case1"]
    assert "sorted by mse (LPIPS not available)" in (out / "report.md").read_text()
    grid = np.asarray(Image.open(out / "best_worst.png").convert("RGB")).astype(int)
    cell, pad = 128, 2  # 64 px cases are shown at 128 px so the caption fits
    assert grid.shape == (2 * cell + 3 * pad, 2 * cell + 3 * pad, 3)
    for r in range(2):
        for c in range(2):
            y, x = pad + r * (cell + pad), pad + c * (cell + pad)
            band = grid[y + cell - 12 : y + cell, x : x + cell]  # the caption band along the bottom
            assert (band.max(-1) == 0).mean() > 0.5, (r, c)  # dark band
            assert (band.min(-1) > 200).sum() > 20, (r, c)  # with white text on it
            assert grid[y : y + cell - 12, x : x + cell].std() > 20  # the image itself above it


def test_evaluate_checkpoint_name_equals_path_names_the_method(setup, tmp_path):
    """Defect: the report named a model after its folder; --checkpoint NAME=PATH names it."""
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / "a.png")
    out = tmp_path / "rep"
    rc = main(["evaluate", "-c", f"my run={setup / 'tiny'}", "--data", str(data), "--out", str(out), "--device", "cpu",
               "--identity", "none", "--lpips-weights", str(setup / "alexnet-features.pth"), "--warmup", "0"])
    assert rc == 0
    report = load_report(out)
    assert report["method"] == "my run" and report["checkpoint"] == str(setup / "tiny")
    assert "# Evaluation: my run" in (out / "report.md").read_text()
