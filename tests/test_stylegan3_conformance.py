"""Conformance with the official ReStyle-over-StyleGAN3 code (stylegan3-editing), config G1.

The checkpoints are regenerated once per session with the fixture folder's own writer, using
the commands its ``*_fingerprints.json`` records, and checked against the stored
fingerprints. Every "checked" array of ``G1.npz`` must match within max abs diff 1e-4 (float32,
CPU). The encoder runs with the replacement generator (``instyle.load(path, generator=...)``),
as the original's ``load_encoder(..., generator_path=...)``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

import instyle
from instyle.alignment.stylegan3_transform import rotate_points_like_pil, stylegan_transform
from tests.helpers import run_checkpoint_writer
from tests.test_conformance import TOLERANCE, check_fingerprint

pytestmark = [pytest.mark.slow, pytest.mark.conformance]

CONFIG = "G1"


def max_diff(out: torch.Tensor, expected: np.ndarray) -> float:
    assert out.dtype == torch.float32
    assert tuple(out.shape) == expected.shape, (tuple(out.shape), expected.shape)
    return float(np.abs(out.detach().numpy().astype(np.float64) - expected).max())


@pytest.fixture(scope="module")
def sg3_dir(shared_dir) -> Path:
    d = shared_dir / "conformance" / "stylegan3"
    if not (d / "make_checkpoint.py").is_file() or not (d / f"{CONFIG}.npz").is_file():
        pytest.skip(f"needs {d}/make_checkpoint.py and {CONFIG}.npz (the shared StyleGAN3 conformance fixtures)")
    return d


@pytest.fixture(scope="module")
def data(sg3_dir) -> dict:
    with np.load(sg3_dir / f"{CONFIG}.npz") as z:
        out = {k: z[k] for k in z.files}
    out["meta"] = json.loads(str(out.pop("meta_json")))
    return out


def _writer_args(command: str) -> dict:
    """``{"--project": ..., "--keys": ..., "--seed": ...}`` of a recorded writer command."""
    words = shlex.split(command)
    return {w: words[i + 1] for i, w in enumerate(words) if w.startswith("--")}


@pytest.fixture(scope="module")
def files(sg3_dir, data, tmp_path_factory) -> dict[str, Path]:
    """The regenerated ReStyle checkpoint and generator, fingerprints checked."""
    record = json.loads((sg3_dir / f"{CONFIG}_fingerprints.json").read_text())
    out_dir = tmp_path_factory.mktemp("sg3_checkpoints")
    made = {}
    for name in ("restyle_checkpoint", "generator_checkpoint"):
        args = _writer_args(record[name])
        made[name] = run_checkpoint_writer(
            sg3_dir / "make_checkpoint.py", sg3_dir / args["--keys"], int(args["--seed"]), out_dir / f"{name}.pt",
            "--project", args["--project"],
        )
    check_fingerprint(made["restyle_checkpoint"], data["ckpt_fingerprint"])
    gen = torch.load(made["generator_checkpoint"], map_location="cpu", weights_only=True)
    sums = np.array([t.double().abs().sum().item() for t in gen.values()])
    np.testing.assert_allclose(sums, data["gen_fingerprint"], rtol=1e-9, atol=0)
    return made


@pytest.fixture(scope="module")
def model(files):
    return instyle.load(files["restyle_checkpoint"], generator=files["generator_checkpoint"])


def _checked(data: dict, key: str) -> bool:
    return bool(data["meta"]["checked"].get(key))


def test_generator_alone(files, data):
    g = instyle.load_generator(files["generator_checkpoint"])
    cfg = data["meta"]["generator_config"]
    assert (g.size, g.style_dim, g.config.conv_kernel, g.config.use_radial_filters) == (
        cfg["img_resolution"], cfg["w_dim"], cfg["conv_kernel"], cfg["use_radial_filters"])
    assert g.config.output_scale == cfg["output_scale"]
    ws, z = torch.from_numpy(data["gen_ws"]), torch.from_numpy(data["gen_z"])
    with torch.no_grad():
        outputs = {
            "gen_w_images": g.synthesis(ws, noise_mode="const", force_fp32=True),
            "gen_z_ws": g.mapping(z, None),
            "gen_z_trunc_ws": g.mapping(z, None, truncation_psi=0.7),
            # one [3, 3] for the batch, as the video script passes it
            "gen_transform_images": g.synthesize(ws, transform=torch.from_numpy(data["landmarks_transform"][0]).float()),
        }
        outputs["gen_z_images"] = g.synthesize(outputs["gen_z_ws"])
    for key, out in outputs.items():
        assert _checked(data, key), key
        diff = max_diff(out, data[key])
        assert diff <= TOLERANCE, f"{key}: max abs diff {diff:.3g} > {TOLERANCE}"


def test_restyle_iterations_aligned_and_unaligned(model, data):
    n = int(data["meta"]["n_iters_per_batch"])
    assert model.default_iterations == n
    assert tuple(model.latent_avg.shape) == tuple(data["meta"]["latent_avg_shape"])
    x = torch.from_numpy(data["input"])
    transform = torch.from_numpy(data["landmarks_transform"]).float()
    with torch.no_grad():
        avg = model.average_image()
        codes = model.encoder(torch.cat([x, avg[None].expand(x.shape[0], -1, -1, -1)], 1))
        steps = model.invert(x, n, transform=transform, average=avg)
        latents = torch.stack([w for w, _ in steps])
        unaligned = torch.stack([img for _, img in steps])
        aligned = torch.cat([unaligned[:-1], model.decode(latents[-1])[None]])
        public = model.encode(x, iterations=n, return_all=True)
    outputs = {"avg_image": avg, "encoder_codes_iter0": codes, "aligned_latents": latents,
               "aligned_images": aligned, "unaligned_images": unaligned}
    for key, out in outputs.items():
        assert _checked(data, key), key
        diff = max_diff(out, data[key])
        assert diff <= TOLERANCE, f"{key}: max abs diff {diff:.3g} > {TOLERANCE}"
    # the public API gives the same latents; the transform never changes them
    assert len(public) == n
    torch.testing.assert_close(torch.stack(public), latents, atol=0, rtol=0)
    assert data["meta"]["aliases"]["unaligned_latents"] == "aligned_latents"


def test_checkpoint_decoder_is_loaded_and_verified(files):
    """The checkpoint's own 1024 R decoder loads strictly (transform dropped); not run."""
    m = instyle.load(files["restyle_checkpoint"])
    assert m.decoder.size == 1024 and m.decoder.config.conv_kernel == 1 and m.decoder.config.use_radial_filters
    assert m.decoder.config.mapping_layers == 2 and m.n_styles == 16


