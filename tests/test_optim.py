"""Ranger against its published update rule, its state (incl. Lookahead slow weights)
and the optimiser factory. (The official trajectory is checked in
test_training_conformance.py.)"""

from __future__ import annotations

import io
import math

import pytest
import torch

from instyle.training.optim import Ranger, build_optimizer, centralize_gradient, radam_step_size
from instyle.utils.config import ConfigError


def problem(seed: int = 0, params: list | None = None):
    """Parameters (a conv weight, a linear weight, a bias) and a coupled quadratic loss."""
    g = torch.Generator().manual_seed(seed)
    init = [torch.randn(4, 3, 3, 3, generator=g), torch.randn(5, 7, generator=g), torch.randn(6, generator=g)]
    targets = [torch.randn(t.shape, generator=g) for t in init]
    params = params if params is not None else [torch.nn.Parameter(t) for t in init]

    def loss_fn():
        quad = sum(((p - t) ** 2 * (i + 1)).sum() for i, (p, t) in enumerate(zip(params, targets)))
        return quad + 0.1 * params[0].sum() * params[1].sum()

    return params, loss_fn


def step(opt, params, loss_fn):
    opt.zero_grad()
    loss_fn().backward()
    grads = [p.grad.clone() for p in params]
    opt.step()
    return grads


def test_gradient_centralisation_only_on_multidim():
    g = torch.randn(4, 3, 2, 2)
    c = centralize_gradient(g.clone())
    assert torch.allclose(c.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-6)
    b = torch.randn(6)
    assert torch.equal(centralize_gradient(b.clone()), b)


def test_rectification_schedule():
    # N_t > 5 first at t = 6: steps 1..5 are SGD warm-up with step size 1/(1-b1^t)
    for t in range(1, 6):
        adaptive, size = radam_step_size(t, 0.95, 0.999, 5)
        assert not adaptive and size == pytest.approx(1 / (1 - 0.95**t))
    adaptive, size = radam_step_size(6, 0.95, 0.999, 5)
    n_max = 2 / 0.001 - 1
    n_t = n_max - 2 * 6 * 0.999**6 / (1 - 0.999**6)
    rect = math.sqrt((1 - 0.999**6) * (n_t - 4) / (n_max - 4) * (n_t - 2) / n_t * n_max / (n_max - 2))
    assert adaptive and size == pytest.approx(rect / (1 - 0.95**6), rel=1e-12)


def test_first_step_is_sgd_on_centralised_gradient():
    params, loss_fn = problem()
    before = [p.detach().clone() for p in params]
    opt = Ranger(params, lr=0.01)
    grads = step(opt, params, loss_fn)
    for p, b, g in zip(params, before, grads):
        gc = centralize_gradient(g.clone())
        # m_1 = 0.05 g, step size 1/(1-0.95) = 20 -> w - lr*g
        torch.testing.assert_close(p.detach(), b - 0.01 * gc, rtol=0, atol=1e-6)


def test_lookahead_every_k_steps_and_reference_rule():
    """A float64 re-implementation of the README's rule, step by step."""
    params, loss_fn = problem(1)
    ref = [p.detach().double().clone() for p in params]
    slow = [r.clone() for r in ref]
    m = [torch.zeros_like(r) for r in ref]
    v = [torch.zeros_like(r) for r in ref]
    lr, b1, b2, eps, k, alpha = 1e-2, 0.95, 0.999, 1e-5, 6, 0.5
    opt = Ranger(params, lr=lr)
    for t in range(1, 14):
        grads = step(opt, params, loss_fn)
        for i, g in enumerate(grads):
            g = centralize_gradient(g.double())
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            adaptive, size = radam_step_size(t, b1, b2, 5)
            ref[i] = ref[i] - lr * size * (m[i] / (v[i].sqrt() + eps) if adaptive else m[i])
            if t % k == 0:
                slow[i] = slow[i] + alpha * (ref[i] - slow[i])
                ref[i] = slow[i].clone()
        # float32 optimiser vs float64 reference; grads come from the float32 trajectory
        for p, r in zip(params, ref):
            torch.testing.assert_close(p.detach().double(), r, rtol=0, atol=2e-5)
            r.copy_(p.detach().double())  # follow the float32 path so errors do not accumulate
    assert opt.state[params[0]]["step"] == 13


def test_state_dict_round_trip_continues_bit_exactly():
    params, loss_fn = problem(2)
    opt = Ranger(params, lr=1e-2)
    for _ in range(4):  # mid-Lookahead period: the slow weights differ from the fast ones
        step(opt, params, loss_fn)
    state = opt.state_dict()
    assert {"step", "exp_avg", "exp_avg_sq", "slow_buffer"} <= set(state["state"][0])
    assert not torch.equal(state["state"][0]["slow_buffer"], params[0].detach())
    snapshot = [p.detach().clone() for p in params]
    buf = io.BytesIO()
    torch.save(state, buf)

    for _ in range(5):
        step(opt, params, loss_fn)
    expected = [p.detach().clone() for p in params]

    params2, loss2 = problem(2, [torch.nn.Parameter(t.clone()) for t in snapshot])
    opt2 = Ranger(params2, lr=1e-2)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(5):
        step(opt2, params2, loss2)
    for a, b in zip(params2, expected):
        assert torch.equal(a.detach(), b)


def test_matches_pytorch_optimizer_degenerated_to_sgd():
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    params, loss_fn = problem(3)
    params_b, loss_b = problem(3, [torch.nn.Parameter(p.detach().clone()) for p in params])
    ours = Ranger(params, lr=1e-2)
    theirs = pytorch_optimizer.Ranger(params_b, lr=1e-2, degenerated_to_sgd=True)
    for _ in range(12):
        step(ours, params, loss_fn)
        step(theirs, params_b, loss_b)
    for a, b in zip(params, params_b):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-5)


def test_weight_decay_and_validation():
    p = torch.nn.Parameter(torch.ones(3))
    opt = Ranger([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.95))  # w -= wd*lr*w
    with pytest.raises(ValueError, match="lr"):
        Ranger([p], lr=0)
    with pytest.raises(ValueError, match="alpha"):
        Ranger([p], alpha=2)


def test_build_optimizer():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(build_optimizer(p, "ranger", 1e-4), Ranger)
    adam = build_optimizer(p, "adam", 1e-3)
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["lr"] == 1e-3
    with pytest.raises(ConfigError, match="ranger"):
        build_optimizer(p, "sgd")
