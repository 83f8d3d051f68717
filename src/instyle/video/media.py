"""Reading and writing clips with PyAV (FFmpeg's libraries, audio and video in one API).

* :func:`probe` reads a clip's container once without decoding pictures: size, frame rate,
  frame count (from the packets' time stamps, which also tells a variable frame rate), and
  its audio track. Every refusal is one :class:`VideoError` line naming the file.
* :func:`iter_frames` decodes the selected frames (``--start/--end/--every``) as
  ``[H, W, 3]`` uint8 RGB arrays, in order, streaming (a long clip never sits in memory).
* :func:`write_mp4` encodes frames as H.264 (yuv420p) at a given frame rate with the
  source's audio over the same time span, re-encoded to AAC, into a temporary file renamed
  into place when complete.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from instyle.errors import InputError, MissingExtraError
from instyle.utils.atomic import atomic_path

__all__ = [
    "MAX_FRAMES",
    "MAX_SIDE",
    "Selection",
    "VideoError",
    "VideoInfo",
    "iter_frames",
    "probe",
    "require_av",
    "write_mp4",
]

#: Default largest frame side accepted (a 4K UHD clip passes; 8K is refused, not half-processed).
MAX_SIDE = 4096
#: Most frames one run may select (bounds the per-frame arrays and the disk cache).
MAX_FRAMES = 100_000
#: Frame intervals may differ from their median by this fraction before a clip counts as variable-rate.
VFR_TOLERANCE = 0.1


class VideoError(InputError):
    """A clip that cannot be used (not a video, no face, variable frame rate, too large, ...);
    ``str(e)`` is one line naming the file and what to do."""


def require_av():
    """Import PyAV or raise :class:`MissingExtraError` naming the extra to install."""
    try:
        import av
    except ImportError:
        raise MissingExtraError("video needs PyAV: pip install 'instyle[media]'  (the 'av' package)") from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` found. ``fps`` is exact (a fraction, e.g. 30000/1001)."""

    path: str
    width: int
    height: int
    fps: Fraction
    frames: int
    codec: str
    audio: bool
    audio_rate: int | None = None
    audio_channels: int | None = None
    audio_codec: str | None = None

    @property
    def duration(self) -> float:
        return self.frames / float(self.fps)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fps"] = f"{self.fps.numerator}/{self.fps.denominator}"
        return d


@dataclass(frozen=True)
class Selection:
    """The frames a run works on: source frame indices ``first, first + every, ...`` below ``stop``."""

    first: int
    stop: int
    every: int

    @classmethod
    def make(cls, info: VideoInfo, start: float | None = None, end: float | None = None, every: int = 1) -> Selection:
        """From times in seconds (``start`` inclusive, ``end`` exclusive; None = the clip's ends)."""
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise VideoError(f"every={every!r} must be an integer >= 1")
        for name, t in (("start", start), ("end", end)):
            if t is not None and not (math.isfinite(t) and t >= 0):
                raise VideoError(f"{name}={t!r} must be a time in seconds >= 0")
        first = 0 if start is None else math.ceil(start * info.fps - 1e-9)
        stop = info.frames if end is None else min(info.frames, math.ceil(end * info.fps - 1e-9))
        if first >= stop:
            raise VideoError(
                f"{info.path}: no frame between start={start} s and end={end} s (the clip lasts {info.duration:.3f} s, "
                f"{info.frames} frames)"
            )
        sel = cls(first, stop, every)
        if len(sel) > MAX_FRAMES:
            raise VideoError(f"{info.path}: {len(sel)} frames selected; at most {MAX_FRAMES} per run (use --end or --every)")
        return sel

    def __len__(self) -> int:
        return len(range(self.first, self.stop, self.every))

    def indices(self) -> range:
        return range(self.first, self.stop, self.every)

    def fps(self, info: VideoInfo) -> Fraction:
        """The output frame rate: the source's, divided by ``every`` (so the audio stays in sync)."""
        return info.fps / self.every

    def span(self, info: VideoInfo) -> tuple[float, float]:
        """Source seconds covered by the output: ``[first / fps, first / fps + len * every / fps)``."""
        t0 = self.first / info.fps
        return float(t0), float(t0 + Fraction(len(self) * self.every) / info.fps)


