"""The dlib identity metric separates same-person from different-person pairs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from instyle.evaluation.identity import (
    ALIGNED_FACE_BOX,
    ARCFACE_TEMPLATE_112,
    NO_FACE_IN_OUTPUT,
    NO_FACE_IN_TARGET,
    ArcFaceIdentity,
    DlibIdentity,
    IdentityScore,
    build_identity,
    cosine,
    roc_auc,
)
from instyle.utils.config import ConfigError

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


def _face_and_non_faces():
    image = Image.open(shared_path("data", "faces", "ffhq_aligned", "0143.png")).convert("RGB").resize((256, 256))
    flat = Image.new("RGB", image.size, (128, 128, 128))
    texture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    return image, flat, texture


def test_aligned_box_scores_copies_and_excludes_outputs_without_a_face():
    """Defect: in the aligned box a random texture scored 0.87 (inside the different-people
    range); an output where dlib finds no face now has no value, and says why."""
    image, flat, texture = _face_and_non_faces()
    unchecked = DlibIdentity(face_box="aligned", check_output=False)
    assert unchecked.find_box(image) == pytest.approx(tuple(v * 256 for v in ALIGNED_FACE_BOX))
    assert unchecked.similarity([texture], [image])[0] > 0.8  # the number that described a non-face

    metric = DlibIdentity(face_box="aligned")
    same, blank, noise = metric.scores([image, flat, texture], [image, image, image])
    assert same == IdentityScore(pytest.approx(1.0, abs=1e-9), None)
    assert blank == IdentityScore(None, NO_FACE_IN_OUTPUT) and noise == IdentityScore(None, NO_FACE_IN_OUTPUT)
    assert metric.similarity([texture, image], [image, image])[0] is None
    assert "dlib" in metric.name and "aligned" in metric.name and "excluded" in metric.name


def test_evaluate_counts_outputs_without_a_face(tmp_path):
    """The report states how many outputs had no face, excludes them, and says so in report.md."""
    from instyle.evaluation.report import evaluate, load_report

    image, flat, texture = _face_and_non_faces()
    data, preds = tmp_path / "data", tmp_path / "preds"
    data.mkdir(), preds.mkdir()
    for name, pred in (("a", image), ("b", texture), ("c", flat)):
        image.save(data / f"{name}.png")
        pred.save(preds / f"{name}.png")
    report = evaluate(None, data, predictions_dir=preds, out_dir=tmp_path / "rep", device="cpu")
    assert report["identity_excluded"] == {NO_FACE_IN_OUTPUT: 2}
    assert report["metrics"]["identity"]["n"] == 1
    assert report["metrics"]["identity"]["mean"] == pytest.approx(1.0, abs=1e-9)
    rows = {r["name"]: r for r in load_report(tmp_path / "rep")["per_image"]}
    assert rows["b"]["identity"] is None and rows["b"]["identity_missing"] == NO_FACE_IN_OUTPUT
    assert "identity: no face in output for 2 of 3 images; excluded from the mean (n = 1)" in (
        tmp_path / "rep" / "report.md"
    ).read_text()
    assert "no face in output" in (tmp_path / "rep" / "per_image.csv").read_text()


class _Landmarks:
    """A stand-in for MTCNN: the ArcFace template's points (scaled to the image) on images
    brighter than mid-grey on average, no face on darker ones."""

    def __init__(self):
        self.calls = 0

    def detect(self, image, landmarks=True):
        self.calls += 1
        if np.asarray(image).mean() < 100:
            return None, None, None
        points = ARCFACE_TEMPLATE_112 * image.size[0] / 112
        return np.zeros((1, 4)), np.ones(1), points[None]


@pytest.fixture(scope="module")
def arcface_weights(tmp_path_factory):
    import torch

    from instyle.models.encoders import Backbone

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("arcface") / "model_ir_se50.pth"
    torch.save(Backbone(112, 50, "ir_se").state_dict(), path)
    return path


def test_arcface_aligns_each_image_and_excludes_pairs_without_a_face(arcface_weights):
    """As calc_id_loss_parallel.py: landmarks on both images, a pair with no face in either skipped."""
    metric = ArcFaceIdentity(arcface_weights, mtcnn=_Landmarks())
    face = Image.fromarray(np.random.default_rng(1).integers(110, 255, (128, 128, 3), dtype=np.uint8))
    dark = Image.new("RGB", (128, 128), (20, 20, 20))
    same, no_output, no_target = metric.scores([face, dark, face], [face, face, dark])
    assert same.value == pytest.approx(1.0, abs=1e-6) and same.missing is None
    assert no_output == IdentityScore(None, NO_FACE_IN_OUTPUT)
    assert no_target == IdentityScore(None, NO_FACE_IN_TARGET)
    assert metric.mtcnn.calls == 5  # target then output; no output detection without a target face
    assert "each image" in metric.name and "excluded" in metric.name
    assert "not checked" in ArcFaceIdentity(arcface_weights, use_mtcnn=False).name


def test_identity_spec_arcface_prefix(arcface_weights, tmp_path):
    metric = build_identity(f"arcface:{arcface_weights}")
    assert isinstance(metric, ArcFaceIdentity) and metric.weights == str(arcface_weights)
    with pytest.raises(ConfigError, match="arcface:PATH"):
        build_identity("arcface:")


def test_arcface_with_facenet_mtcnn_excludes_a_texture(arcface_weights):
    """The paper's crop with the real MTCNN (facenet-pytorch ships its weights in the wheel)."""
    pytest.importorskip("facenet_pytorch")
    image, flat, texture = _face_and_non_faces()
    metric = ArcFaceIdentity(arcface_weights)
    assert "MTCNN" in metric.name and "no MTCNN" not in metric.name
    same, noise = metric.scores([image, texture], [image, image])
    assert same.value == pytest.approx(1.0, abs=1e-6)
    assert noise == IdentityScore(None, NO_FACE_IN_OUTPUT)
