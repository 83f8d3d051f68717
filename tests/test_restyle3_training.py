"""Training ReStyle-pSp / ReStyle-e4e over StyleGAN3 (``family='restyle3'``) on a tiny random
StyleGAN3 generator: config checks naming the bad value, the coach's iterations, learning on
the generator's own samples, checkpoints loadable as ``restyle3`` models and the e4e extras
(learning and bit-exact resume after SIGKILL: tests/test_family_contract.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import instyle
from instyle.data import PairedImageDataset
from instyle.models.restyle3 import ReStyle3
from instyle.training import TrainConfig, build_model, build_objective, prepare_for_training, train
from instyle.training.presets import get_preset
from instyle.training.step import family_forward_loss
from instyle.training.toy import toy_config
from instyle.utils.config import ConfigError
from instyle.utils.image import tensor_to_pil
from tests.helpers import tiny_sg3_generator
from tests.test_training import ir_se50_file  # noqa: F401, F811 (a fixture)


def write_sg3_toy(root: Path) -> dict[str, Path]:
    """A frozen random 32 px StyleGAN3 generator (own format) and its own samples under ``root``."""
    g = tiny_sg3_generator(img_resolution=32)
    g.save_pretrained(root / "gen")
    for split, n, seed in (("train", 32, 1), ("val", 8, 2)):
        (root / split).mkdir()
        z = torch.randn(n, g.config.z_dim, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            w = g.mapping.w_avg.lerp(g.mapping(z, None), 0.7)
            images = g.synthesize(w)
        scale = images.abs().amax().clamp(min=1.0)
        for i, image in enumerate(images / scale):
            tensor_to_pil(image).save(root / split / f"{i:05d}.png")
    return {"gen": root / "gen", "train": root / "train", "val": root / "val"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A frozen random 32 px StyleGAN3 generator (own format) and its own samples."""
    return write_sg3_toy(tmp_path_factory.mktemp("sg3toy"))


def sg3_config(toy, **overrides) -> TrainConfig:
    base = dict(family="restyle3", encoder_type="BackboneEncoder", n_iters_per_batch=3, val_target=str(toy["val"]),
                batch_size=4, test_batch_size=4)
    return toy_config(toy["gen"], toy["train"], **{**base, **overrides})


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"encoder_type": "GradualStyleEncoder"},
         r"encoder_type='GradualStyleEncoder' is not accepted; choose one of \['BackboneEncoder', "
         r"'ProgressiveBackboneEncoder'\]"),
        ({"n_iters_per_batch": 0}, r"n_iters_per_batch.*0"),
        ({"start_from_latent_avg": False}, r"start_from_latent_avg=true \(got False\)"),
        ({"w_discriminator_lambda": 0.1}, r"'w_discriminator_lambda': 0.1.*ProgressiveBackboneEncoder"),
        ({"encoder_type": "ProgressiveBackboneEncoder", "w_discriminator_lambda": -1.0},
         r"w_discriminator_lambda=-1.0 must be >= 0"),
        ({"encoder_type": "ProgressiveBackboneEncoder", "progressive_start": 0}, r"progressive_start.*0"),
    ],
)
def test_restyle3_config_validation_names_the_bad_value(toy, changes, match):
    with pytest.raises(ConfigError, match=match):
        sg3_config(toy, **changes)


def test_a_stylegan2_generator_is_refused(toy, tmp_path):
    from instyle.training.toy import save_toy_generator, toy_generator

    save_toy_generator(toy_generator(size=32, style_dim=16), tmp_path / "sg2")
    with pytest.raises(ConfigError, match=r"stylegan_weights=.*sg2: a Generator.*StyleGAN3"):
        build_model(sg3_config(toy, stylegan_weights=str(tmp_path / "sg2")))


def test_presets_are_the_original_recipe():
    for name, enc in (("restyle3_inversion", "BackboneEncoder"), ("restyle3_e4e_inversion", "ProgressiveBackboneEncoder")):
        cfg = TrainConfig.from_dict(dict(get_preset(name).overrides))
        assert (cfg.family, cfg.encoder_type, cfg.n_iters_per_batch) == ("restyle3", enc, 3)
        o = cfg.objective
        assert (o.lpips_lambda, o.l2_lambda, o.id_lambda, o.w_norm_lambda, o.moco_lambda) == (0.8, 1, 0.1, 0, 0)
        assert cfg.objective.start_from_latent_avg and cfg.batch_size == 2
    e4e = TrainConfig.from_dict(dict(get_preset("restyle3_e4e_inversion").overrides))
    assert (e4e.w_discriminator_lambda, e4e.use_w_pool, e4e.w_pool_size) == (0.1, True, 50)


