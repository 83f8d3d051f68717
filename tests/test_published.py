"""The one published-checkpoint registry: entries, the loader's hints and ``instyle models``."""

from __future__ import annotations

import json

import pytest

from instyle.errors import CheckpointError
from instyle.interop.published import list_published, published
from instyle.models.family import get_family, list_families


def test_every_entry_names_a_family_and_the_companions_it_takes():
    entries = list_published()
    assert {e.family for e in entries} == {*list_families(), "generator"}  # every family publishes, none unknown
    for e in entries:
        if e.family == "generator":  # generator files (StyleGAN3) other files name as companions
            continue
        family = get_family(e.family)
        assert set(e.companions) <= set(family.companions), e.name
        assert e.url.startswith("https://") and e.output_size in (256, 512, 1024)


@pytest.mark.parametrize(
    "name, words",
    [
        ("hyperstyle_ffhq.pt", ["published hyperstyle checkpoint (faces (FFHQ), 1024px)", "yuval-alaluf/hyperstyle",
                                "faces_w_encoder.pt (w_encoder=)"]),
        ("psp_celebs_sketch_to_face.pt", ["published psp checkpoint", "eladrich/pixel2style2pixel", "task sketch2face"]),
        ("sfe_editor_light.pt", ["StyleFeatureEditor", "e4e_ffhq_encode.pt (e4e=)", "stylegan2-ffhq-config-f.pt"]),
    ],
)
def test_a_missing_published_file_names_its_download_page_and_companions(tmp_path, monkeypatch, name, words):
    import instyle

    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as e:
        instyle.load(name)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_an_unknown_name_gets_no_hint(tmp_path, monkeypatch):
    import instyle

    monkeypatch.setenv("INSTYLE_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as e:
        instyle.load("my_model.pt")
    assert "published" not in str(e.value)
    assert published("my_model.pt") is None


def test_instyle_models_lists_families_and_files(capsys):
    from instyle.cli.main import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list_families():
        assert f"  {name} " in out
    for e in list_published():
        assert e.name in out
    assert main(["models", "--family", "HyperStyle", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["hyperstyle_ffhq.pt", "hyperstyle_cars.pt", "hyperstyle_afhq_wild.pt"]
    assert rows[0]["companions"] == {"w_encoder": "faces_w_encoder.pt"}
    assert main(["models", "--task", "sketch2face"]) == 0
    assert "psp_celebs_sketch_to_face.pt" in capsys.readouterr().out
    assert main(["models", "--family", "nope"]) == 2
    assert "--family='nope': not a model family" in capsys.readouterr().err
