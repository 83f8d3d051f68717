"""Regression tests for issue 13 section 1: the web demo reads only what was uploaded to it,
never hangs on special files, bounds every layer range before expanding it, cleans up its
temporary folders and reports random-weight models however they were given."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from instyle.cli.main import main
from instyle.inference.mixing import parse_latent_mask
from instyle.models import get_config
from instyle.models.init import random_psp

# Gradio's own queue code trips a pandas deprecation warning; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sec") / "tiny"
    random_psp(get_config("tiny"), seed=1, latent_samples=256).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    p = tmp_path_factory.mktemp("photo") / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
    return p


# ----------------------------------------------------------------------------- layer ranges


def test_huge_layer_range_is_refused_before_it_is_expanded():
    # A million-layer range used to be expanded into a list (the 10^9 one was OOM-killed);
    # the bound check must come first, so refusing costs no memory.
    for spec in ("0-1000000", "3-1000000000", "1000000000", "0,2,5-999999999999"):
        tracemalloc.start()
        try:
            with pytest.raises(ValueError, match=r"outside the model's 0-based style layers \[0, 9\]") as e:
                parse_latent_mask(spec, n_styles=10)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 200_000, f"{spec!r}: {peak} bytes allocated before refusing"
        assert spec.split(",")[-1] in str(e.value)  # names the bad part


def test_layer_ranges_without_a_model_are_still_bounded():
    with pytest.raises(ValueError, match="at most"):
        parse_latent_mask("0-1000000000")
    assert parse_latent_mask("0-3") == [0, 1, 2, 3]


@pytest.mark.parametrize("spec", ["1_0", "٣", "+3", "3-+5", "-3"])
def test_layer_indices_are_plain_ascii_digits(spec):
    with pytest.raises(ValueError, match="not an index or a range"):
        parse_latent_mask(spec, n_styles=10)


def test_cli_latent_mask_and_layers_refuse_huge_ranges(tiny_dir, photo, tmp_path, capsys):
    rc = main(["mix", str(photo), "-c", str(tiny_dir), "-o", str(tmp_path / "m"), "--latent-mask", "0-1000000000"])
    err = capsys.readouterr().err
    assert rc == 2 and "0-1000000000" in err and "[0, 9]" in err and "Traceback" not in err
    rc = main(["edit", "combine", str(photo), str(photo), "-c", str(tiny_dir), "-o", str(tmp_path / "e"),
               "--layers", "0-1000000000"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "0-1000000000" in err and "[0, 9]" in err and "Traceback" not in err
