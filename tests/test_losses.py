"""Unit tests of the loss terms and the objective (random loss networks, no fixtures)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from instyle.losses import (
    FACE_CROP,
    IDLoss,
    LossWeightsError,
    LPIPSLoss,
    MocoLoss,
    Objective,
    ObjectiveConfig,
    face_crop,
    l2_loss,
    w_norm_loss,
)
from instyle.losses.lpips import lpips_backbone_state
from instyle.losses.moco import moco_trunk_state
from instyle.losses.w_norm import WNormLoss
from instyle.utils.config import ConfigError


def images(seed: int, b: int = 2, size: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def random_lpips() -> LPIPSLoss:
    torch.manual_seed(0)
    return LPIPSLoss("alex", random_backbone=True)


@pytest.fixture(scope="module")
def random_id() -> IDLoss:
    torch.manual_seed(0)
    return IDLoss(random_init=True)


# ----------------------------------------------------------------------------- crop / L2


def test_face_crop_coordinates():
    rows = torch.arange(256.0).view(1, 1, 256, 1).expand(1, 1, 256, 256)
    cols = torch.arange(256.0).view(1, 1, 1, 256).expand(1, 1, 256, 256)
    img = torch.cat([rows, cols, rows * 0], dim=1)
    crop = face_crop(img)
    assert FACE_CROP == (35, 223, 32, 220)
    assert crop.shape == (1, 3, 188, 188)
    assert crop[0, 0, 0, 0] == 35 and crop[0, 0, -1, 0] == 222  # rows 35..222
    assert crop[0, 1, 0, 0] == 32 and crop[0, 1, 0, -1] == 219  # cols 32..219
    with pytest.raises(ValueError, match="256x256"):
        face_crop(torch.zeros(1, 3, 64, 64))


def test_l2_full_and_crop_region_weights():
    y = images(1)
    y_hat = y.clone()
    y_hat[:, :, :35] += 1.0  # change only rows above the face window
    assert l2_loss(y_hat, y, crop=True) == 0
    assert l2_loss(y_hat, y) == pytest.approx(35 / 256, rel=1e-6)
    y_hat2 = y.clone()
    y_hat2[:, :, 100, 100] += 2.0  # one pixel inside the window
    expected_full = 6 * 4.0 / y.numel()  # 2 samples x 3 channels, (2.0)**2 each
    expected_crop = 6 * 4.0 / (2 * 3 * 188 * 188)
    assert l2_loss(y_hat2, y).item() == pytest.approx(expected_full, rel=1e-5)
    assert l2_loss(y_hat2, y, crop=True).item() == pytest.approx(expected_crop, rel=1e-5)
    with pytest.raises(ValueError, match="shapes differ"):
        l2_loss(y, y[:, :, :128])


# ----------------------------------------------------------------------------- w-norm


def test_w_norm_with_and_without_latent_avg():
    avg = torch.randn(4, 8)
    dev = torch.zeros(2, 4, 8)
    dev[0, 0, 0] = 3.0
    dev[0, 1, 1] = 4.0  # ||.||_F = 5 for sample 0
    dev[1, 2, 3] = 1.0  # 1 for sample 1
    latent = avg[None] + dev
    assert w_norm_loss(latent, avg).item() == pytest.approx(3.0, rel=1e-5)  # (5 + 1) / 2
    raw = latent.flatten(1).norm(dim=1).mean()
    assert WNormLoss(start_from_latent_avg=False)(latent, avg).item() == pytest.approx(raw.item(), rel=1e-6)
    assert WNormLoss(True)(latent, avg).item() == pytest.approx(3.0, rel=1e-5)
    # a [1, D] average broadcasts; a W code repeated n times counts sqrt(n)-fold
    w = torch.randn(2, 1, 8)
    rep = w.repeat(1, 9, 1)
    a1 = torch.zeros(1, 8)
    assert w_norm_loss(rep, a1).item() == pytest.approx(3 * w.flatten(1).norm(dim=1).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="needs latent_avg"):
        WNormLoss(True)(latent)


# ----------------------------------------------------------------------------- LPIPS


def test_lpips_zero_at_identity_and_symmetric(random_lpips):
    a, b = images(2), images(3)
    with torch.no_grad():
        assert random_lpips(a, a).item() == pytest.approx(0.0, abs=1e-7)
        ab, ba = random_lpips(a, b).item(), random_lpips(b, a).item()
    assert ab > 1e-4
    assert ab == pytest.approx(ba, rel=1e-5)
    per = random_lpips.per_sample(a, b)
    assert per.shape == (2,) and per.mean().item() == pytest.approx(ab, rel=1e-5)


def test_lpips_frozen_and_always_eval(random_lpips):
    assert not any(p.requires_grad for p in random_lpips.parameters())
    random_lpips.train()
    assert not random_lpips.model.training
    a = images(4).requires_grad_(True)
    random_lpips(a, images(5)).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def _alexnet_features_file(tmp_path, seed=1, prefix="features."):
    torch.manual_seed(seed)
    sd = torchvision.models.alexnet(weights=None).state_dict()
    path = tmp_path / "alex.pth"
    torch.save({prefix + k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}, path)
    return path, sd


def test_lpips_loads_backbone_from_file_and_hub_cache(tmp_path, monkeypatch):
    path, sd = _alexnet_features_file(tmp_path)
    m = LPIPSLoss("alex", path)
    assert torch.equal(m.model.net.slice1[0].weight, sd["features.0.weight"])
    assert torch.equal(getattr(m.model.net.slice5, "10").bias, sd["features.10.bias"])
    # torchvision's hub cache file name is found without a path
    hub = tmp_path / "torch_home"
    (hub / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(sd, hub / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")  # the full file incl. classifier
    monkeypatch.setenv("TORCH_HOME", str(hub))
    m2 = LPIPSLoss("alex")
    assert torch.equal(getattr(m2.model.net.slice3, "6").weight, sd["features.6.weight"])


def test_lpips_missing_weights_explain_how_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(LossWeightsError, match="lpips_weights") as e:
        LPIPSLoss("alex")
    assert "alexnet-owt-7be5be79.pth" in str(e.value) and "downloaded" in str(e.value)
    # each command's own flag: evaluate has --lpips-weights, not train's --set
    assert "instyle evaluate --lpips-weights PATH" in str(e.value)
    assert "instyle train --set lpips_weights=PATH" in str(e.value)
    with pytest.raises(LossWeightsError, match="no such"):
        LPIPSLoss("vgg", tmp_path / "nope.pth")


def test_lpips_vgg_slices():
    state = {f"features.{i}.weight": torch.zeros(1) for i in (0, 2, 5, 7, 10, 28)}
    out = lpips_backbone_state(state, "vgg")
    assert set(out) == {"slice1.0.weight", "slice1.2.weight", "slice2.5.weight", "slice2.7.weight",
                        "slice3.10.weight", "slice5.28.weight"}


# ----------------------------------------------------------------------------- identity


def test_identity_of_image_with_itself_is_zero(random_id):
    x = images(6)
    out = random_id(x, x, x)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)
    assert out.improvement == pytest.approx(0.0, abs=1e-6)
    assert [set(r) for r in out.logs] == [{"diff_target", "diff_input", "diff_views"}] * 2
    assert all(r["diff_target"] == pytest.approx(1.0, abs=1e-6) for r in out.logs)


def test_identity_gradient_only_inside_crop_and_networks_frozen(random_id):
    y_hat = images(7).requires_grad_(True)
    out = random_id(y_hat, images(8), images(9))
    assert 0 < out.loss.item() < 2
    out.loss.backward()
    g = y_hat.grad.abs().sum(dim=(0, 1))
    assert g[35:223, 32:220].sum() > 0
    g[35:223, 32:220] = 0
    assert g.sum() == 0
    assert not any(p.requires_grad for p in random_id.parameters())
    random_id.train()
    assert not random_id.facenet.training
    logs = out.logs
    expected = sum(r["diff_target"] - r["diff_views"] for r in logs) / len(logs)
    assert out.improvement == pytest.approx(expected, abs=1e-9)


def test_identity_weights_missing_or_wrong(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path))
    with pytest.raises(LossWeightsError, match="model_ir_se50.pth"):
        IDLoss()
    bad = tmp_path / "bad.pth"
    torch.save({"input_layer.0.weight": torch.zeros(64, 3, 3, 3)}, bad)
    with pytest.raises(LossWeightsError, match="missing"):
        IDLoss(bad)
    with pytest.raises(ValueError, match="RGB"):
        IDLoss(random_init=True)(images(1), images(2), torch.zeros(2, 1, 256, 256))


# ----------------------------------------------------------------------------- MoCo


def test_moco_checkpoint_renaming_and_loading(tmp_path):
    torch.manual_seed(0)
    sd = torchvision.models.resnet50(weights=None).state_dict()
    wrapped = {"state_dict": {f"module.encoder_q.{k}": v for k, v in sd.items() if not k.startswith("fc.")}}
    wrapped["state_dict"]["module.encoder_q.fc.0.weight"] = torch.zeros(2048, 2048)  # MoCo-v2 MLP head
    wrapped["state_dict"]["module.encoder_k.conv1.weight"] = torch.zeros(1)
    assert "conv1.weight" in moco_trunk_state(wrapped["state_dict"])
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save({"epoch": 800, "arch": "resnet50", **wrapped}, path)
    loss = MocoLoss(path)
    assert torch.equal(loss.model[0].weight, sd["conv1.weight"])
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    out = loss(x, x, x)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(LossWeightsError, match="moco_weights"):
        MocoLoss()


# ----------------------------------------------------------------------------- objective


def test_objective_keys_order_and_weighted_sum(random_lpips, random_id):
    cfg = ObjectiveConfig(id_lambda=0.1, l2_lambda=1.0, lpips_lambda=0.8, lpips_lambda_crop=0.6, l2_lambda_crop=0.5,
                          w_norm_lambda=0.01, start_from_latent_avg=True, random_loss_networks=True)
    obj = Objective(cfg, lpips=random_lpips, identity=random_id)
    x, y, y_hat = images(1), images(2), images(3)
    avg = torch.randn(4, 16)
    latent = avg[None] + torch.randn(2, 4, 16)
    with torch.no_grad():
        out = obj(x, y, y_hat, latent, avg)
    assert list(out.terms) == ["loss_id", "id_improve", "loss_l2", "loss_lpips", "loss_lpips_crop", "loss_l2_crop",
                               "loss_w_norm", "loss"]
    t = out.terms
    total = 0.1 * t["loss_id"] + t["loss_l2"] + 0.8 * t["loss_lpips"] + 0.6 * t["loss_lpips_crop"] \
        + 0.5 * t["loss_l2_crop"] + 0.01 * t["loss_w_norm"]
    assert t["loss"] == pytest.approx(total, rel=1e-5)
    assert t["loss_l2_crop"] == pytest.approx(l2_loss(y_hat, y, crop=True).item(), rel=1e-6)
    assert t["loss_w_norm"] == pytest.approx(w_norm_loss(latent, avg).item(), rel=1e-6)
    assert len(out.id_logs) == 2


def test_objective_only_active_terms_and_validation(random_lpips):
    obj = Objective(ObjectiveConfig(l2_lambda=1.0, lpips_lambda=0.0), lpips=random_lpips)
    assert obj.identity is None and obj.moco is None
    out = obj(images(1), images(2), images(3), torch.zeros(2, 4, 8))
    assert list(out.terms) == ["loss_l2", "loss"] and out.id_logs is None
    with pytest.raises(ConfigError, match="pick one"):
        ObjectiveConfig(id_lambda=0.1, moco_lambda=0.5)
    with pytest.raises(ConfigError, match="l2_lambda=-1"):
        ObjectiveConfig(l2_lambda=-1)
    with pytest.raises(ConfigError, match="lpips_net"):
        ObjectiveConfig(lpips_net="squeeze")
    with pytest.raises(ConfigError, match="nothing to optimise"):
        Objective(ObjectiveConfig(l2_lambda=0, lpips_lambda=0))(images(1), images(2), images(3), torch.zeros(2, 4, 8))
