"""One data layout across prepare -> train -> evaluate: ``DIR/target/`` (+ ``DIR/source/``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from instyle.data.folders import LayoutError, data_layout
from instyle.evaluation.report import find_samples


def _img(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(path)


def _prepared(root, n=3):
    """What ``instyle prepare`` writes: target/<k>.png and source/<k>.png."""
    for k in range(n):
        _img(root / "target" / f"{k}.png", 200)
        _img(root / "source" / f"{k}.png", 20)
    return root


def test_evaluate_scores_a_prepared_folder_against_its_targets(tmp_path):
    """It used to index target/ and source/ alike: 6 'targets' for 3 pairs, the degraded inputs
    scored as ground truth."""
    samples, problems = find_samples(_prepared(tmp_path / "data"))
    assert problems == []
    assert [s.name for s in samples] == ["0", "1", "2"]
    assert all(s.target.parent.name == "target" and s.input.parent.name == "source" for s in samples)


def test_layouts(tmp_path):
    d = _prepared(tmp_path / "p")
    assert data_layout(d) == (d / "target", d / "source")
    photos = tmp_path / "photos"
    _img(photos / "a.png", 1)
    assert data_layout(photos) == (photos, None)
    inv = tmp_path / "inv"  # prepare for inversion writes target/ only
    _img(inv / "target" / "a.png", 1)
    assert data_layout(inv) == (inv / "target", None)
    old = tmp_path / "old"  # the older evaluate layout keeps working
    _img(old / "targets" / "a.png", 1)
    _img(old / "inputs" / "a.png", 2)
    assert data_layout(old) == (old / "targets", old / "inputs")


def test_a_folder_that_does_not_fit_names_the_expected_layout(tmp_path):
    d = tmp_path / "half"
    _img(d / "source" / "a.png", 1)
    with pytest.raises(LayoutError, match=r"source/ but no target/.*target/ \(\+ source/, paired"):
        data_layout(d)
    with pytest.raises(LayoutError, match="target/"):
        find_samples(d)


def test_train_reads_a_prepared_folder_as_target_and_source(tmp_path):
    from instyle.training import TrainConfig
    from instyle.training.loop import resolve_data_layout

    d = _prepared(tmp_path / "train")
    v = _prepared(tmp_path / "val")
    cfg = resolve_data_layout(TrainConfig(train_target=str(d), val_target=str(v)))
    assert (cfg.train_target, cfg.train_source) == (str(d / "target"), str(d / "source"))
    assert (cfg.val_target, cfg.val_source) == (str(v / "target"), str(v / "source"))
    photos = tmp_path / "photos"
    _img(photos / "a.png", 1)
    assert resolve_data_layout(TrainConfig(train_target=str(photos))).train_target == str(photos)
