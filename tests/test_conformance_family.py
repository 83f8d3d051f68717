"""Conformance with the official e4e (config E2) and ReStyle (config R2) implementations.

Each checkpoint is regenerated from ``../shared/conformance/{e4e,restyle}`` with the
fixtures' own writer, checked against the stored fingerprint and loaded once (E2, then
R2, so E2's ~0.7 GB is freed first). Every "checked" array of the fixtures' READMEs must
match within max abs diff 1e-4 on CPU float32. The pSp machinery is reused from
``test_conformance``.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import instyle
from instyle.models.iterative import average_image
from tests.helpers import run_checkpoint_writer
from tests.test_conformance import TOLERANCE, Official, check_fingerprint, expected_arrays, run_case

pytestmark = pytest.mark.conformance

#: name -> (fixture folder, --project, seed), as the fixtures' READMEs regenerate them.
FAMILY_CONFIGS = {"E2": ("e4e", "e4e", 31), "R2": ("restyle", "restyle_e4e", 32)}


def max_diff(out: torch.Tensor, expected: np.ndarray) -> float:
    assert out.dtype == torch.float32
    assert tuple(out.shape) == expected.shape, (tuple(out.shape), expected.shape)
    return float(np.abs(out.detach().numpy().astype(np.float64) - expected).max())


def assert_close(outputs: dict[str, torch.Tensor], data: dict[str, np.ndarray], name: str) -> None:
    """Each output against the array named by its key (or by ``key -> array`` aliases)."""
    for key, out in outputs.items():
        expected = data[key.split("->")[-1]]
        diff = max_diff(out, expected)
        assert diff <= TOLERANCE, f"{name}.{key}: max abs diff {diff:.3g} > {TOLERANCE}"


@pytest.fixture(scope="session")
def family_dir(shared_dir) -> Path:
    d = shared_dir / "conformance"
    for sub in ("e4e", "restyle"):
        if not (d / sub / "make_checkpoint.py").is_file():
            pytest.skip(f"needs {d / sub}/make_checkpoint.py (the shared e4e/ReStyle conformance fixtures)")
    return d


@pytest.fixture(scope="session")
def make_family_checkpoint(family_dir, tmp_path_factory):
    """``make(name, *extra_args) -> Path``: run the fixtures' own writer (cached per args)."""
    out_dir = tmp_path_factory.mktemp("family_checkpoints")
    made: dict[tuple, Path] = {}

    def make(name: str, *extra: str) -> Path:
        key = (name, *extra)
        if key not in made:
            folder, project, seed = FAMILY_CONFIGS[name]
            out = out_dir / ("_".join(key).replace("-", "").replace(" ", "") + ".pt")
            made[key] = run_checkpoint_writer(
                family_dir / folder / "make_checkpoint.py", family_dir / folder / "keys" / f"{name}.txt", seed, out,
                "--project", project, *extra,
            )
        return made[key]

    return make


class LoadedFamilies:
    """Holds at most one loaded configuration (E2 ~0.7 GB, R2 ~0.8 GB)."""

    def __init__(self, family_dir: Path, make):
        self.family_dir, self.make, self.current = family_dir, make, None

    def get(self, name: str) -> Official:
        if self.current is None or self.current.name != name:
            self.current = None
            gc.collect()
            data = expected_arrays(self.family_dir / FAMILY_CONFIGS[name][0], name)
            path = self.make(name)
            check_fingerprint(path, data["ckpt_fingerprint"])
            self.current = Official(name, path, instyle.load(path, device="cpu"), data)
        return self.current


@pytest.fixture(scope="session")
def families(family_dir, make_family_checkpoint):
    loaded = LoadedFamilies(family_dir, make_family_checkpoint)
    yield loaded
    loaded.current = None
    gc.collect()


# --------------------------------------------------------------------------- E2 (e4e)


def e2_architecture(o: Official) -> None:
    opts = json.loads(str(o.data["meta_json"]))["checkpoint_opts"]
    cfg = o.model.config
    assert cfg.family == "e4e" and cfg.encoder.type == opts["encoder_type"] == "Encoder4Editing"
    assert cfg.output_size == opts["stylegan_size"] == 64 and cfg.n_styles == 10
    assert cfg.encoder.input_nc == 3 and cfg.start_from_latent_avg and not cfg.learn_in_w
    assert o.model.latent_avg.shape == (10, 512) and not o.model.training
    assert o.model.encoder.progressive_stage == 18


