"""Training HyperStyle hypernetworks with the pSp trainer (official ``coach_hyperstyle.py``):
config checks, the frozen W-encoder and generator, the per-batch iterations (each
iteration's loss back-propagates into its own offsets only), bf16 and 2-process DDP (learning
and bit-exact resume after SIGKILL: tests/test_family_contract.py)."""

from __future__ import annotations

import pytest
import torch

import instyle
from instyle.models.hyperstyle import HyperStyle
from instyle.training import (
    Precision,
    TrainConfig,
    build_model,
    build_objective,
    prepare_for_training,
    train_step,
)
from instyle.training.optim import build_optimizer
from instyle.training.step import hyperstyle_forward_loss
from instyle.training.toy import save_toy_generator, toy_config, toy_generator, write_toy_dataset
from instyle.utils.config import ConfigError
from tests.test_training import single_and_two_processes

SIZE = 64  # the hypernetwork's map is 16x smaller: 4x4 at 64 px, the smallest it takes


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A frozen 64 px random generator (16 channels everywhere, 16-D w), 32 training and 8
    validation images of it, and a random (frozen) W-encoder saved as a pSp model into W."""
    root = tmp_path_factory.mktemp("hs_toy")
    g = toy_generator(size=SIZE, style_dim=16, seed=0, channels=16)
    save_toy_generator(g, root / "gen")
    write_toy_dataset(g, root / "train", 32, seed=1)
    write_toy_dataset(g, root / "val", 8, seed=2)
    w_cfg = toy_config(root / "gen", root / "train", image_size=SIZE, encoder_type="BackboneEncoderUsingLastLayerIntoW",
                       learn_in_w=True)
    build_model(w_cfg).save_pretrained(root / "w")
    return {"gen": root / "gen", "train": root / "train", "val": root / "val", "w": root / "w"}


def hs_config(toy, **overrides) -> TrainConfig:
    base = dict(
        family="hyperstyle", encoder_type="SharedWeightsHyperNetResNet", image_size=SIZE,
        w_encoder_checkpoint_path=str(toy["w"]), n_iters_per_batch=2, encoder_widths=(8, 16, 16, 32),
        layers_to_tune="0,2,3,5,6,8,9,11,12", val_target=str(toy["val"]), batch_size=4,
    )
    return toy_config(toy["gen"], toy["train"], **{**base, **overrides})


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"encoder_type": "GradualStyleEncoder"}, r"encoder_type='GradualStyleEncoder' is not accepted; choose one of "
                                                   r"\['SharedWeightsHyperNetResNet'"),
        ({"randomize_noise": True}, r"stored noise.*set randomize_noise=false"),
        ({"w_norm_lambda": 0.1}, r"no \['w_norm_lambda'\] terms"),
        ({"image_size": 32}, r"needs image_size >= 64.*got 32"),
        ({"encoder_init": "ir_se50"}, r"encoder_init='ir_se50': the hypernetwork starts from ImageNet ResNet-34"),
        ({"layers_to_tune": "0,x"}, r"layers_to_tune='0,x' must be comma-separated"),
        ({"n_iters_per_batch": 0}, r"n_iters_per_batch=0 must be an integer in \[1, 100\]"),
    ],
)
def test_hyperstyle_train_config_validation(toy, changes, match):
    with pytest.raises(ConfigError, match=match):
        hs_config(toy, **changes)


def test_missing_w_encoder_is_a_clear_error(toy):
    with pytest.raises(ConfigError, match="needs a pretrained generator .* and a W-encoder"):
        build_model(hs_config(toy, w_encoder_checkpoint_path=None))


def test_model_is_built_from_the_generator_and_the_w_encoder_file(toy):
    cfg = hs_config(toy)
    model = build_model(cfg)
    assert isinstance(model, HyperStyle) and model.training
    w_psp = instyle.load(toy["w"])
    gen = instyle.load_generator(toy["gen"])
    for k, v in w_psp.encoder.state_dict().items():
        assert torch.equal(model.w_encoder.state_dict()[k], v), k
    for k, v in gen.state_dict().items():
        assert torch.equal(model.decoder.state_dict()[k], v), k
    torch.testing.assert_close(model.latent_avg, gen.latent_avg.expand_as(model.latent_avg))
    assert model.config.hypernet.layers_to_tune == (0, 2, 3, 5, 6, 8, 9, 11, 12)
    params = prepare_for_training(model, cfg)
    assert {id(p) for p in params} == {id(p) for p in model.hypernet.parameters()}
    assert not any(p.requires_grad for p in [*model.w_encoder.parameters(), *model.decoder.parameters()])


def test_each_iteration_backpropagates_into_its_own_offsets(toy):
    """Gradients after ``hyperstyle_forward_loss`` = the sum of each iteration's own gradient,
    the coach's loop written out; the W-encoder stays in eval mode (running stats untouched)."""
    cfg = hs_config(toy, lpips_lambda=0.0)
    model = build_model(cfg)
    prepare_for_training(model, cfg)
    model.train()
    objective = build_objective(cfg.objective)
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    bn_before = {k: v.clone() for k, v in model.w_encoder.state_dict().items() if "running" in k}
    torch.manual_seed(0)
    out = hyperstyle_forward_loss(model, objective, x, x, 2)
    got = {n: p.grad.clone() for n, p in model.hypernet.named_parameters()}
    assert not model.w_encoder.training
    assert all(torch.equal(model.w_encoder.state_dict()[k], v) for k, v in bn_before.items())

    model.zero_grad()
    model.hypernet.train()
    with torch.no_grad():
        codes, y0 = model.w_inversion(x)
    d1 = model.hypernet(torch.cat([x, y0], 1))
    y1 = model.decode(codes, weights_deltas=d1, resize=True)
    objective(x, x, y1, codes, model.latent_avg).loss.backward()
    d2 = [None if a is None else a.detach() + b for a, b in zip(d1, model.hypernet(torch.cat([x, y1.detach()], 1)))]
    y2 = model.decode(codes, weights_deltas=d2, resize=True)
    last = objective(x, x, y2, codes, model.latent_avg)
    last.loss.backward()
    assert out.objective.terms == pytest.approx(last.terms, rel=1e-5)
    for n, p in model.hypernet.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-7, msg=n)