def _open(path: Path):
    av = require_av()
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    try:
        return av.open(str(path), "r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise VideoError(f"{path}: not a video FFmpeg can read ({type(e).__name__}: {e})") from None


def probe(path: str | Path, max_side: int = MAX_SIDE) -> VideoInfo:
    """Read the clip's layout; refuse (one :class:`VideoError` line) what the pipeline cannot use:
    a file that is not a video (or a still image), a side above ``max_side``, a variable frame rate."""
    av = require_av()
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream (streams: {[s.type for s in container.streams] or 'none'})")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise VideoError(f"{path}: the video stream has no picture size (a damaged file?)")
        if max(width, height) > max_side:
            raise VideoError(
                f"{path}: {width}x{height} frames exceed the largest side accepted, {max_side} px; "
                f"scale the clip down first (e.g. ffmpeg -i CLIP -vf scale=-2:1080 OUT.mp4) or raise max_side"
            )
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        pts = []
        try:
            for packet in container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts  # some raw streams carry only dts
                if stamp is not None and packet.size:
                    pts.append(stamp)
                if len(pts) > 4 * MAX_FRAMES:
                    raise VideoError(f"{path}: more than {4 * MAX_FRAMES} frames; cut the clip first")
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: not a readable video ({type(e).__name__}: {e})") from None
        if len(pts) < 2 or not rate:
            raise VideoError(f"{path}: not a video ({len(pts)} frame{'s' if len(pts) != 1 else ''}; a clip needs at least 2)")
        _check_constant_rate(path, np.sort(np.asarray(pts, dtype=np.int64)), stream.time_base)
        audio = container.streams.audio[0] if container.streams.audio else None
        return VideoInfo(
            path=str(path),
            width=int(width),
            height=int(height),
            fps=Fraction(rate),
            frames=len(pts),
            codec=stream.codec_context.name,
            audio=audio is not None,
            audio_rate=int(audio.codec_context.sample_rate) if audio is not None else None,
            audio_channels=int(audio.codec_context.channels) if audio is not None else None,
            audio_codec=audio.codec_context.name if audio is not None else None,
        )


def _check_constant_rate(path: Path, pts: np.ndarray, time_base) -> None:
    steps = np.diff(pts)
    median = float(np.median(steps))
    if median <= 0:
        raise VideoError(f"{path}: frames without increasing time stamps (a damaged file?)")
    worst = float(np.max(np.abs(steps - median)))
    if worst > max(1.0, VFR_TOLERANCE * median):
        ms = [round(float(v * time_base) * 1000, 2) for v in (steps.min(), steps.max())]
        raise VideoError(
            f"{path}: variable frame rate (frame intervals from {ms[0]} to {ms[1]} ms); convert it to a constant "
            "rate first, e.g. ffmpeg -i CLIP -vsync cfr -r 30 OUT.mp4"
        )


def iter_frames(path: str | Path, selection: Selection) -> Iterator[tuple[int, np.ndarray]]:
    """``(k, frame)`` for the ``k``-th selected frame: ``[H, W, 3]`` uint8 RGB, in order.

    Frames are numbered in decoding order after sorting by time stamp, as :func:`probe` counted them."""
    av = require_av()
    path = Path(path)
    wanted = selection.indices()
    k = 0
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i >= selection.stop:
                    break
                if i in wanted:
                    yield k, frame.to_ndarray(format="rgb24")
                    k += 1
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: decoding failed after {k} of {len(selection)} frames ({type(e).__name__}: {e})") from None
    if k < len(selection):
        raise VideoError(f"{path}: only {k} of the {len(selection)} selected frames could be decoded (a damaged file?)")


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even sides: repeat the last row / column when a side is odd."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame


class _AudioFeed:
    """The source's audio between two times, resampled to planar float and handed out in order
    up to a given time (so it can be interleaved with the video frames)."""

    def __init__(self, av, path: Path, span: tuple[float, float], out_stream):
        self.av, self.out, self.span = av, out_stream, span
        self.container = av.open(str(path), "r")
        src = self.container.streams.audio[0]
        video = self.container.streams.video[0] if self.container.streams.video else None
        # Times are measured from the video's first time stamp, as the frames are.
        self.origin = float(video.start_time * video.time_base) if video is not None and video.start_time is not None else 0.0
        self.rate = out_stream.codec_context.sample_rate
        self.layout = out_stream.codec_context.layout.name
        self.resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate)
        self.frames = self._frames(src)
        self.written = 0  # samples handed out so far
        self.pending: np.ndarray | None = None

    def _frames(self, src) -> Iterator[tuple[float, np.ndarray]]:
        """``(source time of the first sample, samples [channels, n])`` resampled."""
        for frame in self.container.decode(src):
            for out in self.resampler.resample(frame):
                if out.pts is None:
                    continue
                yield float(out.pts * out.time_base) - self.origin, out.to_ndarray()
        for out in self.resampler.resample(None):
            yield float(out.pts * out.time_base) - self.origin, out.to_ndarray()

    def _target(self, t: float) -> int:
        return round((min(t, self.span[1]) - self.span[0]) * self.rate)

    def until(self, t: float) -> Iterator:
        """Encoded packets of the audio up to output time ``t`` (seconds from the output's start)."""
        target = self._target(self.span[0] + t)
        while self.written < target:
            if self.pending is None:
                try:
                    start, samples = next(self.frames)
                except StopIteration:
                    break
                # Drop what lies before the span; align the first kept sample.
                skip = round((self.span[0] - start) * self.rate) + self.written
                if skip >= samples.shape[1]:
                    continue
                if skip < 0:  # a gap in the source: fill with silence
                    samples = np.concatenate([np.zeros((samples.shape[0], -skip), samples.dtype), samples], axis=1)
                    skip = 0
                self.pending = samples[:, skip:]
            take = min(self.pending.shape[1], target - self.written)
            chunk, rest = self.pending[:, :take], self.pending[:, take:]
            self.pending = rest if rest.shape[1] else None
            frame = self.av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=self.layout)
            frame.sample_rate = self.rate
            frame.pts = self.written
            frame.time_base = Fraction(1, self.rate)
            self.written += take
            yield from self.out.encode(frame)

    def close(self) -> Iterator:
        yield from self.until(self.span[1] - self.span[0])
        yield from self.out.encode(None)
        self.container.close()