@torch.no_grad()
def e2_case(o: Official, case: str) -> dict[str, torch.Tensor]:
    net, x = o.model, o.tensor("input")
    if case == "stages":
        out = {}
        for k in (0, 4, 7):
            net.encoder.set_progressive_stage(k)
            out[f"encoder_codes_stage{k}"] = net.encoder(x)
        net.encoder.set_progressive_stage(18)
        out["encoder_codes"] = net.encoder(x)  # back at the inference stage
        return out
    if case == "inference":
        # scripts/inference.py: get_latents, then batch-1 generator calls at full resolution.
        w = net.encode(x)
        return {"inference_latents": w, "inference_images": torch.cat([net.decode(wi[None]) for wi in w])}
    return run_case(net, case, o)


E2_CASES = ["architecture", "encoder_codes", "stages", "plain", "latents", "noresize", "inference", "input_code"]


@pytest.mark.slow
@pytest.mark.parametrize("case", E2_CASES)
def test_e4e_official(families, case):
    o = families.get("E2")
    if case == "architecture":
        e2_architecture(o)
    else:
        assert_close(e2_case(o, case), o.data, "E2")


@pytest.mark.slow
def test_e4e_round_trip_through_own_format(families, tmp_path, capsys):
    """``instyle convert`` -> config.json + safetensors -> the same family, config and outputs."""
    from instyle.cli.main import main

    o = families.get("E2")
    assert main(["convert", str(o.path), str(tmp_path / "e2")]) == 0
    assert "e4e model: Encoder4Editing" in capsys.readouterr().out
    doc = json.loads((tmp_path / "e2" / "config.json").read_text())
    assert doc["config"]["family"] == "e4e" and doc["config"]["encoder"]["type"] == "Encoder4Editing"
    own = instyle.load(tmp_path / "e2")
    assert own.config == o.model.config
    x = o.tensor("input")
    with torch.no_grad():
        for a, b in ((own.encode(x), o.model.encode(x)), (own(x, randomize_noise=False), o.model(x, randomize_noise=False))):
            assert torch.equal(a, b)
    assert_close(run_case(own, "plain", o), o.data, "E2(own format)")


# --------------------------------------------------------------------------- R2 (ReStyle e4e)


def r2_architecture(o: Official) -> None:
    meta = json.loads(str(o.data["meta_json"]))
    opts = meta["checkpoint_opts"]
    cfg = o.model.config
    assert cfg.family == "restyle" and cfg.encoder.type == opts["encoder_type"] == "ProgressiveBackboneEncoder"
    assert cfg.encoder.input_nc == opts["input_nc"] == 6 and o.model.input_nc == 3
    assert cfg.output_size == opts["output_size"] == 256 and cfg.n_styles == 14
    assert o.model.latent_avg.shape == (14, 512) and not o.model.training


@pytest.mark.slow
def test_restyle_architecture_average_image_and_first_codes(families):
    o = families.get("R2")
    r2_architecture(o)
    x = o.tensor("input")
    with torch.no_grad():
        avg = average_image(o.model)
        codes = o.model.encoder(torch.cat([x, avg[None].expand(len(x), -1, -1, -1)], dim=1))
    assert_close({"avg_image": avg, "encoder_codes_iter0": codes}, o.data, "R2")


@pytest.mark.slow
def test_restyle_five_iterations(families):
    """``encode(x, iterations=5, return_all=True)`` = the original's per-iteration latents;
    ``decode`` of each = its images, with and without ``resize`` (256 px: identical)."""
    o = families.get("R2")
    x = o.tensor("input")
    with torch.no_grad():
        latents = o.model.encode(x, iterations=5, return_all=True)
        images = [o.model.decode(w) for w in latents]
        resized_last = o.model.decode(latents[-1], resize=True)
    assert len(latents) == 5
    stacked = torch.stack(latents)
    assert_close(
        {"iter5_latents": stacked, "iter5_resize_latents": stacked, "iter5_images": torch.stack(images)}, o.data, "R2"
    )
    diff = max_diff(resized_last, o.data["iter5_images"][-1])
    assert diff <= TOLERANCE, f"R2.iter5_resize_images[-1]: {diff:.3g}"


@pytest.mark.slow
def test_restyle_one_iteration_and_round_trip(families, tmp_path):
    """``iterations=1`` (n_iters_per_batch=1), and the same after save_pretrained -> load."""
    o = families.get("R2")
    x = o.tensor("input")
    o.model.save_pretrained(tmp_path / "r2")
    own = instyle.load(tmp_path / "r2")
    assert own.config == o.model.config and own.config.family == "restyle"
    with torch.no_grad():
        w = o.model.encode(x, iterations=1)
        w_own = own.encode(x, iterations=1, return_all=True)
        image, resized = o.model.decode(w), o.model.decode(w, resize=True)
    assert len(w_own) == 1 and torch.equal(w_own[0], w)
    assert_close(
        {"iter1_latents": w[None], "iter1_resize_latents": w[None], "iter1_images": image[None],
         "iter1_resize_images->iter1_images": resized[None]},
        o.data, "R2",
    )
