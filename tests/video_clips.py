"""Synthetic test clips: a face photo moved by known affine motions, with a sine-tone track."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

BACKGROUND = (128, 128, 128)


def motion(k: int, n: int, size: int) -> np.ndarray:
    """3x3 map from photo coordinates (a 512 px photo) to frame ``k``'s: a slow pan, zoom and turn."""
    t = k / max(1, n - 1)
    scale = 0.30 * (1.0 + 0.15 * t)
    angle = np.radians(8.0 * t)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale
    shift = np.array([size / 2 + 20.0 * t - 10.0, size / 2 - 10.0 * t + 5.0])
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = shift - rot @ np.array([256.0, 256.0])
    return m


def frames(photo: Image.Image, n: int, size: int, blank: tuple[int, ...] = ()) -> list[np.ndarray]:
    """``n`` frames ``[size, size, 3]``; frames in ``blank`` show only the background."""
    photo = photo.convert("RGB").resize((512, 512), Image.Resampling.LANCZOS)
    out = []
    for k in range(n):
        if k in blank:
            out.append(np.full((size, size, 3), BACKGROUND, np.uint8))
            continue
        inv = np.linalg.inv(motion(k, n, size))
        data = (inv[0, 0], inv[0, 1], inv[0, 2], inv[1, 0], inv[1, 1], inv[1, 2])
        frame = photo.transform((size, size), Image.Transform.AFFINE, data, Image.Resampling.BICUBIC, fillcolor=BACKGROUND)
        out.append(np.asarray(frame))
    return out


def write_clip(path: Path, images: list[np.ndarray], fps: int = 24, audio: bool = True, tone: float = 440.0,
               vfr: bool = False) -> Path:
    """An H.264 MP4 of ``images`` with (``audio``) a mono sine tone as long as the video."""
    import av

    with av.open(str(path), "w", format="mp4") as c:
        v = c.add_stream("libx264", rate=fps)
        v.height, v.width = images[0].shape[:2]
        v.pix_fmt = "yuv420p"
        a = None
        if audio:
            a = c.add_stream("aac", rate=44100)
            a.layout = "mono"
        if vfr:
            v.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i, img in enumerate(images):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if vfr:  # intervals alternate between 20 and 60 ms
                f.pts, f.time_base = t, Fraction(1, 1000)
                t += 20 if i % 2 else 60
            else:
                f.pts, f.time_base = i, Fraction(1, fps)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
        if a is not None:
            rate, total, s = 44100, round(len(images) / fps * 44100), 0
            while s < total:
                k = min(1024, total - s)
                x = (0.3 * np.sin(2 * np.pi * tone * np.arange(s, s + k) / rate)).astype(np.float32)[None]
                fr = av.AudioFrame.from_ndarray(x, format="fltp", layout="mono")
                fr.sample_rate, fr.pts, fr.time_base = rate, s, Fraction(1, rate)
                c.mux(a.encode(fr))
                s += k
            c.mux(a.encode(None))
    return path


def audio_seconds(path: Path) -> float | None:
    """The audio stream's duration as the container states it, or None without audio."""
    import av

    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None
        st = c.streams.audio[0]
        return float(st.duration * st.time_base)


def read_frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
