"""The dlib identity metric separates same-person from different-person pairs."""

from __future__ import annotations

import csv

import pytest
from PIL import Image

from instyle.evaluation.identity import ALIGNED_FACE_BOX, DlibIdentity, cosine, roc_auc

from .conftest import shared_path

pytest.importorskip("dlib")


@pytest.mark.slow
def test_dlib_descriptors_separate_identities_on_unaligned_pairs():
    folder = shared_path("data", "faces", "unaligned")
    metric = DlibIdentity(face_box="detect")
    rows = list(csv.DictReader((folder / "pairs.csv").open()))
    names = sorted({r["file_a"] for r in rows} | {r["file_b"] for r in rows})
    desc = {}
    for name in names:
        image = Image.open(folder / name).convert("RGB")
        box = metric.find_box(image)
        assert box is not None, f"no face found in {name}"
        desc[name] = metric.descriptor(image, box)
    scores = [cosine(desc[r["file_a"]], desc[r["file_b"]]) for r in rows]
    labels = [int(r["same_person"]) for r in rows]
    auc = roc_auc(scores, labels)
    print(f"dlib identity ROC-AUC on {len(rows)} pairs: {auc:.3f}")  # noqa: T201
    assert auc >= 0.95
    same = [s for s, y in zip(scores, labels) if y]
    other = [s for s, y in zip(scores, labels) if not y]
    assert min(same) > sum(other) / len(other)


def test_aligned_box_scores_copies_and_unrecognisable_outputs():
    image = Image.open(shared_path("data", "faces", "ffhq_aligned", "0143.png")).convert("RGB").resize((256, 256))
    metric = DlibIdentity(face_box="aligned")
    assert metric.find_box(image) == pytest.approx(tuple(v * 256 for v in ALIGNED_FACE_BOX))
    flat = Image.new("RGB", image.size, (128, 128, 128))
    same, blank = metric.similarity([image, flat], [image, image])
    assert same == pytest.approx(1.0, abs=1e-9)
    assert blank is not None and blank < 0.95  # no face in the output still gets a (low) number
    assert "dlib" in metric.name and "aligned" in metric.name
