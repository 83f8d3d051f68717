"""SeFa directions against a numpy eigendecomposition written out from the method's definition."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from instyle.cli.main import main
from instyle.inference.directions import sefa
from instyle.inference.editing import DirectionSet, edit_codes, load_edit, parse_edit
from instyle.interop import save_generator
from instyle.models.stylegan2 import Generator, GeneratorConfig


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(3)
    return Generator(GeneratorConfig(size=32, style_dim=16, n_mlp=1, channels={4: 12, 8: 10, 16: 8, 32: 6})).eval()


def _numpy_sefa(modulation_weights: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The e4e / SeFa recipe: concat weight.T column-wise, unit columns, eig of W Wᵀ."""
    w = np.concatenate([m.T for m in modulation_weights], axis=1).astype(np.float64)
    w = w / np.linalg.norm(w, axis=0, keepdims=True)
    values, vectors = np.linalg.eig(w @ w.T)
    order = np.argsort(-values.real)
    return values.real[order], vectors.real[:, order].T


def _weights(module_list) -> list[np.ndarray]:
    return [m.conv.modulation.weight.detach().numpy() for m in module_list]


def test_sefa_matches_numpy_on_the_styles_it_edits(gen):
    res = sefa(gen, layers=[0, 2, 3])
    assert res.layers == (0, 2, 3) and res.directions.shape == (16, 16)
    values, vectors = _numpy_sefa(_weights([gen.conv1, gen.convs[1], gen.convs[2]]))  # style l drives convs[l-1]
    np.testing.assert_allclose(res.eigenvalues.numpy(), values, rtol=1e-5, atol=1e-6)
    cos = np.abs(np.sum(res.directions.numpy() * vectors, axis=1))  # eigenvectors are defined up to sign
    np.testing.assert_allclose(cos, 1.0, atol=1e-4)
    everything = sefa(gen)
    assert everything.layers == tuple(range(gen.n_latent - 1))
    np.testing.assert_allclose(everything.eigenvalues.numpy(), _numpy_sefa(_weights([gen.conv1, *gen.convs]))[0], rtol=1e-5)
    with pytest.raises(ValueError, match="styles 0..6"):
        sefa(gen, layers=[gen.n_latent - 1])  # the last style drives only the final ToRGB


def test_sefa_e4e_mode_reproduces_the_off_by_one(gen):
    res = sefa(gen, layers=[2, 3, 4, 5], mode="e4e")
    assert res.layers == (1, 2, 3, 4)  # edits style l - 1 ...
    values, vectors = _numpy_sefa(_weights([gen.convs[i] for i in (1, 2, 3, 4)]))  # ... of convs[l - 1]
    np.testing.assert_allclose(res.eigenvalues.numpy(), values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.abs(np.sum(res.directions.numpy() * vectors, axis=1)), 1.0, atol=1e-4)
    all_e4e = sefa(gen, mode="e4e")
    assert all_e4e.layers == tuple(range(gen.num_layers - 1))
    np.testing.assert_allclose(all_e4e.eigenvalues.numpy(), _numpy_sefa(_weights([gen.conv1, *gen.convs]))[0], rtol=1e-5)
    with pytest.raises(ValueError, match="mode 'x'"):
        sefa(gen, mode="x")


def test_cli_sefa_on_a_rosinality_checkpoint_and_edit(gen, tmp_path, capsys):
    torch.save({"g_ema": gen.state_dict(), "latent_avg": torch.zeros(16)}, tmp_path / "g.pt")
    out = tmp_path / "dirs.npz"
    assert main(["directions", "sefa", "--generator", str(tmp_path / "g.pt"), "--layers", "2-5", "--out", str(out)]) == 0
    assert "styles [2, 3, 4, 5]" in capsys.readouterr().out
    dirs = load_edit(out, n_styles=gen.n_latent, style_dim=16)
    assert isinstance(dirs, DirectionSet) and dirs.layers == (2, 3, 4, 5)
    torch.testing.assert_close(dirs.directions, sefa(gen, layers=[2, 3, 4, 5]).directions)
    w = torch.zeros(gen.n_latent, 16)
    moved = edit_codes(w, dirs, parse_edit("sefa:0=3"))[0]
    torch.testing.assert_close(moved[2:6], 3 * dirs.directions[0].expand(4, 16))
    assert moved[[0, 1, 6, 7]].abs().sum() == 0
    save_generator(gen, tmp_path / "own")  # instyle's own format gives the same directions
    assert main(["directions", "sefa", "-g", str(tmp_path / "own"), "--layers", "2-5", "-o", str(tmp_path / "own.npz")]) == 0
    torch.testing.assert_close(load_edit(tmp_path / "own.npz").directions, dirs.directions)
    assert main(["directions", "sefa", "-g", str(tmp_path / "g.pt"), "--layers", "12", "-o", str(tmp_path / "x.npz")]) == 2
    assert "styles 0..6" in capsys.readouterr().err and not (tmp_path / "x.npz").exists()


def test_sefa_on_official_psp_and_nvidia_files(tmp_path):
    """The other generator files instyle loads: an official pSp checkpoint (its decoder) and
    an NVIDIA StyleGAN2-ADA pickle; directions equal those of the loaded generator."""
    from instyle.interop import load_generator
    from tests.test_interop import make_psp, tiny_config, write_official
    from tests.test_nvidia import nvp

    official = write_official(make_psp(tiny_config(), seed=2), tmp_path / "psp.pt")
    nvidia = nvp.write_snapshot(tmp_path / "network-snapshot-g32.pkl", nvp.CONFIGS["g32"])
    for path in (official, nvidia):
        out = tmp_path / f"{path.stem}.npz"
        assert main(["directions", "sefa", "-g", str(path), "--layers", "0-2", "-o", str(out)]) == 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an estimated average latent: not used here
            g = load_generator(path)
        torch.testing.assert_close(load_edit(out).directions, sefa(g, layers=[0, 1, 2]).directions)