def test_landmarks_transform_helper(data):
    for i in range(data["landmarks_aligned"].shape[0]):
        aligned = data["landmarks_aligned"][i]
        t = stylegan_transform(aligned, data["landmarks_unaligned"][i],
                               lambda angle, a=aligned: np.rint(rotate_points_like_pil(a, angle, 1024, 1024)))
        np.testing.assert_allclose(t.rotation_angle, data["landmarks_rotation_angle"][i], atol=1e-9)
        np.testing.assert_allclose(t.translation, data["landmarks_translation"][i], atol=1e-12)
        np.testing.assert_allclose(t.transform, data["landmarks_forward_transform"][i], atol=1e-12)
        np.testing.assert_allclose(t.inverse_transform, data["landmarks_transform"][i], atol=1e-12)


def test_encode_command_with_replacement_generator(files, data, sg3_dir, tmp_path):
    """``instyle encode -c CKPT --generator GEN``: the saved latents are the last iteration's."""
    from instyle.cli.main import main

    names = data["meta"]["images"]
    faces = sg3_dir.parents[1] / "data" / "faces" / "ffhq_aligned"
    if not all((faces / n).is_file() for n in names):
        pytest.skip(f"needs the fixture photos {names} in {faces}")
    out = tmp_path / "out"
    rc = main(["encode", *[str(faces / n) for n in names], "-c", str(files["restyle_checkpoint"]),
               "--generator", str(files["generator_checkpoint"]), "-o", str(out), "--save-latents", "--device", "cpu"])
    assert rc == 0
    for i, n in enumerate(names):
        w = np.load(out / "latents" / f"{Path(n).stem}.npy")
        diff = float(np.abs(w.astype(np.float64) - data["aligned_latents"][-1, i]).max())
        assert diff <= TOLERANCE, f"{n}: max abs diff {diff:.3g}"
    assert json.loads((out / "summary.json").read_text())["iterations"] == data["meta"]["n_iters_per_batch"]


def test_encode_unaligned_command(files, sg3_dir, tmp_path):
    """``instyle encode --unaligned``: aligned encode, transform saved with the latent."""
    pytest.importorskip("dlib")
    from instyle.cli.main import main
    from instyle.inference.latents import load_latent

    photos = sorted((sg3_dir.parents[1] / "data" / "faces" / "unaligned").glob("*.jpg"))[:1]
    if not photos:
        pytest.skip("needs a photo in shared/data/faces/unaligned")
    out = tmp_path / "out"
    rc = main(["encode", str(photos[0]), "-c", str(files["restyle_checkpoint"]), "--generator",
               str(files["generator_checkpoint"]), "-o", str(out), "--unaligned", "--device", "cpu"])
    if rc == 2:
        pytest.skip("the face tools (dlib models) are not installed")
    assert rc == 0
    w, _, meta = load_latent(out / "latents" / f"{photos[0].stem}.npz")
    assert w.shape[-2:] == (16, 512)
    t = np.array(meta["transform"])
    np.testing.assert_allclose(t @ np.array(meta["forward_transform"]), np.eye(3), atol=1e-9)
    assert (out / f"{photos[0].stem}.png").is_file()


def test_restyle_e4e_checkpoint_format_loads(sg3_dir, data, tmp_path):
    """The ReStyle-e4e coach format (+ global_step, optimizer, best_val_loss; encoder type
    ProgressiveBackboneEncoder) loads as the e4e variant over the same generator."""
    record = json.loads((sg3_dir / f"{CONFIG}_fingerprints.json").read_text())
    args = _writer_args(record["restyle_checkpoint"])
    path = run_checkpoint_writer(sg3_dir / "make_checkpoint.py", sg3_dir / args["--keys"], int(args["--seed"]),
                                 tmp_path / "e4e3.pt", "--project", "restyle_e4e3")
    m = instyle.load(path)
    assert m.config.variant == "e4e" and m.config.encoder.type == "ProgressiveBackboneEncoder"
    assert m.n_styles == 16 and m.default_iterations == data["meta"]["n_iters_per_batch"]
    del m
    path.unlink()
