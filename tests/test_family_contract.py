"""One contract every registered model family keeps (timm / diffusers style: one test body
over the registry). A new family adds its tiny model factory to ``FACTORIES`` and gets these
tests; ``test_every_family_has_a_factory`` fails until it does.

The contract: own-format round trip, encode -> one :class:`Encoding` -> render (shapes,
determinism, slicing, file round trip), iterations, precision settings, a description.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import instyle
from instyle.data import PairedImageDataset
from instyle.errors import InstyleError
from instyle.inference.encoding import Encoding, encode, load_encoding, render, save_encoding
from instyle.inference.preprocess import input_preview, prepare_input
from instyle.models.family import InversionModel, family_of, get_family, list_families
from instyle.models.runtime import model_precision, set_runtime
from instyle.training import TrainConfig, build_model, train
from instyle.training.toy import save_toy_generator, toy_config, toy_generator, write_toy_dataset
from instyle.utils.config import ConfigError
from tests.test_families import tiny as tiny_psp_family
from tests.test_hyperstyle import tiny_model as tiny_hyperstyle
from tests.test_sfe import tiny_model as tiny_sfe
from tests.test_stylegan3 import tiny_restyle3
from tests.test_training import _weights, kill_and_resume

#: family -> a tiny model of it (eval, deterministic).
FACTORIES = {
    "psp": lambda: tiny_psp_family("psp", "GradualStyleEncoder"),
    "e4e": lambda: tiny_psp_family("e4e", "Encoder4Editing"),
    "restyle": lambda: tiny_psp_family("restyle", "ProgressiveBackboneEncoder"),
    "hyperstyle": lambda: tiny_hyperstyle(size=64),
    "sfe": tiny_sfe,
    "restyle3": tiny_restyle3,
}
_MODELS: dict[str, torch.nn.Module] = {}


def model_of(name: str):
    if name not in _MODELS:
        _MODELS[name] = FACTORIES[name]().eval()
    return _MODELS[name]


def toy_images(model, n: int = 2, seed: int = 1) -> torch.Tensor:
    """``n`` inputs of the shape the model takes, in [-1, 1]."""
    h, w = model.input_hw
    return torch.rand(n, model.input_nc, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_every_family_has_a_factory():
    assert set(FACTORIES) == set(list_families())


@pytest.fixture(params=sorted(FACTORIES))
def family(request) -> str:
    return request.param


def test_the_model_speaks_the_protocol_and_names_its_family(family):
    model = model_of(family)
    record = family_of(model)
    assert record.name == family and isinstance(model, record.model_class) and isinstance(model.config, record.config_class)
    assert isinstance(model, InversionModel)
    assert record.title in model.describe()
    assert model.output_size > 0 and model.n_styles > 0 and model.input_nc in (1, 3)
    spec = model.input_spec
    assert spec == model.config.input_spec and (spec.channels, spec.width) == (model.input_nc, model.input_size)


def test_inputs_are_prepared_from_the_input_spec(family):
    """The shared input tools ask the model (or its config) for its InputSpec, nothing else."""
    model = model_of(family)
    spec = model.input_spec
    photo = Image.new("RGB", (70, 50), (200, 120, 40))
    x = prepare_input(photo, model)
    assert x.shape == (spec.channels, spec.height, spec.width)
    assert torch.equal(x, prepare_input(photo, model.config)) and torch.equal(x, prepare_input(photo, spec))
    assert input_preview(x, model).size == (spec.width, spec.height)


def test_encode_render_shapes_and_determinism(family):
    model = model_of(family)
    x = toy_images(model)
    with torch.no_grad():
        enc = encode(model, x)
        again = encode(model, x)
        images = render(model, enc)
        pooled = render(model, enc, resize=True)
    assert isinstance(enc, Encoding) and enc.family == family and len(enc) == 2
    assert enc.latents.shape[:2] == (2, model.n_styles)
    assert torch.equal(enc.latents, again.latents)
    assert images.shape[:2] == (2, 3) and images.shape[-1] == model.output_size
    assert pooled.shape[-1] == model.pooled_size
    assert torch.isfinite(images).all()
    with torch.no_grad():
        assert torch.equal(render(model, enc), images)  # stored noise: rendering is deterministic
        one = render(model, enc[1])  # slicing keeps each image's own extra
    torch.testing.assert_close(one[0], images[1], atol=1e-4, rtol=0)  # batch size may move a value by ~1e-6


def test_encodings_blend_and_join(family):
    model = model_of(family)
    with torch.no_grad():
        enc = encode(model, toy_images(model))
        ends = Encoding.blend([enc[0], enc[1]], torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
        both = Encoding.cat([enc[0], enc[1]])
    assert len(ends) == 3 and len(both) == 2
    torch.testing.assert_close(ends.latents[:2], enc.latents)
    torch.testing.assert_close(both.latents, enc.latents)
    torch.testing.assert_close(ends.latents[2], (enc.latents[0] + enc.latents[1]) / 2)
    with torch.no_grad():
        torch.testing.assert_close(render(model, ends[:2]), render(model, enc), atol=1e-4, rtol=0)


def test_own_format_round_trip(family, tmp_path):
    model = model_of(family)
    model.save_pretrained(tmp_path / "m")
    loaded = instyle.load(tmp_path / "m")
    assert type(loaded) is type(model) and family_of(loaded).name == family
    assert loaded.config.to_dict() == model.config.to_dict()
    x = toy_images(model)
    with torch.no_grad():
        assert torch.equal(render(loaded, encode(loaded, x)), render(model, encode(model, x)))


def test_config_dict_round_trip_and_bad_keys(family):
    """The generic serialisation: every field to JSON and back, nested configs included; an
    unknown key, top-level or nested, is refused naming it, its section and the accepted keys."""
    config = model_of(family).config
    data = json.loads(json.dumps(config.to_dict()))
    assert type(config).from_dict(data) == config
    with pytest.raises(ConfigError, match=r"unknown \w+ key\(s\) \['bogus'\]; accepted keys: \[.*'generator'"):
        type(config).from_dict({**data, "bogus": 1})
    with pytest.raises(ConfigError, match=r"unknown \w+\.generator key\(s\) \['bogus'\]; accepted keys: \["):
        type(config).from_dict({**data, "generator": {**data["generator"], "bogus": 1}})
    with pytest.raises(ConfigError, match=r"\w+\.generator\.\w+=.* must be"):
        type(config).from_dict({**data, "generator": {**data["generator"], next(iter(data["generator"])): "x"}})


def test_encoding_file_round_trip(family, tmp_path):
    model = model_of(family)
    with torch.no_grad():
        enc = encode(model, toy_images(model, n=1))
        path = save_encoding(tmp_path / "e.npz", enc)
        back = load_encoding(path, model)
        assert back.family == family and back.latents.shape[-2:] == enc.latents.shape[-2:]
        torch.testing.assert_close(render(model, back), render(model, enc), atol=1e-5, rtol=0)


def test_iterations(family):
    model, record = model_of(family), get_family(family)
    x = toy_images(model, n=1)
    with torch.no_grad():
        if record.iterative:
            one, two = encode(model, x, iterations=1), encode(model, x, iterations=2)
            assert not torch.equal(render(model, one), render(model, two))  # each step refines (latent or extra)
            assert record.iterations(None, model) == model.default_iterations >= 1
        else:
            assert record.iterations(7, model) == 1
            with pytest.raises(ValueError, match="iterations"):
                encode(model, x, iterations=2)


def test_precision_settings(family):
    model, record = model_of(family), get_family(family)
    if record.runtime:
        choice = set_runtime(model, "bf16")
        try:
            assert model_precision(model) == choice.name
        finally:
            set_runtime(model, "fp32")
        assert model_precision(model) == "fp32"
    else:
        with pytest.raises(InstyleError, match="fp32"):
            set_runtime(model, "bf16")
        assert model_precision(model) == "fp32"


# ----------------------------------------------------------------------------- training (slow)
#
# Every family trains on the common trainer: it learns its toy problem, and a run SIGKILLed
# after its first checkpoint and resumed ends bit-exact with the uninterrupted one. A new
# family adds a ``TrainCase`` (its tiny config, which toy problem, the options whose state must
# cross the kill). Each family's own DDP test lives with its training tests (one torchrun is
# ~15 s; restyle3 refuses several processes).


@dataclass(frozen=True)
class TrainCase:
    """``toy``: the toy problem (:func:`toy_problem`); ``config``: the family's tiny config on
    top of :func:`instyle.training.toy.toy_config`; ``learn``: the learning run (its L2 of
    ``iterations``-step reconstructions of the training images falls ``>= ratio`` x);
    ``resume``: the SIGKILL run (``n`` steps, checkpoints every ``n // 3``); ``check``:
    ``(start model, trained model, toy) -> None``, the family's own assertions on what it learnt."""

    toy: str
    config: dict
    learn: dict
    resume: dict
    iterations: int | None = None
    ratio: float = 5.0
    n: int = 12
    check: Callable[..., None] | None = None


def _recovers_w(start, end, toy) -> None:
    """The W encoder's codes of the training images move towards the true ones: distance
    <= 0.7x the start, cosine of the deviations from the average latent > 0.5 (starts near 0)."""
    x = torch.stack([PairedImageDataset.from_folders(toy["train"], image_size=32)[i]["x"] for i in range(32)])
    w_true = torch.load(toy["train"] / "latents.pt")[:32]

    def stats(model) -> tuple[float, float]:
        with torch.no_grad():
            w, avg = model.eval().encode(x)[:, 0], model.latent_avg[0]
        return (w - w_true).norm(dim=1).mean().item(), F.cosine_similarity(w - avg, w_true - avg, dim=1).mean().item()

    (d0, c0), (d1, c1) = stats(start), stats(end)
    print(f"w distance {d0:.3f} -> {d1:.3f}, cosine {c0:.2f} -> {c1:.2f}")
    assert d1 < 0.7 * d0 and abs(c0) < 0.3 and c1 > 0.5


#: Ranger's Lookahead (period 6) spans the kill in every resume run.
_RESUME = dict(optim_name="ranger", learning_rate=1e-2)
TRAIN_CASES = {
    # the W encoder: 150 steps, Adam 2e-3; L2 falls >= 4x and the codes approach the true w
    "psp": TrainCase("sg2", dict(encoder_type="BackboneEncoderUsingLastLayerIntoW", learn_in_w=True),
                     learn=dict(max_steps=150, learning_rate=2e-3),
                     resume=dict(randomize_noise=True, flip=True, batch_size=4, val=True), ratio=4.0, check=_recovers_w),
    # with the discriminator (R1 every 4 steps, pools) and the progressive stages + delta terms
    # (L2 falls 5.4x in 160 steps, 5.05x in 200, 6.9x in 250: not monotone, so 250)
    "e4e": TrainCase("sg2", dict(encoder_type="Encoder4Editing", w_discriminator_lambda=0.1, use_w_pool=True,
                                 d_reg_every=4, progressive_start=20, progressive_step_every=10),
                     learn=dict(max_steps=250, learning_rate=2e-3),
                     resume=dict(randomize_noise=True, batch_size=4, progressive_start=3, progressive_step_every=2,
                                 w_pool_size=6, val=True)),
    # 2 iterations per batch, each with its own backward
    "restyle": TrainCase("sg2", dict(encoder_type="BackboneEncoder", n_iters_per_batch=2),
                         learn=dict(max_steps=250, learning_rate=2e-3),
                         resume=dict(randomize_noise=True, batch_size=4, val=True), iterations=2),
    # the 9 shared 3x3 layers tuned over a frozen random W-encoder, 2 iterations, 64 px (L2 falls
    # 5.5x in 130 steps, 6.6x in 160, 9.5x in 250)
    "hyperstyle": TrainCase("sg2_64", dict(encoder_type="SharedWeightsHyperNetResNet", image_size=64, n_iters_per_batch=2,
                                           encoder_widths=(8, 16, 16, 32), layers_to_tune="0,2,3,5,6,8,9,11,12",
                                           batch_size=4),
                            learn=dict(max_steps=160, learning_rate=3e-3, batch_size=8),
                            resume=dict(flip=True, val=True, val_max_batches=1), iterations=2, n=8),
    # phase 1 (the inverter) on feature 3 with the feature-scale ramp; resume: the discriminator
    # starts at step 3, R1 every 5 steps
    "sfe": TrainCase("sg2", dict(sfe_feature_index=3, encoder_widths=(8, 8, 16, 16), feat_rec_lambda=0.01,
                                 sfe_feature_scale_steps=20),
                     learn=dict(max_steps=100),
                     resume=dict(batch_size=4, sfe_feature_scale_steps=8, adv_lambda=0.1, d_start_step=3, d_reg_every=5,
                                 board_interval=1)),
    # ReStyle-pSp over StyleGAN3 learns (L2 only, 3 iterations); ReStyle-e4e resumes (its
    # discriminator, pools and stages)
    "restyle3": TrainCase("sg3", dict(encoder_type="BackboneEncoder", n_iters_per_batch=3, batch_size=4, test_batch_size=4),
                          learn=dict(max_steps=150, learning_rate=3e-3, lpips_lambda=0.0, batch_size=8),
                          resume=dict(encoder_type="ProgressiveBackboneEncoder", w_discriminator_lambda=0.1,
                                      use_w_pool=True, w_pool_size=6, d_reg_every=2, progressive_start=3,
                                      progressive_step_every=1, val=True), iterations=3),
}


def test_every_family_has_a_train_case():
    assert set(TRAIN_CASES) == set(list_families())


@pytest.fixture(scope="session")
def toy_problem(tmp_path_factory):
    """``kind`` -> the folders of a toy problem, written once per session: ``sg2`` a frozen
    random 32 px StyleGAN2 (16-D w) and 64 of its images (+ 16 for validation); ``sg2_64`` a
    64 px one, 32 + 8 images and a random W-encoder (HyperStyle); ``sg3`` a 32 px StyleGAN3,
    32 + 8 images."""
    made: dict[str, dict] = {}

    def make(kind: str) -> dict:
        if kind in made:
            return made[kind]
        root = tmp_path_factory.mktemp(kind)
        out = {"gen": root / "gen", "train": root / "train", "val": root / "val"}
        if kind == "sg3":
            from tests.test_restyle3_training import write_sg3_toy

            write_sg3_toy(root)
        else:
            size, n = (32, 64) if kind == "sg2" else (64, 32)
            g = toy_generator(size=size, style_dim=16, seed=0, **({} if size == 32 else {"channels": 16}))
            save_toy_generator(g, out["gen"])
            write_toy_dataset(g, out["train"], n, seed=1)
            write_toy_dataset(g, out["val"], n // 4, seed=2)
            if kind == "sg2_64":
                w_cfg = toy_config(out["gen"], out["train"], image_size=64, learn_in_w=True,
                                   encoder_type="BackboneEncoderUsingLastLayerIntoW")
                build_model(w_cfg).save_pretrained(root / "w")
                out["w"] = root / "w"
        made[kind] = out
        return out

    return make


def train_config(family: str, toy: dict, **overrides) -> TrainConfig:
    """``family``'s tiny config on ``toy`` (``val=True``: with the validation images)."""
    case = TRAIN_CASES[family]
    val = overrides.pop("val", False)
    extra = {"w_encoder_checkpoint_path": str(toy["w"])} if "w" in toy else {}
    return toy_config(toy["gen"], toy["train"], family=family, val_target=str(toy["val"]) if val else None,
                      **{**extra, **case.config, **overrides})


@pytest.fixture(params=sorted(TRAIN_CASES))
def train_family(request) -> str:
    return request.param


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")
def test_training_learns_the_toy_problem(train_family, toy_problem, tmp_path):
    """The L2 of the saved model's reconstructions (encode -> render) of the training images
    falls >= 5x (psp: 4x), and the checkpoint loads as a model of the family."""
    case = TRAIN_CASES[train_family]
    toy = toy_problem(case.toy)
    cfg = train_config(train_family, toy, board_interval=50, **case.learn)
    ds = PairedImageDataset.from_folders(toy["train"], image_size=cfg.image_size)
    x = torch.stack([ds[i]["x"] for i in range(min(len(ds), 32))])

    def l2(model) -> float:
        with torch.no_grad():
            y = render(model, encode(model.eval(), x, iterations=case.iterations))
            return float(((F.adaptive_avg_pool2d(y, x.shape[-1]) - x) ** 2).mean())

    first = build_model(cfg)
    start = l2(first)
    train(cfg, tmp_path / "run")
    model = instyle.load(tmp_path / "run" / "checkpoints" / "latest")
    assert family_of(model).name == train_family
    end = l2(model)
    print(f"{train_family}: L2 start {start:.4f} end {end:.4f} ratio {start / end:.2f}")
    assert end < start / case.ratio
    if case.check is not None:
        case.check(first, model, toy)


def _same(a, b, where: str = "state") -> list[str]:
    """Where two nested training states differ (tensors bit-exact)."""
    if isinstance(a, torch.Tensor):
        return [] if isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b) else [where]
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return [where]
        return [d for k in a for d in _same(a[k], b[k], f"{where}[{k!r}]")]
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return [where]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _same(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


@pytest.mark.slow
def test_training_resumes_bit_exact_after_sigkill(train_family, toy_problem, tmp_path):
    """Killed after its first checkpoint and resumed, a run ends with the weights, metrics and
    the whole training state (optimizer, RNG, the family's extra state such as a
    discriminator and its pools) of the uninterrupted run; the weights moved."""
    case = TRAIN_CASES[train_family]
    toy = toy_problem(case.toy)
    n = case.n
    cfg = train_config(train_family, toy, **{"max_steps": n, "save_interval": n // 3, "val_interval": n // 3,
                                             **_RESUME, **case.resume})
    full, killed = kill_and_resume(cfg, tmp_path, n)
    a, start = _weights(full), build_model(cfg).state_dict()
    assert any(not torch.equal(start[k], a[k]) for k in a)
    sa, sb = (torch.load(r / "checkpoints" / "latest" / "training_state.pt", weights_only=True) for r in (full, killed))
    assert not _same(sa, sb), _same(sa, sb)[:5]
