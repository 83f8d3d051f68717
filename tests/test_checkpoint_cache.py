"""The session cache behind ``run_checkpoint_writer``: one write per content key."""

from __future__ import annotations

from pathlib import Path

from .helpers import run_checkpoint_writer

WRITER = """
import argparse, pathlib
p = argparse.ArgumentParser()
p.add_argument("--keys"); p.add_argument("--seed"); p.add_argument("--out"); p.add_argument("--flag", default="")
a = p.parse_args()
log = pathlib.Path(a.keys).with_suffix(".log")
log.write_text(log.read_text() + "x" if log.exists() else "x")
pathlib.Path(a.out).write_text(f"{a.seed} {a.flag}")
"""


def test_same_content_key_is_written_once_and_linked(tmp_path: Path):
    script, keys = tmp_path / "make_checkpoint.py", tmp_path / "k.txt"
    script.write_text(WRITER)
    keys.write_text("a [1] float32\n")
    first = run_checkpoint_writer(script, keys, 1, tmp_path / "one.pt")
    again = run_checkpoint_writer(script, keys, 1, tmp_path / "two.pt")
    assert again.read_text() == first.read_text() == "1 "
    assert (tmp_path / "k.log").read_text() == "x"  # the writer ran once
    # Another seed, other arguments or an edited key list are other content: written again.
    assert run_checkpoint_writer(script, keys, 2, tmp_path / "three.pt").read_text() == "2 "
    assert run_checkpoint_writer(script, keys, 1, tmp_path / "four.pt", "--flag", "v").read_text() == "1 v"
    keys.write_text("a [2] float32\n")
    run_checkpoint_writer(script, keys, 1, tmp_path / "five.pt")
    assert (tmp_path / "k.log").read_text() == "xxxx"
    # A caller may delete its copy (training conformance does): the others stay readable.
    first.unlink()
    assert again.read_text() == "1 "
