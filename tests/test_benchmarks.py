"""The benchmark scripts run end to end on a tiny config (smoke test: no timings asserted)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run():
    return _load("run")


def test_training_rows_compare_the_original_loop_with_instyle(run, single_thread):
    rows = run.train_rows("tiny", batch=2, reps=1, device=torch.device("cpu"))
    assert [r.variant for r in rows] == ["original loop", "instyle"]
    for r in rows:
        assert r.part == "train step" and r.batch == 2
        assert math.isfinite(r.seconds) and r.seconds > 0 and r.gflop_per_image > 0
    assert rows[0].speedup == 1.0 and rows[1].speedup > 0


def test_original_loop_leaves_the_model_as_training_wants_it(run, single_thread, monkeypatch):
    """The baseline turns decoder / ArcFace gradients on for its own steps only."""
    seen = {}
    real = run.random_psp

    def spy(*args, **kw):
        seen["model"] = model = real(*args, **kw)
        return model

    monkeypatch.setattr(run, "random_psp", spy)
    rows = run.train_rows("tiny", batch=1, reps=1, device=torch.device("cpu"))
    model = seen["model"]
    assert len(rows) == 2
    assert not any(p.requires_grad for p in model.decoder.parameters())
    assert all(p.grad is None for p in model.decoder.parameters())
    assert all(p.requires_grad for p in model.encoder.parameters())


@pytest.mark.slow  # times every row of the tiny config: ~45 s on 2 shared cores
def test_table_prints_every_row(run, single_thread, capsys):
    rc = run.main(["--configs", "tiny", "--batches", "1", "--reps", "1", "--no-gpu", "--train", "tiny",
                   "--train-batch", "1", "--precisions", "bf16"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = [line for line in out.splitlines() if line.startswith("tiny ")]
    parts = [(line.split("|")[1].strip(), line.split("|")[5].strip()) for line in lines]
    for part in ("encoder", "generator", "pSp"):
        assert (part, "reference") in parts and (part, "fast") in parts
    assert ("train step", "original loop") in parts and ("train step", "instyle") in parts
    bf16 = [line for line in lines if line.split("|")[3].strip() == "bfloat16"]
    assert len(bf16) == 1 and "PSNR" in bf16[0], out
    assert "matmul" in out and "speed-up" in out


def test_channels_last_on_the_whole_model_is_the_defect_the_gpu_rows_had(single_thread):
    """The old GPU section made the whole pSp channels-last: the generator's 5-D modulated
    weights refuse it. Only the encoder may be channels-last."""
    from instyle.models import get_config
    from instyle.models.init import random_psp

    model = random_psp(get_config("tiny"), seed=0, latent_samples=16)
    with pytest.raises(RuntimeError, match="rank 4"):
        model.to(memory_format=torch.channels_last)
    model.encoder.to(memory_format=torch.channels_last)  # fine


def test_precision_rows_run_the_gpu_code_path_on_cpu(run, single_thread, monkeypatch):
    """The rows the GPU section prints (reference, fast fp32, bf16/fp16 eager and compiled,
    batch-1 latency), on CPU; ``torch.compile`` is recorded instead of run (slow on CPU)."""
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append((type(self).__name__, kw)))
    rows = run.precision_rows("tiny", [2], 1, torch.device("cpu"), ("bf16", "fp16"), compile=True, latency=True)
    got = [(r.dtype, r.batch, r.variant) for r in rows]
    assert got == [
        ("float32", 2, "reference"), ("float32", 2, "fast"), ("float32", 1, "fast"),
        ("bfloat16", 2, "fast"), ("bfloat16", 1, "fast"), ("float16", 2, "fast"), ("float16", 1, "fast"),
        ("bfloat16", 2, "fast+compile"), ("bfloat16", 1, "fast+compile"),
        ("float16", 2, "fast+compile"), ("float16", 1, "fast+compile"),
    ]  # fmt: skip
    for r in rows:
        assert math.isfinite(r.seconds) and r.seconds > 0 and "failed" not in r.note, r
    for r in rows[3:]:
        if r.batch == 2:
            assert float(r.note.split("PSNR ")[1].split(" dB")[0]) >= 40, r.note
    assert [name for name, _ in compiled].count("Generator") == 2



@pytest.fixture(scope="module")
def device_check():
    return _load("device_check")


def test_device_check_time_guard_and_failures_are_reported(device_check, tmp_path):
    """Sections past the budget are skipped, a failing one is recorded, and the report on
    disk is complete after every section (a killed run keeps what it had)."""
    plan = device_check.make_plan(dry_run=True, budget_s=30)
    report = device_check.Report(tmp_path, plan)
    device_check.run_section(report, "environment", lambda: ({"x": 1}, "| a |"))
    assert json.loads((tmp_path / "report.json").read_text())["sections"][0]["status"] == "done"

    def broken():
        raise RuntimeError("CUDA out of memory (simulated)")

    device_check.run_section(report, "training", broken)
    device_check.run_section(report, "conformance", lambda: ({}, ""))  # estimate 40 s > budget 30 s
    sections = json.loads((tmp_path / "report.json").read_text())["sections"]
    assert [(s["name"], s["status"]) for s in sections] == [
        ("environment", "done"), ("training", "failed"), ("conformance", "skipped")]
    assert "out of memory" in sections[1]["result"]["error"]
    md = (tmp_path / "report.md").read_text()
    assert "## conformance -- skipped" in md and "budget 30 s" in md


@pytest.mark.slow
def test_device_check_dry_run_produces_the_report(device_check, shared_dir, tmp_path):
    """``device_check.sh --dry-run``: every section on CPU with the tiny config (~3 min on a
    busy 2-core machine), from fixtures prepared out of ../shared."""
    fixtures = tmp_path / "fixtures"
    assert device_check.main(["prepare", "--shared", str(shared_dir), "--dest", str(fixtures)]) == 0
    out = tmp_path / "report"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), str(out), "--dry-run",
                           "--fixtures", str(fixtures)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    status = {s["name"]: s["status"] for s in report["sections"]}
    assert status == dict.fromkeys(
        ["environment", "conformance", "inference batch 2", "latency (compile mode default)",
         "PSNR on the conformance inputs", "encode", "training", "backends"], "done"), status
    result = {s["name"]: s["result"] for s in report["sections"]}
    assert max(result["conformance"]["B"].values()) <= 1e-4
    rows = result["inference batch 2"]["rows"]
    assert {(r["dtype"], r["path"]) for r in rows} >= {("float32", "reference"), ("float32", "fast"),
                                                       ("bfloat16", "fast"), ("bfloat16", "fast+compile")}
    assert all(float(r["note"].split("PSNR ")[1].split(" dB")[0]) >= 40 for r in rows if r["dtype"] == "bfloat16"
               and r["batch"] == 2)
    assert result["PSNR on the conformance inputs"]["bf16"] >= 40
    assert result["encode"]["returncode"] == 0 and result["encode"]["summary"]["encoded"] == 8
    assert [r["path"] for r in result["training"]["rows"]] == ["original loop", "instyle fp32", "instyle bf16"]
    assert "# instyle device check (DRY RUN" in (out / "report.md").read_text()
    backends = result["backends"]["rows"]
    assert backends and all(r["max_abs_diff"] < 1e-3 for r in backends if "bf16" not in r["runtime"])


def test_family_rows_put_sfe_beside_restyle_and_hyperstyle(single_thread):
    families = _load("families")
    rows = families.rows("tiny", reps=1)
    assert [r.family for r in rows] == ["ReStyle (pSp, 5 it.)", "HyperStyle (5 it.)", "SFE"]
    assert rows[0].ratio == 1.0 and all(math.isfinite(r.seconds) and r.seconds > 0 for r in rows)


def test_device_check_without_fixtures_prepares_them_or_says_how(device_check, tmp_path, monkeypatch):
    """A dry run prepares its fixtures from ../shared; without ../shared the sections that
    read them are skipped with the command to run (not failed with a subprocess error)."""
    ran = []
    monkeypatch.setattr(device_check, "run_section", lambda report, name, fn: ran.append(name))
    plan = device_check.make_plan(dry_run=True, budget_s=600)
    report = device_check.run_all(tmp_path / "r1", plan, tmp_path / "none", shared=tmp_path / "no_shared")
    skipped = {s["name"]: s["markdown"] for s in report.sections if s["status"] == "skipped"}
    assert set(skipped) == {"conformance", "PSNR on the conformance inputs", "encode"}
    assert all("benchmarks/device_check.sh prepare" in md for md in skipped.values())
    assert "conformance" not in ran and "environment" in ran and "backends" in ran

    shared = tmp_path / "shared"
    for f in device_check.CONFORMANCE_FILES:
        (shared / "conformance" / f).parent.mkdir(parents=True, exist_ok=True)
        (shared / "conformance" / f).write_text("x")
    (shared / "data" / "faces").mkdir(parents=True)
    (shared / "data" / "faces" / "a.png").write_bytes(b"png")
    ran.clear()
    report = device_check.run_all(tmp_path / "r2", plan, tmp_path / "fx", shared=shared)
    assert [s["name"] for s in report.sections] == ["prepare fixtures"]
    assert "conformance" in ran and "encode" in ran and device_check.missing_fixtures(tmp_path / "fx") == []
