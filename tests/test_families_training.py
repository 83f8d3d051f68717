"""Training ReStyle models with the pSp trainer: config checks, the per-batch iterations
(gradients of every iteration add up, feedback detached), learning on the toy inversion
problem and bit-exact resume after SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

import instyle
from instyle.data import PairedImageDataset
from instyle.training import TrainConfig, build_model, build_objective, train
from instyle.training.step import restyle_forward_loss
from instyle.training.toy import save_toy_generator, toy_config, toy_generator, write_toy_dataset
from instyle.utils.config import ConfigError
from tests.test_training import _latest_step, _runner, _weights

pytestmark = pytest.mark.usefixtures("single_thread")


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
        ({"family": "e4e"}, r"family='e4e' is not accepted; choose one of \['psp', 'restyle', 'hyperstyle'\]"),
        ({"encoder_type": "Encoder4Editing"}, r"encoder_type='Encoder4Editing' is not accepted"),
        ({"input_nc": 1, "source_mode": "gray"}, r"needs input_nc=3 \(got 1\)"),
        ({"n_iters_per_batch": 0}, r"n_iters_per_batch=0 must be a positive integer"),
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
    objective = build_objective(cfg)
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


@pytest.mark.slow
def test_restyle_encoder_learns_to_invert_a_frozen_generator(toy, tmp_path):
    """250 steps (batch 8, Adam 2e-3, 2 iterations per batch) on 64 images of a frozen 32 px
    generator: the L2 of 2-iteration reconstructions falls >= 5x."""
    cfg = restyle_config(toy, max_steps=250, learning_rate=2e-3, val_target=None, board_interval=50)
    ds = PairedImageDataset.from_folders(toy["train"], image_size=32)
    x = torch.stack([ds[i]["x"] for i in range(len(ds))])

    def l2(model) -> float:
        with torch.no_grad():
            return float(((model.decode(model.encode(x, iterations=2), resize=True) - x) ** 2).mean())

    start = l2(build_model(cfg).eval())
    train(cfg, tmp_path / "run")
    end = l2(instyle.load(tmp_path / "run" / "checkpoints" / "latest"))
    print(f"L2 start {start:.4f} end {end:.4f} ratio {start / end:.2f}")
    assert end < start / 5


@pytest.mark.slow
def test_restyle_resume_after_sigkill_is_bit_exact(toy, tmp_path):
    n = 12
    cfg = restyle_config(toy, max_steps=n, save_interval=4, val_interval=4, optim_name="ranger", learning_rate=1e-2,
                         randomize_noise=True, batch_size=4)
    cfg.save(tmp_path / "cfg.json")
    script, env = _runner(tmp_path)
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([sys.executable, str(script), str(tmp_path / "cfg.json"), str(full), "fresh"], env=env, check=True,
                   capture_output=True)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "cfg.json"), str(killed), "fresh"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _latest_step(killed) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = _latest_step(killed)
    assert proc.returncode == -signal.SIGKILL and step is not None and step < n, "the run was not killed mid-way"
    subprocess.run([sys.executable, str(script), str(killed / "config.json"), str(killed), "resume"], env=env,
                   check=True, capture_output=True)
    assert _latest_step(killed) == n
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    start = build_model(cfg).state_dict()
    assert not torch.equal(start["encoder.styles.0.linear.weight"], a["encoder.styles.0.linear.weight"])