def test_model_starts_from_the_generator_and_its_w_avg(toy):
    model = build_model(sg3_config(toy))
    g = instyle.load_generator(toy["gen"])
    assert isinstance(model, ReStyle3) and model.config.encoder.input_nc == 6 and model.n_styles == g.n_latent
    assert torch.equal(model.latent_avg, g.mapping.w_avg) and model.latent_avg.shape == (8,)
    sd, gd = model.decoder.state_dict(), g.state_dict()
    assert all(torch.equal(sd[k], gd[k]) for k in gd)


def test_ir_se50_initialisation_puts_the_rgb_filters_in_the_first_three_channels(toy, ir_se50_file):  # noqa: F811
    path, sd = ir_se50_file
    cfg = sg3_config(toy, encoder_init="ir_se50", ir_se50_weights=str(path), encoder_widths=None, encoder_units=None)
    model = build_model(cfg)
    enc = model.encoder.state_dict()
    assert torch.equal(enc["body.5.res_layer.1.weight"], sd["body.5.res_layer.1.weight"])
    w = enc["input_layer.0.weight"]
    assert w.shape[1] == 6 and torch.equal(w[:, :3], sd["input_layer.0.weight"])
    assert 0.8 < float(w[:, 3:].std()) < 1.2  # torch.randn, as the original
    assert torch.equal(w, build_model(cfg).encoder.state_dict()["input_layer.0.weight"])  # seeded


def test_each_iteration_backpropagates_its_own_loss_on_detached_feedback(toy):
    """Gradients after the forward = the sum of each iteration's gradient computed alone from
    the previous iteration's (detached) latent and image, as the coach's loop."""
    cfg = sg3_config(toy, lpips_lambda=0.0, w_norm_lambda=0.1)
    model = build_model(cfg).eval()
    prepare_for_training(model, cfg)  # the generator frozen
    objective = build_objective(cfg.objective)
    x = PairedImageDataset.from_folders(toy["train"], image_size=32)[0]["x"][None].repeat(2, 1, 1, 1)
    out = family_forward_loss(model, objective, model.latent_avg, x, x, 3, randomize_noise=False)
    got = {n: p.grad.clone() for n, p in model.encoder.named_parameters()}
    assert all(p.grad is None for p in model.decoder.parameters())
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        feedback = model.average_image()[None].expand(2, -1, -1, -1)
        latent = model.latent_avg.repeat(2, 1, 1)
    for _ in range(3):
        codes = model.encoder(torch.cat([x, feedback], 1)) + latent
        y_hat = torch.nn.functional.adaptive_avg_pool2d(model.decoder.synthesis(codes), 32)
        loss = ((y_hat - x) ** 2).mean() + 0.1 * (codes - model.latent_avg).norm(2, dim=(1, 2)).mean()
        loss.backward()
        feedback, latent = y_hat.detach(), codes.detach()
    torch.testing.assert_close(out.latent, latent)
    for n, p in model.encoder.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-7, msg=n)


def test_fine_tuning_reads_a_runs_architecture_and_a_bare_generator_state_dict(toy, tmp_path):
    """Fine-tuning from a run's checkpoint reads its architecture; a bare ``.pt`` generator
    state dict serves as ``stylegan_weights``. (Learning and resume: tests/test_family_contract.py.)"""
    from instyle.training import fine_tuning_base

    cfg = sg3_config(toy, val_target=None)
    trained = build_model(cfg)
    trained.save_pretrained(tmp_path / "latest")
    base = fine_tuning_base(str(tmp_path / "latest"), {})
    assert (base["family"], base["encoder_type"], base["image_size"], base["n_iters_per_batch"]) == (
        "restyle3", "BackboneEncoder", 32, 3)
    torch.save(instyle.load_generator(toy["gen"]).state_dict(), tmp_path / "sg3.pt")
    cfg2 = cfg.replace(**{k: v for k, v in base.items() if k in ("family", "encoder_type", "image_size")},
                       checkpoint_path=str(tmp_path / "latest"), stylegan_weights=str(tmp_path / "sg3.pt"))
    tuned = build_model(cfg2)
    assert isinstance(tuned, ReStyle3)
    assert all(torch.equal(a, b) for a, b in zip(tuned.encoder.state_dict().values(), trained.encoder.state_dict().values()))
    assert tuned.training and tuned.output_size == 32


