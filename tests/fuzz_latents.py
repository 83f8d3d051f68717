"""Fuzz driver for ``tests/test_latent_fuzz.py`` (run in its own process, under a memory cap).

Writes a few hundred randomly corrupted latent, offset and edit files derived from real
ones (truncation, byte flips, header edits, dtype edits, forged zip sizes, member renames
and swaps, NaN/Inf values, bad ``meta``), runs ``instyle mix``, ``interpolate`` and ``edit``
on them in-process with good inputs beside them, and prints one JSON line:
``{"failures": [...], "peak_rss_mb": N, "files": N, "runs": N}``.

Usage: ``python -m tests.fuzz_latents WORKDIR SEED N_FILES``
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import resource
import struct
import sys
import time
import traceback
import zipfile
from pathlib import Path

import numpy as np


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _zip(members: dict[str, bytes], deflate: bool) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n: z.read(n) for n in z.namelist()}


# ----------------------------------------------------------------------------- mutations of one .npy


def _edit_header(rng: random.Random, npy: bytes) -> bytes:
    """Change the shape, dtype or order in the header (keeping its length field honest or not)."""
    end = 10 + int.from_bytes(npy[8:10], "little")
    header, body = npy[10:end].decode("latin1"), npy[end:]
    choice = rng.randrange(4)
    if choice == 0:
        huge = rng.choice([1 << 40, 1 << 62, 10**12, 0, 7, 99999999])
        header = re.sub(r"\((\d+)", lambda m: f"({huge}", header, count=1)
    elif choice == 1:
        header = re.sub(r"'descr': '[^']*'", f"'descr': '{rng.choice(['|O', '<U8', '<f8', '>f4', '<c8', '|b1', '<i8', '|V4'])}'", header)
    elif choice == 2:
        header = header.replace("False", "True")
    else:
        header = re.sub(r"\([^)]*\)", rng.choice(["()", "(3,)", "(1, 2, 3, 4, 5, 6, 7, 8, 9)", "(-1, 5)"]), header, count=1)
    raw = header.encode("latin1")
    length = len(raw) if rng.random() < 0.8 else rng.randrange(0, 65536)
    return npy[:8] + length.to_bytes(2, "little") + raw + body


def _nan(rng: random.Random, npy: bytes) -> bytes:
    end = 10 + int.from_bytes(npy[8:10], "little")
    if len(npy) - end < 4:
        return npy
    pos = end + 4 * rng.randrange((len(npy) - end) // 4)
    value = struct.pack("<f", rng.choice([float("nan"), float("inf"), -float("inf")]))
    return npy[:pos] + value + npy[pos + 4 :]


def _flip(rng: random.Random, data: bytes, head: bool) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        pos = rng.randrange(min(len(out), 128) if head else len(out))
        out[pos] = rng.randrange(256)
    return bytes(out)


def mutate_npy(rng: random.Random, npy: bytes) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return npy[: rng.randrange(len(npy))]
    if kind == 1:
        return _flip(rng, npy, head=rng.random() < 0.7)
    if kind == 2:
        return _edit_header(rng, npy)
    if kind == 3:
        return _nan(rng, npy)
    return npy + bytes(rng.randrange(1, 64))  # trailing garbage


# ----------------------------------------------------------------------------- mutations of one .npz


def _forge_sizes(rng: random.Random, data: bytes) -> bytes:
    """Write a huge uncompressed size into the central directory (and local headers)."""
    out = bytearray(data)
    huge = rng.choice([0xFFFFFFF0, 1 << 31, 10**9])
    for sig, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
        for m in re.finditer(re.escape(sig), bytes(out)):
            if rng.random() < 0.7:
                out[m.start() + offset : m.start() + offset + 4] = struct.pack("<I", huge)
    return bytes(out)


def mutate_npz(rng: random.Random, data: bytes) -> bytes:
    kind = rng.randrange(8)
    if kind == 0:
        return data[: rng.randrange(len(data))]
    if kind == 1:
        return _flip(rng, data, head=False)
    if kind == 2:
        return _forge_sizes(rng, data)
    members = _members(data)
    names = sorted(members)
    deflate = rng.random() < 0.5
    if kind == 3:  # one member's .npy corrupted
        name = rng.choice(names)
        members[name] = mutate_npy(rng, members[name])
    elif kind == 4:  # renames: odd layer names, swapped members
        name = rng.choice(names)
        new = rng.choice(["noise_x.npy", "delta_-1.npy", "delta_99999999999.npy", "noise_70.npy", "meta.npy", "w_plus.npy",
                          "delta_0.npy", "x/../../w_plus.npy", "noise_1.npy", "readme.txt"])
        members[new] = members.pop(name)
    elif kind == 5:  # meta replaced
        members["meta.npy"] = rng.choice([
            _npy(np.asarray("{not json")), _npy(np.arange(3)), _npy(np.asarray(json.dumps([1, 2]))),
            _npy(np.asarray("[" * 5000 + "]" * 5000)), _npy(np.asarray(json.dumps({"n_weight_layers": 10**12}))),
            _npy(np.asarray(json.dumps({"n_weight_layers": -3}))), _npy(np.asarray(json.dumps({"n_weight_layers": "x"}))),
            _npy(np.asarray(json.dumps({"n_weight_layers": 2}))),
        ])
    elif kind == 6:  # a pickled member
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        members[rng.choice(names)] = buf.getvalue()
    else:  # a big compressible member: a bomb (built once per archive and member: deflating 18 MB takes time)
        name = rng.choice(names)
        key = (data, name)
        if key not in _BOMBS:
            members[name] = _npy(np.zeros((7000, 10, 64), np.float32))
            _BOMBS[key] = _zip(members, True)
        return _BOMBS[key]
    return _zip(members, deflate)


_BOMBS: dict[tuple[bytes, str], bytes] = {}


# ----------------------------------------------------------------------------- the run


def _originals(root: Path) -> dict[str, bytes]:
    """Real files as instyle writes them (tiny pSp: 10 styles of 64)."""
    import torch

    from instyle.inference.latents import save_latent

    g = torch.Generator().manual_seed(0)
    save_latent(root / "o.npy", torch.randn(10, 64, generator=g) * 0.3)
    save_latent(root / "o.npz", torch.randn(2, 10, 64, generator=g) * 0.3,
                noise=[torch.randn(1, 1, 4, 4, generator=g), torch.randn(1, 1, 8, 8, generator=g)], meta={"source": "x"})
    deltas = [None] * 6
    deltas[1], deltas[4] = torch.randn(1, 4, 4, 3, 3, generator=g), torch.randn(1, 4, 4, 1, 1, generator=g)
    save_latent(root / "off.npz", torch.randn(10, 64, generator=g) * 0.3, weights_deltas=deltas)
    np.save(root / "dir.npy", np.ones(64, np.float32))
    np.savez(root / "sefa.npz", directions=np.eye(4, 64, dtype=np.float32), layers=np.arange(3), kind=np.asarray("sefa"),
             meta=np.asarray(json.dumps({"mode": "styles"})))
    return {name: (root / name).read_bytes() for name in ("o.npy", "o.npz", "off.npz", "dir.npy", "sefa.npz")}


def _run(argv: list[str], failures: list, what: str) -> str:
    from instyle.cli.main import main

    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except BaseException as e:  # what a user would see as a traceback
            failures.append(f"{what}: {type(e).__name__}: {str(e)[:200]}\n{traceback.format_exc()[-1500:]}")
            return err.getvalue()
    text = err.getvalue()
    print(f"{time.perf_counter() - start:6.2f} s  {what}", file=sys.stderr)
    if "Traceback" in text or rc not in (0, 1, 2):
        failures.append(f"{what}: rc {rc}: {text[-1500:]}")
    for line in text.splitlines():
        if not line.isprintable() and "\r" not in line:  # tqdm's carriage returns aside
            failures.append(f"{what}: a line with control characters: {line[:300]!r}")
    return text


def main() -> None:
    work, seed, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    import torch

    torch.set_num_threads(1)
    from instyle.models import get_config
    from instyle.models.init import random_psp

    model_dir = work / "model"
    random_psp(get_config("tiny"), seed=1, latent_samples=64).save_pretrained(model_dir)
    originals = _originals(work)
    rng = random.Random(seed)
    bad = work / "bad"
    bad.mkdir()
    latents, directions = [], []
    for i in range(n):
        name = rng.choice(sorted(originals))
        data = originals[name]
        data = mutate_npz(rng, data) if name.endswith(".npz") else mutate_npy(rng, data)
        path = bad / f"f{i:04d}_{name}"
        path.write_bytes(data)
        (directions if name in ("dir.npy", "sefa.npz") else latents).append(path)
    good = [work / "good_a.npy", work / "good_b.npy"]
    for p in good:
        p.write_bytes(originals["o.npy"])
    failures: list[str] = []
    model = ["-c", str(model_dir), "--device", "cpu", "--batch-size", "8"]
    runs = 0
    chunk = 40
    for start in range(0, len(latents), chunk):
        files = [str(p) for p in latents[start : start + chunk]]
        inputs = [str(good[0]), *files, str(good[1])]
        for cmd, argv in (
            ("mix", ["mix", *inputs, *model, "-n", "1", "--out", str(work / f"mix{start}")]),
            ("interpolate", ["interpolate", *inputs, *model, "--steps", "2", "--animation", "none", "--grid-frames", "2",
                             "--out", str(work / f"int{start}")]),
            ("edit", ["edit", "direction", *inputs, *model, "--direction", str(work / "dir.npy"), "--strengths=0",
                      "--out", str(work / f"edit{start}")]),
        ):
            err = _run(argv, failures, f"{cmd} on {files[0]}..{files[-1]}")
            runs += 1
            for f in files:
                if sum(f in line for line in err.splitlines()) > 1:
                    failures.append(f"{cmd}: more than one line about {f}")
            out = work / f"{'int' if cmd == 'interpolate' else cmd}{start}"
            done = {p.name for p in out.rglob("*")}
            if cmd == "mix" and not {"good_a_0.png", "good_b_0.png"} <= done:
                failures.append(f"mix {start}: the good inputs were not processed: {err[-800:]}")
            if cmd == "edit" and not {"good_a", "good_b"} <= done:
                failures.append(f"edit {start}: the good inputs were not processed: {err[-800:]}")
            if cmd == "interpolate" and "frame_0000.png" not in done:
                failures.append(f"interpolate {start}: no frames: {err[-800:]}")
    for p in directions:  # a bad edit file is fatal to its command: one line, exit code 2
        err = _run(["edit", "direction", str(good[0]), *model, "--direction", str(p), "--strengths=0",
                    "--out", str(work / "edit_dir")], failures, f"edit --direction {p.name}")
        runs += 1
        if err.count("\n") > 2:
            failures.append(f"edit --direction {p.name}: {err.count(chr(10))} lines: {err[-800:]}")
    print(json.dumps({"failures": failures, "peak_rss_mb": _peak_rss_mb(), "files": n, "runs": runs}))


def _peak_rss_mb() -> float:
    """This process's own peak RSS. ``ru_maxrss`` survives ``exec``: started by a fork of a
    large pytest process (the test's ``preexec_fn`` forces a fork), it reports the parent's
    size (3.2 GB in a full run), so Linux's ``VmHWM``, which ``exec`` resets, is read first."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


if __name__ == "__main__":
    main()
