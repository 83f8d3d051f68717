"""One contract every registered model family keeps (timm / diffusers style: one test body
over the registry). A new family adds its tiny model factory to ``FACTORIES`` and gets these
tests; ``test_every_family_has_a_factory`` fails until it does.

The contract: own-format round trip, encode -> one :class:`Encoding` -> render (shapes,
determinism, slicing, file round trip), iterations, precision settings, a description.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import instyle
from instyle.errors import InstyleError
from instyle.inference.encoding import Encoding, encode, load_encoding, render, save_encoding
from instyle.inference.preprocess import input_preview, prepare_input
from instyle.models.family import InversionModel, family_of, get_family, list_families
from instyle.models.runtime import model_precision, set_runtime
from instyle.utils.config import ConfigError
from tests.test_families import tiny as tiny_psp_family
from tests.test_hyperstyle import tiny_model as tiny_hyperstyle
from tests.test_sfe import tiny_model as tiny_sfe
from tests.test_stylegan3 import tiny_restyle3

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
