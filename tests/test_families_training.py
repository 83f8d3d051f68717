"""Training ReStyle and e4e models with the pSp trainer: config checks, ReStyle's per-batch
iterations (gradients of every iteration add up, feedback detached), e4e's losses, pools
and progressive schedule (learning and bit-exact resume after SIGKILL:
tests/test_family_contract.py)."""

from __future__ import annotations

import pytest
import torch

from instyle.training import TrainConfig, build_model, build_objective, train
from instyle.training.step import restyle_forward_loss
from instyle.training.toy import save_toy_generator, toy_config, toy_generator, write_toy_dataset
from instyle.utils.config import ConfigError


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy problem of ``test_training``: a frozen 32 px generator and its images."""
    root = tmp_path_factory.mktemp("toy")
    g = toy_generator(size=32, style_dim=16, seed=0)
    save_toy_generator(g, root / "gen")
    write_toy_dataset(g, root / "train", 64, seed=1)
    write_toy_dataset(g, root / "val", 16, seed=2)
    return {"gen": root / "gen", "train": root / "train", "val": root / "val"}


def restyle_config(toy, **overrides) -> TrainConfig:
    base = dict(family="restyle", encoder_type="BackboneEncoder", n_iters_per_batch=2, val_target=str(toy["val"]))
    return toy_config(toy["gen"], toy["train"], **{**base, **overrides})


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"family": "stylegan"}, r"family='stylegan' is not accepted; choose one of \['psp', 'e4e', 'restyle', 'hyperstyle', 'restyle3', 'sfe'\]"),
        ({"encoder_type": "Encoder4Editing"}, r"encoder_type='Encoder4Editing' is not accepted"),
        ({"input_nc": 1, "source_mode": "gray"}, r"needs input_nc=3 \(got 1\)"),
        ({"n_iters_per_batch": 0}, r"n_iters_per_batch=0 must be an integer in \[1, 100\]"),
    ],
)
def test_restyle_train_config_validation(toy, changes, match):
    with pytest.raises(ConfigError, match=match):
        restyle_config(toy, **changes)


def test_restyle_model_is_built_with_a_six_channel_encoder(toy):
    model = build_model(restyle_config(toy))
    assert model.family == "restyle" and model.config.encoder.input_nc == 6 and model.input_nc == 3


def test_each_iteration_backpropagates_its_own_loss_on_detached_feedback(toy):
    """Gradients after ``restyle_forward_loss`` = the sum of each iteration's own gradient,
    computed here one call at a time (the official coach's loop written out)."""
    cfg = restyle_config(toy, lpips_lambda=0.0)
    model = build_model(cfg).eval()
    objective = build_objective(cfg.objective)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    model.zero_grad()
    out = restyle_forward_loss(model, objective, model.latent_avg, x, x, 2, randomize_noise=False)
    got = {n: p.grad.clone() for n, p in model.encoder.named_parameters()}

    model.zero_grad()
    with torch.no_grad():
        avg = model.decode(model.latent_avg[None], resize=True)
    y0, w0 = model(torch.cat([x, avg.expand(2, -1, -1, -1)], 1), return_latents=True, randomize_noise=False)
    objective(x, x, y0, w0, model.latent_avg).loss.backward()
    y1, w1 = model(torch.cat([x, y0.detach()], 1), latent=w0.detach(), return_latents=True, randomize_noise=False)
    last = objective(x, x, y1, w1, model.latent_avg)
    last.loss.backward()
    assert out.objective.terms == last.terms
    for n, p in model.encoder.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)


# --------------------------------------------------------------------------- e4e


def e4e_config(toy, **overrides) -> TrainConfig:
    base = dict(family="e4e", encoder_type="Encoder4Editing", w_discriminator_lambda=0.1, use_w_pool=True, d_reg_every=4,
                progressive_start=20, progressive_step_every=10, val_target=str(toy["val"]))
    return toy_config(toy["gen"], toy["train"], **{**base, **overrides})


