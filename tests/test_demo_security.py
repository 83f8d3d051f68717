"""Regression tests for issue 13 section 1: the web demo reads only what was uploaded to it,
never hangs on special files, bounds every layer range before expanding it, cleans up its
temporary folders and reports random-weight models however they were given."""

from __future__ import annotations

import json
import shutil
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


# ----------------------------------------------------------------------------- random weights travel with the files


def test_random_weights_flag_travels_with_the_model_files(tiny_dir, tmp_path, tiny_psp):
    from instyle.demo import ModelStore
    from instyle.interop import load_psp

    assert json.loads((tiny_dir / "config.json").read_text())["random_weights"] is True
    assert load_psp(tiny_dir).random_weights is True
    store = ModelStore.from_checkpoints([tiny_dir], device="cpu")
    assert store.any_random and store.describe()[0]["random_weights"] is True
    # Re-saving a loaded random model keeps the flag.
    load_psp(tiny_dir).save_pretrained(tmp_path / "again")
    assert load_psp(tmp_path / "again").random_weights is True
    # A model not made by random init, and a file written before the flag existed: not random.
    tiny_psp.save_pretrained(tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["random_weights"] is False
    old = tmp_path / "old"
    shutil.copytree(tiny_dir, old)
    doc = json.loads((old / "config.json").read_text())
    del doc["random_weights"]
    (old / "config.json").write_text(json.dumps(doc))
    assert load_psp(old).random_weights is False
    assert not ModelStore.from_checkpoints([old, tmp_path / "plain"], device="cpu").any_random


def test_page_shows_the_banner_for_a_random_checkpoint(tiny_dir):
    pytest.importorskip("gradio", reason="the web demo needs the demo extra (pip install 'instyle[demo]')")
    from instyle.demo import ModelStore
    from instyle.demo.app import build_demo

    demo = build_demo(ModelStore.from_checkpoints([tiny_dir], device="cpu"))
    banners = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "random-weights-warning"]
    assert len(banners) == 1 and "RANDOM weights" in banners[0].value and "tiny" in banners[0].value