class _AudioCopy:
    """The source's audio packets unchanged (no generation loss), handed out in time order."""

    def __init__(self, av, path: Path, out_stream, src_index: int):
        self.out = out_stream
        self.container = av.open(str(path), "r")
        self.packets = (p for p in self.container.demux(self.container.streams.audio[src_index]) if p.dts is not None)
        self.pending = None

    def until(self, t: float) -> Iterator:
        while True:
            if self.pending is None:
                self.pending = next(self.packets, None)
                if self.pending is None:
                    return
            p = self.pending
            if t != math.inf and float(p.pts * p.time_base) >= t:
                return
            self.pending = None
            p.stream = self.out
            yield p

    def close(self) -> Iterator:
        yield from self.until(math.inf)
        self.container.close()


#: Audio codecs an MP4 carries as they are (copied without re-encoding when the whole track is kept).
MP4_AUDIO = ("aac", "mp3", "alac")


def write_mp4(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: Fraction,
    audio_from: str | Path | None = None,
    audio_span: tuple[float, float] | None = None,
    crf: int = 18,
    copy_audio: bool = False,
) -> Path:
    """Encode ``frames`` (``[H, W, 3]`` uint8 RGB, all one size) as an H.264 MP4 at ``fps``.

    With ``audio_from`` (a clip with an audio track), its audio between ``audio_span`` seconds
    (measured from its first video frame) is re-encoded to AAC and interleaved; with
    ``copy_audio`` (the whole track is wanted) an AAC, MP3 or ALAC track is copied unchanged
    instead. The file is written under a temporary name and renamed when complete: an
    interrupted call leaves no partial ``path``. Returns ``path``.
    """
    av = require_av()
    path = Path(path)
    if not 0 <= crf <= 51:
        raise VideoError(f"crf={crf!r} must be in [0, 51] (lower is better quality; 18 is visually lossless)")
    fps = Fraction(fps)
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as out:
        video = None
        feed = None
        for count, frame in enumerate(frames, start=1):
            frame = _even(np.asarray(frame, dtype=np.uint8))
            if video is None:
                video = out.add_stream("libx264", rate=fps)
                video.width, video.height = frame.shape[1], frame.shape[0]
                video.pix_fmt = "yuv420p"
                video.options = {"crf": str(crf), "preset": "medium"}
                if audio_from is not None and copy_audio and _audio_codec(av, Path(audio_from)) in MP4_AUDIO:
                    with av.open(str(audio_from), "r") as c:
                        stream = out.add_stream_from_template(c.streams.audio[0])
                    feed = _AudioCopy(av, Path(audio_from), stream, 0)
                elif audio_from is not None:
                    src = _audio_layout(av, Path(audio_from))
                    if src is not None:
                        stream = out.add_stream("aac", rate=src[0])
                        stream.layout = src[1]
                        feed = _AudioFeed(av, Path(audio_from), audio_span or (0.0, math.inf), stream)
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = count - 1
            picture.time_base = 1 / fps
            out.mux(video.encode(picture))
            if feed is not None:
                out.mux(list(feed.until(float(count / fps))))
        if video is None:
            raise VideoError(f"{path}: no frames to write")
        out.mux(video.encode(None))
        if feed is not None:
            out.mux(list(feed.close()))
    return path


def _audio_layout(av, path: Path) -> tuple[int, str] | None:
    """``(sample rate, channel layout)`` of the clip's first audio track, or None."""
    with av.open(str(path), "r") as c:
        if not c.streams.audio:
            return None
        ctx = c.streams.audio[0].codec_context
        layout = ctx.layout.name if ctx.channels <= 2 else "stereo"  # AAC's encoder takes mono and stereo here
        return int(ctx.sample_rate), layout


def _audio_codec(av, path: Path) -> str | None:
    with av.open(str(path), "r") as c:
        return c.streams.audio[0].codec_context.name if c.streams.audio else None