def test_e4e_config_and_schedule(toy):
    from instyle.training.e4e import E4ETraining, progressive_steps

    with pytest.raises(ConfigError, match=r"encoder_type='GradualStyleEncoder' is not accepted; choose one of \['Encoder4Editing'\]"):
        e4e_config(toy, encoder_type="GradualStyleEncoder")
    with pytest.raises(ConfigError, match="progressive_start=0 must be >= 1"):
        e4e_config(toy, progressive_start=0)
    assert progressive_steps(4, 20000, 2000) == [0, 20000, 22000, 24000] and progressive_steps(4, None, 5) is None
    e4e = E4ETraining(e4e_config(toy), n_styles=8, style_dim=16, device=torch.device("cpu"))
    assert [e4e.stage(s) for s in (0, 19, 20, 29, 30, 79, 80, 10_000)] == [0, 0, 1, 1, 2, 6, 7, 7]
    assert E4ETraining(e4e_config(toy, progressive_start=None), 8, 16, torch.device("cpu")).stage(0) == 18


def test_e4e_losses_follow_their_formulas():
    from instyle.losses.e4e import delta_regularization, discriminator_loss, encoder_adversarial_loss, r1_penalty

    w = torch.randn(3, 5, 4)
    total, terms = delta_regularization(w, 2, p=2)
    want = [(w[:, i] - w[:, 0]).pow(2).sum(1).sqrt().mean() for i in (1, 2)]
    torch.testing.assert_close(total, want[0] + want[1])
    assert list(terms) == ["delta1_loss", "delta2_loss"]
    lin = torch.nn.Linear(4, 1)
    real, fake = torch.randn(6, 1), torch.randn(6, 1)
    torch.testing.assert_close(discriminator_loss(real, fake), torch.log1p(torch.exp(-real)).mean() + torch.log1p(torch.exp(fake)).mean())
    adv = encoder_adversarial_loss(lin, w, [0, 3])
    torch.testing.assert_close(adv, (torch.log1p(torch.exp(-lin(w[:, 0]))).mean() + torch.log1p(torch.exp(-lin(w[:, 3]))).mean()) / 2)
    real_w = torch.randn(6, 4, requires_grad=True)
    # a linear D has gradient = its weight for every sample: the penalty is ||weight||^2
    torch.testing.assert_close(r1_penalty(lin(real_w), real_w), lin.weight.pow(2).sum())


def test_latent_codes_pool_fills_then_swaps_and_round_trips():
    import random

    from instyle.training.e4e import LatentCodesPool

    pool = LatentCodesPool(3)
    first = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(pool.query(first), first)  # filling: codes pass through
    random.seed(0)
    out = pool.query(torch.full((8, 2, 4), -1.0))  # one row of each [n, D] sample
    assert out.shape == (8, 4)
    swapped = [row for row in out if row[0] >= 0]
    assert 0 < len(swapped) < 8 and all(any(torch.equal(r, f) for f in first) for r in swapped)
    clone = LatentCodesPool(3)
    clone.load_state_dict(pool.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(clone.codes, pool.codes))


def test_e4e_training_step_updates_the_discriminator_and_reports_its_terms(toy, tmp_path):
    result = train(e4e_config(toy, max_steps=3, val_target=None, board_interval=1), tmp_path / "run")
    terms = result.last_terms
    assert {"discriminator_loss", "encoder_discriminator_loss", "loss_l2"} <= set(terms)
    assert terms["total_delta_loss"] == 0.0  # stage 0 (before progressive_start): no offsets yet
    state = torch.load(tmp_path / "run" / "checkpoints" / "latest" / "training_state.pt", weights_only=True)
    assert state["e4e"]["real_pool"]["codes"].shape == (24, 16) and "discriminator" in state["e4e"]


@pytest.mark.parametrize("name, family", [("e4e_inversion", "e4e"), ("restyle_inversion", "restyle")])
def test_family_presets_are_valid_configs(name, family):
    from instyle.training import get_preset

    cfg = TrainConfig.from_dict(dict(get_preset(name).overrides))
    assert cfg.family == family and cfg.objective.start_from_latent_avg and cfg.task == "inversion"
