"""Small helpers shared by several test modules (not fixtures)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A syntactically valid PNG whose header claims ``width x height`` (no real pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


def rgb(size=(40, 30), seed=0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def read_key_list(path) -> list[tuple[str, tuple[int, ...], str]]:
    """Rows ``(name, shape, dtype)`` of a shared ``keys/*.txt`` file (``name [d0,d1] dtype``)."""
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape, dtype = line.split()
            dims = shape.strip("[]")
            rows.append((name, tuple(int(d) for d in dims.split(",")) if dims else (), dtype))
    return rows


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app, port: int, timeout: float = 60.0):
    """Run an ASGI ``app`` (the demo's) with uvicorn on 127.0.0.1:``port`` in a daemon thread;
    yields its URL once it answers, stops it on exit."""
    import uvicorn

    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail(f"the demo server did not start within {timeout:.0f} s")
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        srv.should_exit = True
        thread.join(10)


#: Checkpoints written in this test session, by content key (writer script, key list, seed,
#: extra arguments) -> the first file written. The writers are deterministic, so a second
#: request for the same key gets a hard link to that file instead of another 0.1-1.4 GB write.
_WRITTEN: dict[str, Path] = {}


def _writer_key(script: Path, keys: Path, seed: int, extra: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for part in (Path(script).read_bytes(), Path(keys).read_bytes(), str(seed).encode(), "\0".join(extra).encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def run_checkpoint_writer(script: Path, keys: Path, seed: int, out: Path, *extra: str) -> Path:
    """Run a conformance folder's own ``make_checkpoint.py`` (key list + seed -> ``out``);
    the calling test fails with the writer's error output when it fails.

    Content-addressed within the session: the same script, key list, seed and arguments are
    written once; later calls link ``out`` to that file (its callers may unlink ``out``)."""
    out = Path(out)
    key = _writer_key(script, keys, seed, extra)
    first = _WRITTEN.get(key)
    if first is not None and first.is_file():
        if out != first:
            with contextlib.suppress(FileNotFoundError):
                out.unlink()
            try:
                os.link(first, out)
            except OSError:  # another file system
                shutil.copyfile(first, out)
        return out
    cmd = [sys.executable, str(script), "--keys", str(keys), "--seed", str(seed), "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"{script.name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    _WRITTEN[key] = out
    return out


def checkpoint_writes() -> int:
    """How many distinct checkpoints this session has written (for the cache's own test)."""
    return len(_WRITTEN)


#: A tiny StyleGAN3 architecture (16 px, 4 layers, 8-d latents); tests override fields.
TINY_SG3 = dict(z_dim=8, w_dim=8, img_resolution=16, channel_base=128, channel_max=16, num_layers=4, margin_size=2)


def tiny_sg3_generator(seed: int = 0, **overrides):
    """A tiny StyleGAN3-R generator (1x1 convs, radial filters; ``TINY_SG3`` plus ``overrides``)
    with non-trivial values everywhere (NVIDIA initialises some to 0 / 1), in eval mode."""
    import torch

    from instyle.models.stylegan3 import StyleGAN3Config, StyleGAN3Generator

    torch.manual_seed(seed)
    g = StyleGAN3Generator(StyleGAN3Config(**{**TINY_SG3, "conv_kernel": 1, "use_radial_filters": True, **overrides}))
    with torch.no_grad():
        for name, t in g.named_parameters():
            if name.endswith("affine.weight"):
                t.normal_(0, 0.3)
        for name, b in g.named_buffers():
            if name.endswith("magnitude_ema"):
                b.fill_(0.8)
            elif name.endswith("w_avg"):
                b.normal_(0, 0.5)
    return g.eval()
