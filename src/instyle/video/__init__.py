"""Video: invert, edit and paste back a face through a whole clip (``instyle video``).

Needs the ``media`` extra (PyAV) and the ``faces`` extra (dlib)::

    from instyle.video import VideoOptions, edit_video
    report = edit_video(model, "clip.mp4", "out/", VideoOptions(directions=("age=age.pt",), edits=("age=0:0,2s:3",)))

See :mod:`instyle.video.pipeline` for the stages and their cache.
"""

from instyle.video.keyframes import TimedEdit, parse_timed_edit
from instyle.video.media import Selection, VideoError, VideoInfo, iter_frames, probe, write_mp4
from instyle.video.pipeline import STAGES, VideoOptions, edit_video
from instyle.video.stitch import StitchConfig
from instyle.video.track import fill_missing, gaussian_smooth, postprocess_latents, smooth_quads
from instyle.video.tune import ClipTuneConfig, clip_tune_config, tune_clip

__all__ = [
    "STAGES",
    "ClipTuneConfig",
    "Selection",
    "StitchConfig",
    "TimedEdit",
    "VideoError",
    "VideoInfo",
    "VideoOptions",
    "clip_tune_config",
    "edit_video",
    "fill_missing",
    "gaussian_smooth",
    "iter_frames",
    "parse_timed_edit",
    "postprocess_latents",
    "probe",
    "smooth_quads",
    "tune_clip",
    "write_mp4",
]
