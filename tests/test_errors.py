"""One error base: every exception instyle defines derives from ``InstyleError``, and the
commands report those in one line while a bug keeps its traceback."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import instyle
from instyle.errors import CheckpointError, InputError, InstyleError, MissingExtraError

#: Modules that need an optional extra to import at all.
OPTIONAL = {"instyle.demo.app": "gradio"}


def _project_exceptions() -> list[type]:
    found = []
    for info in pkgutil.walk_packages(instyle.__path__, "instyle."):
        if info.name in OPTIONAL:
            pytest.importorskip(OPTIONAL[info.name])
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found.append(obj)
    return found


def test_every_project_exception_derives_from_instyle_error():
    found = _project_exceptions()
    names = {cls.__name__ for cls in found}
    # The walk sees the errors of every layer (a regression guard for the walk itself).
    assert {"CheckpointError", "ConfigError", "ImageLoadError", "TaskInputError", "ArchitectureError"} <= names
    assert sorted(cls.__qualname__ for cls in found if not issubclass(cls, InstyleError)) == []


def test_second_bases_kept_where_callers_rely_on_them():
    from instyle.alignment import AlignmentUnavailable
    from instyle.inference.io import ImageLoadError
    from instyle.utils.config import ConfigError

    for cls in (CheckpointError, InputError, ConfigError, ImageLoadError):
        assert issubclass(cls, ValueError)
    assert issubclass(AlignmentUnavailable, RuntimeError)
    assert issubclass(MissingExtraError, ImportError)


def test_unavailable_device_is_a_config_error():
    from instyle.utils.config import ConfigError
    from instyle.utils.device import resolve_device

    with pytest.raises(ConfigError, match="not accepted.*auto"):
        resolve_device("tpu")


def test_train_command_reports_project_errors_but_not_bugs(monkeypatch, tmp_path, capsys):
    from instyle.cli import train as train_cli
    from instyle.cli.main import main
    from instyle.utils.config import ConfigError

    def explained(*a, **k):
        raise ConfigError("image_size=3 must be a power of two")

    def bug(*a, **k):
        raise ValueError("shapes [2, 3] and [2, 4] do not broadcast")

    args = ["train", "--preset", "inversion", "--out", str(tmp_path / "run")]
    monkeypatch.setattr(train_cli, "resolve_config", lambda a: (None, tmp_path / "run"))
    monkeypatch.setattr("instyle.training.train", explained)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "image_size=3" in err and "Traceback" not in err
    monkeypatch.setattr("instyle.training.train", bug)
    with pytest.raises(ValueError, match="do not broadcast"):
        main(args)