def test_bf16_step_runs_and_moves_only_the_hypernetwork(toy):
    cfg = hs_config(toy, precision="bf16")
    model = build_model(cfg)
    params = prepare_for_training(model, cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    objective = build_objective(cfg.objective)
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    out = train_step(model, objective, build_optimizer(params, "adam", 1e-3), model.latent_avg, x, x,
                     precision=Precision("bf16"), n_iters=2)
    assert torch.isfinite(torch.tensor(out.objective.terms["loss"]))
    after = model.state_dict()
    moved = {k.split(".")[0] for k in after if not torch.equal(after[k], before[k])}
    assert moved == {"hypernet"}


@pytest.mark.slow
def test_hyperstyle_ddp_two_processes_equal_one_process_on_the_combined_batch(toy, tmp_path):
    common = dict(max_steps=3, optim_name="ranger", learning_rate=1e-2, freeze_batchnorm=True, val_target=None)
    one, two = single_and_two_processes(hs_config(toy, batch_size=4, **common), hs_config(toy, batch_size=2, **common),
                                        tmp_path)
    start = build_model(hs_config(toy)).state_dict()
    moved = max((one[k] - start[k]).abs().max().item() for k in one if k.startswith("hypernet."))
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    print(f"largest update {moved:.3g}, largest 1- vs 2-process difference {diff:.3g}")
    assert moved > 1e-4
    assert diff < 1e-3 * moved, f"2-process result differs by {diff} (update size {moved})"


def test_hypernetwork_starts_from_imagenet_resnet34_as_the_original(toy, tmp_path):
    """``encoder_init=resnet34``: torchvision's ``layer1..4`` become ``body.*`` in order, ``bn1``
    is copied, ``conv1`` keeps the RGB filters in channels 0-2 (random in 3-5); a narrow
    trunk is refused."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(3)
    state = torchvision.models.resnet34(weights=None).state_dict()
    torch.save(state, tmp_path / "resnet34.pth")
    cfg = hs_config(toy, encoder_init="resnet34", resnet34_weights=str(tmp_path / "resnet34.pth"), encoder_widths=None,
                    encoder_units=None)
    hyper = build_model(cfg).hypernet.state_dict()
    assert torch.equal(hyper["body.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert torch.equal(hyper["body.3.downsample.1.running_var"], state["layer2.0.downsample.1.running_var"])
    assert torch.equal(hyper["body.15.bn2.weight"], state["layer4.2.bn2.weight"])
    assert torch.equal(hyper["bn1.bias"], state["bn1.bias"])
    assert torch.equal(hyper["conv1.weight"][:, :3], state["conv1.weight"])
    assert hyper["conv1.weight"].shape[1] == 6 and not torch.equal(hyper["conv1.weight"][:, 3:], hyper["conv1.weight"][:, :3])
    with pytest.raises(ConfigError, match="ResNet-34 weights do not fit this hypernetwork"):
        build_model(cfg.replace(encoder_widths=[8, 16, 16, 32]))
    with pytest.raises(ConfigError, match="ResNet-34 weights do not fit this hypernetwork"):
        build_model(cfg.replace(encoder_units=[1, 1, 1, 1]))
    with pytest.raises(ConfigError, match=r"encoder_init='resnet34': family='psp' starts its encoder from one of "
                                          r"\['ir_se50', 'random'\]"):
        hs_config(toy, family="psp", encoder_type="GradualStyleEncoder", encoder_init="resnet34")


def test_training_continues_from_a_hyperstyle_checkpoint(toy, tmp_path):
    model = build_model(hs_config(toy))
    model.save_pretrained(tmp_path / "hs")
    cfg = hs_config(toy, checkpoint_path=str(tmp_path / "hs"), w_encoder_checkpoint_path=None, stylegan_weights=None)
    again = build_model(cfg)
    assert again.training and all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match=r"encoder_type: config 'SharedWeightsHyperNetResNetSeparable' vs checkpoint "
                                          r"'SharedWeightsHyperNetResNet'"):
        build_model(cfg.replace(encoder_type="SharedWeightsHyperNetResNetSeparable"))
    with pytest.raises(ConfigError, match=r"layers_to_tune: config \(0, 2, 3\) vs checkpoint"):
        build_model(cfg.replace(layers_to_tune="0,2,3"))
    with pytest.raises(ConfigError, match="a HyperStyle checkpoint; train it with family=hyperstyle"):
        build_model(cfg.replace(family="psp", encoder_type="GradualStyleEncoder"))