# --------------------------------------------------------------------------- ReStyle-e4e


def e4e_config(toy, **overrides) -> TrainConfig:
    base = dict(encoder_type="ProgressiveBackboneEncoder", w_discriminator_lambda=0.1, use_w_pool=True, w_pool_size=6,
                d_reg_every=2, progressive_start=3, progressive_step_every=1)
    return sg3_config(toy, **{**base, **overrides})


def test_e4e_step_trains_the_discriminator_on_mapping_ws_and_raw_encoder_codes(toy, tmp_path):
    from instyle.training.restyle3 import Restyle3E4ETraining

    cfg = e4e_config(toy, max_steps=4, val_target=None, board_interval=1)
    model = build_model(cfg)
    e4e = Restyle3E4ETraining(cfg, model.n_styles, 8, torch.device("cpu"))
    x = PairedImageDataset.from_folders(toy["train"], image_size=32)[0]["x"][None].repeat(2, 1, 1, 1)
    model.encoder.set_progressive_stage(e4e.stage(0))
    assert e4e.stage(0) == 0 and e4e.stage(3) == 1 and e4e.stage(5) == 3
    real, fake = e4e._real_and_fake(model, x)
    assert real.shape == fake.shape == (2, 8)
    with torch.no_grad():
        avg = model.average_image()[None].expand(2, -1, -1, -1)
        raw = model.encoder(torch.cat([x, avg], 1))[:, 0]  # no latent_avg added, as the coach
    assert torch.equal(e4e.fake_pool.codes[0], raw[0]) and torch.equal(fake, raw)
    before = [p.clone() for p in e4e.discriminator.parameters()]
    terms = e4e.train_discriminator(model, x, step=2)
    assert set(terms) == {"discriminator_loss", "discriminator_r1_loss"}
    assert all(not torch.equal(a, b) for a, b in zip(before, e4e.discriminator.parameters()))
    result = train(cfg, tmp_path / "run")
    assert {"encoder_discriminator_loss", "total_delta_loss", "discriminator_loss"} <= set(result.last_terms)
    assert isinstance(instyle.load(tmp_path / "run" / "checkpoints" / "latest"), ReStyle3)


def test_cli_trains_the_preset_from_a_stylegan3_generator(toy, tmp_path):
    """``instyle train --preset restyle3_e4e_inversion --generator DIR``: the preset's recipe with
    tiny-model overrides, checkpoints loadable as restyle3 models."""
    from tests.test_training import cli

    sets = ["image_size=32", "encoder_init=random", "encoder_widths=[8,16,32,64]", "encoder_units=[1,1,1,1]",
            "id_lambda=0", "random_loss_networks=true", "max_steps=2", "workers=0", "test_workers=0", "device=cpu",
            "progress=false", "val_interval=2"]
    argv = ["--preset", "restyle3_e4e_inversion", "--generator", str(toy["gen"]), "--train", str(toy["train"]),
            "--val", str(toy["val"]), "--out", str(tmp_path / "run")]
    assert cli(argv + [x for s in sets for x in ("--set", s)]) == 0
    saved = TrainConfig.load(tmp_path / "run" / "config.json")
    assert (saved.family, saved.encoder_type, saved.w_discriminator_lambda, saved.n_iters_per_batch) == (
        "restyle3", "ProgressiveBackboneEncoder", 0.1, 3)
    for name in ("latest", "best"):
        model = instyle.load(tmp_path / "run" / "checkpoints" / name)
        assert isinstance(model, ReStyle3) and model.config.variant == "e4e"
    # fine-tuning: --checkpoint alone gives a valid restyle3 config; a contradicting key is named
    from instyle.training import fine_tuning_base

    latest = str(tmp_path / "run" / "checkpoints" / "latest")
    base = fine_tuning_base(latest, {})
    tuned = TrainConfig.from_dict({**base, "checkpoint_path": latest, "train_target": str(toy["train"]),
                                   "encoder_init": "random", "id_lambda": 0.0})
    assert (tuned.family, tuned.encoder_type, tuned.image_size) == ("restyle3", "ProgressiveBackboneEncoder", 32)
    with pytest.raises(ConfigError, match=r"encoder_type: config 'BackboneEncoder' vs checkpoint "
                                          r"'ProgressiveBackboneEncoder'"):
        build_model(tuned.replace(encoder_type="BackboneEncoder", w_discriminator_lambda=0.0))


def test_several_processes_are_refused_for_restyle_e4e_naming_the_count(toy):
    from instyle.training.restyle3 import restyle3_extras

    cfg = e4e_config(toy)
    with pytest.raises(ConfigError, match=r"ProgressiveBackboneEncoder.*got 2 processes"):
        restyle3_extras(cfg, build_model(cfg), None, torch.device("cpu"), 2)
    psp = sg3_config(toy)  # ReStyle-pSp trains under torchrun (test_ddp_... below)
    assert restyle3_extras(psp, build_model(psp), "objective", torch.device("cpu"), 2) == (None, "objective")


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_on_the_combined_batch(toy, tmp_path):
    """ReStyle-pSp over StyleGAN3 under torchrun (gloo, CPU): 2 processes of batch 4 end where
    1 process of batch 8 does (every iteration's forward runs through the DDP wrapper, so each
    of the 3 backward passes is all-reduced)."""
    from tests.test_training import single_and_two_processes

    common = dict(max_steps=3, optim_name="ranger", learning_rate=1e-2, freeze_batchnorm=True, flip=True,
                  val_target=None, lpips_lambda=0.0)
    one, two = single_and_two_processes(sg3_config(toy, batch_size=8, **common), sg3_config(toy, batch_size=4, **common),
                                        tmp_path)
    start = build_model(sg3_config(toy, batch_size=8, **common)).state_dict()
    moved = max((one[k] - start[k]).abs().max().item() for k in one if k.startswith("encoder."))
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    print(f"largest update {moved:.3g}, largest 1- vs 2-process difference {diff:.3g}")
    assert moved > 1e-3
    assert diff < 1e-5, f"2-process result differs by {diff} (update size {moved})"


def test_training_continues_from_a_published_style_checkpoint(toy, tmp_path):
    """A stylegan3-editing ``.pt`` (state_dict + opts with PosixPaths + latent_avg, the coach's
    last transforms in the decoder) as ``--checkpoint``: its encoder, decoder and latent_avg
    are the start, and the run saves a restyle3 folder."""
    import pathlib
    from collections import OrderedDict

    from instyle.training import fine_tuning_base

    start = build_model(sg3_config(toy, encoder_widths=(4, 6, 8, 10), seed=3))
    sd = OrderedDict(start.state_dict())
    avg = sd.pop("latent_avg")
    sd["decoder.synthesis.input.transform"] = torch.eye(3).repeat(2, 1, 1)
    opts = {"exp_dir": pathlib.PosixPath("experiments/run"), "encoder_type": "BackboneEncoder", "input_nc": 6,
            "n_iters_per_batch": 3, "stylegan_weights": pathlib.PosixPath("pretrained/sg3-r-ffhq-1024.pt")}
    torch.save({"state_dict": sd, "opts": opts, "latent_avg": avg}, tmp_path / "restyle_pSp_ffhq.pt")
    base = fine_tuning_base(str(tmp_path / "restyle_pSp_ffhq.pt"), {})
    cfg = sg3_config(toy, **{k: base[k] for k in ("family", "encoder_type", "image_size", "n_iters_per_batch")},
                     checkpoint_path=str(tmp_path / "restyle_pSp_ffhq.pt"), max_steps=2, val_target=None)
    model = build_model(cfg)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.state_dict().items())
    train(cfg, tmp_path / "run")
    assert isinstance(instyle.load(tmp_path / "run" / "checkpoints" / "latest"), ReStyle3)


def test_average_input_is_kept_while_the_generator_is_frozen(toy):
    from instyle.training.restyle3 import average_input

    cfg = sg3_config(toy)
    model = build_model(cfg)
    prepare_for_training(model, cfg)
    a = average_input(model, 32)
    assert average_input(model, 32) is a
    torch.testing.assert_close(a[0], model.average_image(), atol=0, rtol=0)
    with torch.no_grad():
        model.latent_avg.add_(0.5)  # a new latent_avg: recomputed
    b = average_input(model, 32)
    assert b is not a and not torch.equal(a, b)
    model.decoder.requires_grad_(True)  # a trained generator: never kept
    assert average_input(model, 32) is not average_input(model, 32)
