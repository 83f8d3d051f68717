"""``edit_video``: invert, edit and paste back a face through a whole clip.

Stages (each cached under ``OUT/cache/``, skipped when its inputs are unchanged, and
resumable inside: a killed run redoes at most the unit it was working on):

1. probe the clip (:mod:`instyle.video.media`) and select frames (``start/end/every``);
2. **track**: landmarks per frame, in chunks (``cache/track/``); frames without a face get
   interpolated landmarks and are listed in the report;
3. **align**: FFHQ quads smoothed over time (STIT's sigmas), crops written per frame (``cache/crops/``);
   An encoder over StyleGAN3 (a family with a rendering ``transform``) works as
   stylegan3-editing's video pipeline (inversion/video/): every frame is also cut with the
   *first* frame's quad (``cache/align/fixed/``), each frame's landmark transform between its
   aligned crop and that fixed crop is computed (as ``encode --unaligned``) and smoothed with
   the original's five-tap kernel, each frame renders under its transform, and the results
   are pasted back through the fixed quad; its codes are post-processed before rendering as
   the family's ``video_latents`` asks (fine rows averaged over the clip, five-tap
   smoothing), and PTI fits the unsmoothed codes under the unsmoothed transforms; ``expand``
   renders a wider field of view through the transform (the original's ``Expander``,
   :mod:`instyle.video.expand`) and pastes that wider canvas back;
4. **encode**: W+ codes per frame, batched in fixed chunks (``cache/latents/``);
5. **tune** (``pti``): one generator tuned on all frames, checkpointed (``cache/pti/``);
6. **render**: reconstructions and edits per frame (``cache/render/``), latents optionally
   smoothed over time, edits constant or key-framed; a family's ``video_latents``
   post-processing applies to the reconstruction's and to the edited codes of all frames;
7. **write**: every full frame with its edited crop pasted back through the inverse of its
   smoothed quad (feathered), H.264 MP4 with the source's audio (``result.mp4``; with
   ``side_by_side`` also ``side_by_side.mp4``: source | reconstruction | edit), and the
   temporal-consistency report (``report.json``, ``report.png``).

Every stage records a key of everything it depends on (``cache/stages.json``); a changed
key clears that stage and those after it. Everything random is seeded, so a resumed run
writes what an uninterrupted one does.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from instyle.alignment.detect import DETECTORS, detect_faces
from instyle.alignment.ffhq import paste_back, source_to_crop, warp_quad
from instyle.errors import InputError
from instyle.inference.editing import load_edit, named_file, resolve_edit
from instyle.inference.encoding import as_encoding, encode, render
from instyle.inference.io import save_image
from instyle.inference.offsets import uses_offsets
from instyle.inference.preprocess import prepare_input
from instyle.inference.refine import apply_generator_delta, load_generator_delta, save_generator_delta
from instyle.inference.unaligned import crop_transform
from instyle.losses.lpips import LPIPSLoss
from instyle.models.family import family_of
from instyle.utils.atomic import atomic_write_bytes
from instyle.utils.image import tensor_to_pil
from instyle.utils.progress import Progress
from instyle.video.expand import canvas_mask, expanded_quad, expanded_render, square_canvas
from instyle.video.keyframes import TimedEdit, parse_timed_edit
from instyle.video.media import MAX_SIDE, MP4_AUDIO, Selection, VideoError, VideoInfo, iter_frames, probe, write_mp4
from instyle.video.report import build_report, format_report, write_plot
from instyle.video.stitch import StitchConfig, face_mask, paste_mask, render_code, stitch_frame, stitch_masks
from instyle.video.track import (
    AXES_SIGMA,
    CENTER_SIGMA,
    fill_missing,
    five_tap_smooth,
    follow_face,
    gaussian_smooth,
    landmark_quads,
    postprocess_latents,
    smooth_quads,
)
from instyle.video.tune import ClipTuneConfig, clip_tune_config, tune_clip

__all__ = ["STAGES", "VideoOptions", "edit_video"]

#: The cached stages, in order.
STAGES = ("track", "align", "encode", "pti", "render", "stitch")
#: Frames per landmark chunk file.
TRACK_CHUNK = 16
#: Output files (in ``OUT``).
RESULT, SIDE_BY_SIDE, REPORT, PLOT = "result.mp4", "side_by_side.mp4", "report.json", "report.png"


@dataclass(frozen=True)
class VideoOptions:
    """Settings of :func:`edit_video` (validated on creation; the command's flags).

    Attributes:
        start, end: seconds of the clip to work on (None: its ends); ``every``: every N-th frame
            (the output then runs at ``fps / every`` so it keeps the audio's timing).
        detector: dlib detector (``auto``, ``hog``, ``cnn``).
        center_sigma, axes_sigma: temporal smoothing of the crop quads, in frames (STIT: 1 and 3).
        latent_sigma: temporal smoothing of the W+ codes, in frames (0: none).
        batch_size: frames per encoder / generator pass.
        workers: threads detecting faces (dlib runs them in parallel; the result is the same).
        directions: edit files, ``[NAME=]FILE`` (as ``instyle edit direction -d``).
        edits: ``NAME[:COMP]=STRENGTH`` or key-framed ``NAME=T:S,T:S`` (T: frame or ``2s``).
        pti: tune one generator on all frames; ``pti_config``: its
            :class:`~instyle.video.tune.ClipTuneConfig` (None: the model family's published
            settings, :func:`~instyle.video.tune.clip_tune_config`; STIT's by default).
        stitch: STIT's stitching tuning per frame (:class:`~instyle.video.stitch.StitchConfig`).
        side_by_side: also write ``side_by_side.mp4`` (source | reconstruction | edit).
        expand: field-of-view expansion ``(left, right, top, bottom)`` in generator pixels
            (stylegan3-editing's ``expansion_amounts``): a model that renders under a transform
            (encoders over StyleGAN3) renders that much more around the crop, and the wider
            canvas is pasted back; all 0: none.
        feather: width of the paste-back blend at the crop's edges, fraction of its side.
        crf: H.264 quality (0-51, lower is better).
        max_side: largest frame side accepted.
        lpips_weights, identity: per-frame reconstruction metrics (LPIPS backbone weights;
            an identity spec such as ``dlib`` or ``arcface:PATH``); also PTI's LPIPS term.
    """

    start: float | None = None
    end: float | None = None
    every: int = 1
    detector: str = "auto"
    center_sigma: float = CENTER_SIGMA
    axes_sigma: float = AXES_SIGMA
    latent_sigma: float = 0.0
    batch_size: int = 4
    workers: int = 1
    directions: tuple[str, ...] = ()
    edits: tuple[str, ...] = ()
    pti: bool = False
    pti_config: ClipTuneConfig | None = None
    stitch: bool = False
    stitch_config: StitchConfig = field(default_factory=StitchConfig)
    side_by_side: bool = False
    expand: tuple[int, int, int, int] = (0, 0, 0, 0)
    feather: float = 0.1
    crf: int = 18
    max_side: int = MAX_SIDE
    lpips_weights: str | None = None
    identity: str | None = None
    progress: bool = False

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise InputError(f"detector={self.detector!r} is not one of: {', '.join(DETECTORS)}")
        for name in ("center_sigma", "axes_sigma", "latent_sigma"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v <= 100):
                raise InputError(f"{name}={v!r} must be a number of frames in [0, 100]")
        if not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= 256:
            raise InputError(f"batch_size={self.batch_size!r} must be an integer in [1, 256]")
        if not isinstance(self.workers, int) or not 1 <= self.workers <= 64:
            raise InputError(f"workers={self.workers!r} must be an integer in [1, 64]")
        if not 0.0 <= self.feather <= 0.5:
            raise InputError(f"feather={self.feather!r} must be in [0, 0.5]")
        if not isinstance(self.max_side, int) or not 64 <= self.max_side <= 16384:
            raise InputError(f"max_side={self.max_side!r} must be an integer in [64, 16384]")
        if (not isinstance(self.expand, (tuple, list)) or len(self.expand) != 4
                or not all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a <= 4096 for a in self.expand)):
            raise InputError(f"expand={self.expand!r} must be 4 integers (left, right, top, bottom) in [0, 4096] pixels")
        if self.edits and not self.directions:
            raise InputError("edits name directions: give the edit files too (--direction [NAME=]FILE)")

    def key_dict(self) -> dict:
        d = asdict(self)
        d.pop("progress")
        d.pop("workers")
        return d


# --------------------------------------------------------------------------- the cache


def _hash(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def _file_id(path: str | Path) -> dict:
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _model_id(model) -> str:
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in list(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


class _Cache:
    """``OUT/cache/<stage>/`` folders with the key each was made with."""

    def __init__(self, root: Path):
        self.root = root
        self.index_path = root / "stages.json"
        self.index = json.loads(self.index_path.read_text()) if self.index_path.is_file() else {}

    def begin(self, stage: str, key: str) -> Path:
        """The stage's folder; emptied (with every later stage's) when its key changed."""
        if self.index.get(stage) != key:
            for later in STAGES[STAGES.index(stage) :]:
                shutil.rmtree(self.root / later, ignore_errors=True)
                self.index.pop(later, None)
            self.index[stage] = key
            atomic_write_bytes(self.index_path, json.dumps(self.index, indent=1).encode())
        folder = self.root / stage
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def _save_npz(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _bar(total: int, desc: str, progress: bool, unit: str = "frame"):
    """The shared progress display (a bar on a terminal, a line every tenth in a log, nothing
    under ``--quiet``)."""
    return Progress(total, desc, unit, enabled=progress)


# --------------------------------------------------------------------------- stages


def _track_chunk(frames: list[np.ndarray], previous, detector: str, pool) -> tuple[list, list, np.ndarray | None]:
    """Landmarks of one chunk: faces detected in ``pool``'s threads (dlib releases the GIL),
    then followed in order (each frame takes the face nearest the previous frame's)."""
    detections = list(pool.map(lambda f: detect_faces(f, detector=detector), frames)) if pool else [
        detect_faces(f, detector=detector) for f in frames]
    lms, found = [], []
    for frame, dets in zip(frames, detections):
        lm = follow_face(frame, dets, previous)
        previous = lm if lm is not None else previous
        lms.append(np.zeros((68, 2)) if lm is None else lm)
        found.append(lm is not None)
    return lms, found, previous


def _track(clip: Path, sel: Selection, folder: Path, options: VideoOptions, hook) -> tuple[np.ndarray, np.ndarray]:
    """``(landmarks [N, 68, 2], found [N])`` with chunk files under ``folder``."""
    n = len(sel)
    chunks = range(0, n, TRACK_CHUNK)
    todo = [c for c in chunks if not (folder / f"{c:06d}.npz").is_file()]
    bar = _bar(n, "track", options.progress)
    bar.update(n - sum(min(TRACK_CHUNK, n - c) for c in todo))
    if todo:
        previous, pending = None, []
        with ThreadPoolExecutor(options.workers) if options.workers > 1 else nullcontext() as pool:
            for k, frame in iter_frames(clip, sel):
                c = k - k % TRACK_CHUNK
                if c not in todo:
                    continue
                if k == c and c > 0 and (folder / f"{c - TRACK_CHUNK:06d}.npz").is_file():
                    with np.load(folder / f"{c - TRACK_CHUNK:06d}.npz") as z:  # follow the same face across chunks
                        previous = z["followed"] if z["has_followed"] else None
                pending.append(frame)
                if len(pending) < min(TRACK_CHUNK, n - c):
                    continue
                lms, found, previous = _track_chunk(pending, previous, options.detector, pool)
                # The tracker's state after the chunk goes with it, so a resumed run follows the same face.
                _save_npz(folder / f"{c:06d}.npz", landmarks=np.stack(lms), found=np.array(found),
                          followed=np.zeros((68, 2)) if previous is None else previous, has_followed=previous is not None)
                bar.update(len(pending))
                pending = []
                hook("track", c)
    bar.close()
    landmarks, found = [], []
    for c in chunks:
        with np.load(folder / f"{c:06d}.npz") as z:
            landmarks.append(z["landmarks"])
            found.append(z["found"])
    return np.concatenate(landmarks), np.concatenate(found)


def _align(clip: Path, sel: Selection, quads: np.ndarray, folder: Path, size: int, options: VideoOptions, hook) -> None:
    n = len(sel)
    done = {k for k in range(n) if (folder / f"{k:06d}.png").is_file()}
    bar = _bar(n, "align", options.progress)
    bar.update(len(done))
    if len(done) < n:
        for k, frame in iter_frames(clip, sel):
            if k in done:
                continue
            save_image(warp_quad(Image.fromarray(frame), quads[k], size), folder / f"{k:06d}.png")
            bar.update(1)
            hook("align", k)
    bar.close()


def _crop(folder: Path, k: int) -> Image.Image:
    with Image.open(folder / f"{k:06d}.png") as im:
        return im.convert("RGB")


def _encode(model, crops: Path, n: int, folder: Path, options: VideoOptions, hook) -> np.ndarray:
    """``[N, n_styles, D]`` codes; chunk ``b`` holds frames ``[b * B, (b + 1) * B)``."""
    device = next(model.parameters()).device
    b = options.batch_size
    starts = range(0, n, b)
    bar = _bar(n, "encode", options.progress)
    for s in starts:
        path = folder / f"{s:06d}.npy"
        if not path.is_file():
            x = torch.stack([prepare_input(_crop(crops, k), model.config) for k in range(s, min(n, s + b))]).to(device)
            with torch.inference_mode():
                w = encode(model, x).latents
            buf = io.BytesIO()
            np.save(buf, w.float().cpu().numpy())
            atomic_write_bytes(path, buf.getvalue())
            hook("encode", s)
        bar.update(min(b, n - s))
    bar.close()
    return np.concatenate([np.load(folder / f"{s:06d}.npy") for s in starts])


def _load_edits(options: VideoOptions, model) -> list[tuple[object, TimedEdit]]:
    edits = {}
    for spec in options.directions:
        name, path = named_file(spec)
        if name in edits:
            raise InputError(f"two edit files are called {name!r}; name them with NAME=FILE")
        try:
            edits[name] = load_edit(path, model.n_styles, model.config.generator.style_dim)
        except ValueError as e:
            raise InputError(str(e)) from None
    out = []
    probe_code = torch.zeros(model.n_styles, model.config.generator.style_dim)
    for spec in options.edits:
        timed = parse_timed_edit(spec)
        try:
            edit = resolve_edit(timed.name, edits)
            edit.edit(probe_code, [timed.keys[0][1]], timed.component)  # a wrong component fails now, not after encoding
        except ValueError as e:
            raise InputError(f"edit {spec!r}: {e}") from None
        out.append((edit, timed))
    return out


def _edited_codes(w: torch.Tensor, edits, strengths: np.ndarray) -> torch.Tensor:
    """``w [B, n, D]`` with every edit's per-frame step added (``strengths [E, B]``)."""
    out = w.clone()
    for (edit, timed), row in zip(edits, strengths):
        for i in range(len(w)):
            try:
                moved = edit.edit(w[i], [float(row[i])], timed.component)[0]
            except ValueError as e:
                raise InputError(f"edit {timed.spec!r}: {e}") from None
            out[i] += moved - w[i]
    return out


def _render(model, generator_delta, crops: Path, codes: np.ndarray, edits, strengths, folder: Path, options: VideoOptions, hook,
            transforms: np.ndarray | None = None, video_latents: dict | None = None):
    """Reconstructions (and edits) per frame; ``transforms [N, 3, 3]``: each frame's rendering
    transform (StyleGAN3: the frame's smoothed landmark transform), carried by its encoding;
    ``video_latents``: the family's post-processing of the clip's codes
    (:func:`~instyle.video.track.postprocess_latents`), applied to the reconstruction's codes
    and, after editing each frame, to the edited codes (as stylegan3-editing's
    ``postprocess_and_smooth_inversions`` and ``VideoEditor.postprocess_and_smooth_edits``)."""
    device = next(model.parameters()).device
    n, b = len(codes), options.batch_size
    wide = any(options.expand)
    res = model.output_size
    side = round(max(res + options.expand[0] + options.expand[1], res + options.expand[2] + options.expand[3]) * model.pooled_size / res)
    edited_all = None
    if video_latents:
        if edits:
            edited_all = postprocess_latents(_edited_codes(torch.from_numpy(codes), edits, strengths).numpy(), video_latents)
        codes = postprocess_latents(codes, video_latents)
    base = model.decoder
    if generator_delta is not None:
        model.decoder = apply_generator_delta(base, generator_delta)
    bar = _bar(n, "render", options.progress)
    try:
        for s in range(0, n, b):
            idx = range(s, min(n, s + b))
            kinds = ["recon"] + (["edit"] if edits else [])
            names = [folder / f"{kind}_{k:06d}.png" for kind in kinds for k in idx]
            wides = [folder / f"wide_{kind}_{k:06d}.png" for kind in kinds for k in idx] if wide else []
            if not all(p.is_file() for p in names + wides):
                w = torch.from_numpy(codes[s : s + b]).to(device)
                with torch.inference_mode():
                    extra = None if transforms is None else torch.from_numpy(transforms[s : s + b]).to(device)
                    enc = as_encoding(model, w, extra)
                    if uses_offsets(model):  # HyperStyle: the frames' own generator offsets, recomputed
                        x = torch.stack([prepare_input(_crop(crops, k), model.config) for k in idx]).to(device)
                        enc = enc.with_extra(encode(model, x).extra)
                    images = [render(model, enc, resize=True)]
                    if edits:
                        moved = (_edited_codes(w, edits, strengths[:, s : s + b]) if edited_all is None
                                 else torch.from_numpy(edited_all[s : s + b]).to(device))
                        images.append(render(model, enc.with_latents(moved), resize=True))
                    canvases = []
                    if wide:  # stylegan3-editing's Expander: the same codes, a wider view under the same transforms
                        for latents in [w] + ([moved] if edits else []):
                            canvas = square_canvas(expanded_render(lambda v, t: model.synthesize(v, t), latents, extra, res,
                                                                   options.expand))
                            canvases.append(torch.nn.functional.interpolate(canvas, size=(side, side), mode="area"))
                for path, img in zip(names + wides, [*torch.cat(images), *(torch.cat(canvases) if canvases else [])]):
                    save_image(tensor_to_pil(img), path)
                hook("render", s)
            bar.update(len(idx))
    finally:
        model.decoder = base
        bar.close()


def _stitch(model, generator_delta, crops: Path, codes: np.ndarray, edits, strengths, landmarks: np.ndarray, folder: Path,
            options: VideoOptions, hook) -> dict:
    """Stitching tuning per frame: ``stitch_K.png`` and its paste weights ``mask_K.png`` in ``folder``."""
    if uses_offsets(model):
        raise InputError("--stitch tunes the generator per frame; with a HyperStyle model's per-frame offsets it is not supported")
    device = next(model.parameters()).device
    generator = apply_generator_delta(model.decoder, generator_delta) if generator_delta is not None else model.decoder
    config = options.stitch_config
    size = model.pooled_size
    bar = _bar(len(codes), "stitch", options.progress)
    steps_path = folder / "steps.json"
    record = json.loads(steps_path.read_text()) if steps_path.is_file() else {}
    for k in range(len(codes)):
        if not ((folder / f"stitch_{k:06d}.png").is_file() and (folder / f"mask_{k:06d}.png").is_file() and str(k) in record):
            w = torch.from_numpy(codes[k : k + 1]).to(device)
            if edits:
                w = _edited_codes(w, edits, strengths[:, k : k + 1])
            source = torch.from_numpy(np.array(_crop(crops, k))).permute(2, 0, 1)[None].float().to(device) / 127.5 - 1.0
            with torch.no_grad():
                edited = render_code(model, generator, w)
            masks = stitch_masks(face_mask(landmarks[k], size), config)
            image, steps, border = stitch_frame(model, generator, w, source, edited, masks, config)
            save_image(Image.fromarray(np.uint8(np.rint(paste_mask(masks[2], config) * 255))), folder / f"mask_{k:06d}.png")
            save_image(tensor_to_pil(image), folder / f"stitch_{k:06d}.png")
            record[str(k)] = {"steps": steps, "border_loss": round(border, 6)}
            atomic_write_bytes(steps_path, json.dumps(record).encode())
            hook("stitch", k)
        bar.update(1)
    bar.close()
    steps = [record[str(k)]["steps"] for k in range(len(codes))]
    losses = [record[str(k)]["border_loss"] for k in range(len(codes))]
    return {"steps_mean": float(np.mean(steps)), "border_loss_mean": float(np.mean(losses)),
            "per_frame": {"steps": steps, "border_loss": losses}, "config": asdict(config)}


def _paste_frames(clip: Path, sel: Selection, quads: np.ndarray, folder: Path, kind: str, options: VideoOptions,
                  res: int | None = None):
    for k, frame in iter_frames(clip, sel):
        crop = Image.open(folder / f"{kind}_{k:06d}.png").convert("RGB")
        mask = None
        if kind == "stitch":
            with Image.open(folder / f"mask_{k:06d}.png") as m:
                mask = np.asarray(m.convert("L"), dtype=np.float32) / 255.0
        elif kind.startswith("wide_"):  # a field-of-view expanded canvas: its rendered rectangle, feathered
            mask = canvas_mask(crop.width, res, options.expand, options.feather)
        yield k, frame, np.asarray(paste_back(Image.fromarray(frame), crop, quads[k], feather=options.feather, mask=mask))


def _result_frames(clip, sel, quads, render, kind, options, hook, bar, res=None) -> Iterator[np.ndarray]:
    for k, _, pasted in _paste_frames(clip, sel, quads, render, kind, options, res):
        bar.update(1)
        hook("write", k)
        yield pasted


def _side_frames(clip, sel, quads, render, folder, kind, options, bar, recon="recon", res=None) -> Iterator[np.ndarray]:
    recon = _paste_frames(clip, sel, quads, render, recon, options, res)
    edited = _paste_frames(clip, sel, quads, folder, kind, options, res)
    for (_, frame, r), (_, _, e) in zip(recon, edited):
        bar.update(1)
        yield np.concatenate([frame, r, e], axis=1)


# --------------------------------------------------------------------------- the job


def _check_out(clip: Path, out: Path) -> None:
    targets = [out / name for name in (RESULT, SIDE_BY_SIDE, REPORT, PLOT)]
    if any(t.resolve() == clip.resolve() for t in targets):
        raise InputError(f"--out {out}: an output would overwrite the clip {clip}; choose another folder")
    try:
        (out / "cache").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def edit_video(
    model,
    clip: str | Path,
    out: str | Path,
    options: VideoOptions | None = None,
    *,
    log: Callable[[str], None] = print,
    on_step: Callable[[str, int], None] | None = None,
) -> dict:
    """Invert, edit and paste back the face of ``clip`` frame by frame into ``out``.

    Args:
        model: any model instyle loads (pSp, e4e, ReStyle, HyperStyle), in eval mode.
        clip: a video file FFmpeg reads (constant frame rate).
        out: output folder: ``result.mp4`` (the clip's frame count / every, its fps / every,
            its audio), ``report.json``, ``report.png``, optionally ``side_by_side.mp4``, and
            the resumable stage cache ``cache/``.
        options: :class:`VideoOptions`.
        log: where one-line notes go (no audio, interpolated frames).
        on_step: called as ``on_step(stage, index)`` after each unit of work is saved
            (progress hooks; raising there stops the run, which then resumes).

    Returns:
        The report (also in ``report.json``).

    Raises:
        VideoError / InputError: one line naming the problem; no output file is then written.
    """
    options = options or VideoOptions()
    hook = on_step or (lambda stage, k: None)
    clip, out = Path(clip), Path(out)
    t_start = time.perf_counter()
    info = probe(clip, options.max_side)
    sel = Selection.make(info, options.start, options.end, options.every)
    if uses_offsets(model) and (options.pti or options.stitch):
        raise InputError("--pti and --stitch tune a generator; a HyperStyle model tunes its own per frame: run it without them")
    if any(options.expand) and not family_of(model).transform:
        raise InputError("--expand renders a wider view through the generator's input transform; this model's generator "
                         "takes none (encoders over StyleGAN3 do)")
    if family_of(model).transform and options.stitch:
        raise InputError("--stitch tunes each frame's aligned crop; an encoder over StyleGAN3 renders the fixed crop under "
                         "each frame's transform instead: run it without --stitch")
    edits = _load_edits(options, model) if options.edits else []
    lpips = _lpips(options)
    run = _Run(model, clip, info, sel, options, _Cache(out / "cache"), hook, log, edits, lpips)  # checks the edits' keys
    _check_out(clip, out)
    faces = run.track_and_align()
    codes, delta, pti_summary = run.latents(faces)
    results = run.render(faces, codes, delta, pti_summary)
    run.write(out, faces, results)
    report = build_report(
        info=info, selection=sel, fps=run.fps, raw_quads=faces.raw_quads, quads=faces.quads, missing=faces.missing,
        crops=faces.targets, render=results.render, results=results.folder, kind=results.kind,
        edits=[t.spec for _, t in edits], strengths=run.strengths, lpips=lpips, identity=options.identity,
        pti=pti_summary, stitch=results.stitch, options=options.key_dict(),
    )
    report["output"]["audio_mode"] = run.audio_mode
    if faces.transforms is not None:  # StyleGAN3: what each frame rendered with
        report["transforms"] = {"fixed_quad": faces.quads[0].round(3).tolist(), "smoothing": "stylegan3-editing five-tap",
                                "inverse": faces.transforms.round(6).tolist(), "latents": run.video_latents,
                                "expand": list(options.expand)}
    report["seconds"] = {**run.timings, "total": round(time.perf_counter() - t_start, 3)}
    report["outputs"] = [RESULT] + ([SIDE_BY_SIDE] if options.side_by_side else []) + [REPORT, PLOT]
    write_plot(report, out / PLOT)
    atomic_write_bytes(out / REPORT, (json.dumps(report, indent=1) + "\n").encode())
    for line in format_report(report):
        log(line)
    return report


@dataclass
class _Faces:
    """The tracked face: landmarks (gaps filled), raw and smoothed quads, the crop folder."""

    landmarks: np.ndarray
    missing: list[int]
    raw_quads: np.ndarray
    quads: np.ndarray
    crops: Path
    #: StyleGAN3: each frame's smoothed inverse landmark transform ``[N, 3, 3]`` and the folder
    #: of the frames cut with the first frame's quad (what the renderings show); else None.
    transforms: np.ndarray | None = None
    fixed: Path | None = None
    #: StyleGAN3: the same transforms unsmoothed (what PTI fits under, as ``run_pti_video.py``).
    raw_transforms: np.ndarray | None = None

    @property
    def targets(self) -> Path:
        """The crops the renderings reproduce (and PTI fits, and the report compares with)."""
        return self.crops if self.fixed is None else self.fixed

    @property
    def paste_quads(self) -> np.ndarray:
        """Per frame, the quad its rendering is pasted back through."""
        return self.quads if self.transforms is None else np.repeat(self.quads[:1], len(self.quads), axis=0)


@dataclass
class _Results:
    """Where the rendered crops are: ``render`` (reconstructions, edits) and ``folder``/``kind``
    of the crops pasted back (``edit``, ``recon`` or ``stitch``)."""

    render: Path
    folder: Path
    kind: str
    stitch: dict | None = None
    #: the pasted crops are field-of-view expanded canvases (``wide_<kind>_K.png``)
    wide: bool = False


class _Run:
    """One :func:`edit_video` call's stages; each stage's cache key extends the previous one's."""

    def __init__(self, model, clip, info, sel, options, cache, hook, log, edits, lpips):
        self.model, self.clip, self.info, self.sel, self.options = model, clip, info, sel, options
        self.cache, self.hook, self.log, self.edits, self.lpips = cache, hook, log, edits, lpips
        self.size = model.pooled_size
        self.fps = sel.fps(info)
        self.strengths = np.stack([t.strengths(len(sel), self.fps) for _, t in edits]) if edits else np.zeros((0, len(sel)))
        self.timings: dict[str, float] = {}
        self._mark = time.perf_counter()
        self.key = _hash(_file_id(clip), asdict(sel), options.detector)
        self.pti_config = options.pti_config or clip_tune_config(model)
        self.video_latents = dict(family_of(model).video_latents)

    def _timed(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage], self._mark = round(now - self._mark, 3), now

    def _stage(self, stage: str, *parts) -> Path:
        self.key = _hash(self.key, *parts)
        return self.cache.begin(stage, self.key)

    def track_and_align(self) -> _Faces:
        o, sel = self.options, self.sel
        landmarks, found = _track(self.clip, sel, self._stage("track"), o, self.hook)
        self._timed("track")
        if not found.any():
            raise VideoError(f"{self.clip}: no face found in any of the {len(sel)} frames (try detector='cnn' for small or turned faces)")
        missing = np.flatnonzero(~found).tolist()
        if missing:
            self.log(f"no face found in {len(missing)} frame(s) {_ranges(missing)}: their landmarks are interpolated")
        filled = fill_missing(landmarks, found)
        raw_quads = landmark_quads(filled)
        quads = smooth_quads(raw_quads, o.center_sigma, o.axes_sigma)
        transform = family_of(self.model).transform
        crops = self._stage("align", o.center_sigma, o.axes_sigma, self.size, *(["fixed first-frame crop"] if transform else []))
        _align(self.clip, sel, quads, crops, self.size, o, self.hook)
        transforms = fixed = raw_transforms = None
        if transform:  # stylegan3-editing's video_handler: every frame cut with the first frame's alignment
            fixed = crops / "fixed"
            fixed.mkdir(exist_ok=True)
            _align(self.clip, sel, np.repeat(quads[:1], len(quads), axis=0), fixed, self.size, o, self.hook)
            raw_transforms = frame_transforms(filled, quads, smooth=False)
            transforms = five_tap_smooth(raw_transforms).astype(np.float32)
        self._timed("align")
        return _Faces(filled, missing, raw_quads, quads, crops, transforms, fixed, raw_transforms)

    def latents(self, faces: _Faces):
        """``(codes [N, n_styles, D], PTI's generator delta or None, PTI's summary or None)``."""
        o = self.options
        codes = _encode(self.model, faces.crops, len(self.sel), self._stage("encode", _model_id(self.model), o.batch_size),
                        o, self.hook)
        self._timed("encode")
        if o.latent_sigma:
            codes = gaussian_smooth(codes, o.latent_sigma).astype(np.float32)
        folder = self._stage("pti", o.latent_sigma, o.pti, asdict(self.pti_config) if o.pti else None, o.lpips_weights,
                             *(["unsmoothed transforms"] if faces.raw_transforms is not None else []))
        if not o.pti:
            return codes, None, None
        # stylegan3-editing's run_pti_video.py fits the encoder's codes under the landmark transforms
        # as inference_on_video.py saved them (latents.npy, the transforms file): both unsmoothed.
        delta, summary = _tune(self.model, faces.targets, codes, folder, o, self.pti_config, self.lpips, self.hook,
                               faces.raw_transforms)
        self._timed("pti")
        return codes, delta, summary

    def render(self, faces: _Faces, codes: np.ndarray, delta, pti_summary: dict | None) -> _Results:
        o = self.options
        passes = pti_summary["passes"] if pti_summary else None  # a budget-stopped PTI continued: new renderings
        render = self._stage("render", [_file_id(named_file(d)[1]) for d in o.directions], [t.spec for _, t in self.edits],
                             passes, self.video_latents, list(o.expand))
        _render(self.model, delta, faces.crops, codes, self.edits, self.strengths, render, o, self.hook, faces.transforms,
                self.video_latents)
        self._timed("render")
        if not o.stitch:
            return _Results(render, render, "edit" if self.edits else "recon", wide=any(o.expand))
        folder = self._stage("stitch", asdict(o.stitch_config))
        crop_landmarks = np.stack([source_to_crop(faces.landmarks[k], faces.quads[k], self.size) for k in range(len(codes))])
        summary = _stitch(self.model, delta, faces.crops, codes, self.edits, self.strengths, crop_landmarks, folder, o, self.hook)
        self._timed("stitch")
        return _Results(render, folder, "stitch", summary)

    def write(self, out: Path, faces: _Faces, results: _Results) -> None:
        o, sel = self.options, self.sel
        span = sel.span(self.info)
        audio = self.clip if self.info.audio else None
        whole = sel.first == 0 and sel.stop == self.info.frames and sel.every == 1  # the track copied as it is
        self.audio_mode = None if audio is None else "copied" if whole and self.info.audio_codec in MP4_AUDIO else "aac"
        if audio is None:
            self.log(f"{self.clip} has no audio track: the result has none")
        bar = _bar(len(sel), "write", o.progress)
        quads, kind, wide, res = faces.paste_quads, results.kind, results.wide, self.model.output_size
        if wide:
            quads = np.stack([expanded_quad(q, self.model.output_size, o.expand) for q in quads])
            kind = f"wide_{kind}"
        frames = _result_frames(self.clip, sel, quads, results.folder, kind, o, self.hook, bar, res)
        write_mp4(out / RESULT, frames, self.fps, audio, span, o.crf, copy_audio=whole)
        bar.close()
        if o.side_by_side:
            bar = _bar(len(sel), "side by side", o.progress)
            frames = _side_frames(self.clip, sel, quads, results.render, results.folder, kind, o, bar,
                                  recon="wide_recon" if wide else "recon", res=res)
            write_mp4(out / SIDE_BY_SIDE, frames, self.fps, audio, span, o.crf, copy_audio=whole)
            bar.close()
        self._timed("write")

def _lpips(options: VideoOptions):
    if not options.lpips_weights:
        return None
    return LPIPSLoss(weights=options.lpips_weights).eval()


def _tune(model, crops: Path, codes: np.ndarray, folder: Path, options: VideoOptions, config: ClipTuneConfig, lpips, hook,
          transforms=None):
    final = folder / "generator_delta.safetensors"
    summary_path = folder / "summary.json"
    if final.is_file() and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if not summary.get("stopped_by_time_budget"):
            return load_generator_delta(final, model.decoder), summary
        # A run stopped by its time budget: this one continues from the checkpoint.
    asked = config
    if lpips is None and config.lpips_weight > 0:
        import dataclasses

        config = dataclasses.replace(config, lpips_weight=0.0)
    targets = torch.stack([torch.from_numpy(np.array(_crop(crops, k))).permute(2, 0, 1) for k in range(len(codes))])
    delta, summary = tune_clip(
        model, targets, torch.from_numpy(codes), config, folder / "state.pt", lpips,
        on_step=lambda done: hook("pti", done), progress=options.progress,
        extras=None if transforms is None else torch.from_numpy(transforms),
    )
    if lpips is None and asked.lpips_weight > 0:
        summary["note"] = "no LPIPS weights given: tuned on MSE only"
    save_generator_delta(final, delta, model.decoder, half=False)
    atomic_write_bytes(summary_path, json.dumps(summary, indent=1).encode())
    return load_generator_delta(final, model.decoder), summary


def frame_transforms(landmarks: np.ndarray, quads: np.ndarray, smooth: bool = True) -> np.ndarray:
    """``[N, 3, 3]`` float32: per frame, the inverse landmark transform between its aligned
    crop (``quads[k]``) and the first frame's crop (``quads[0]``), smoothed over time with
    stylegan3-editing's five-tap kernel (its ``smooth_ws`` on the landmark transforms) unless
    ``smooth`` is False."""
    raw = np.stack([crop_transform(landmarks[k], quads[k], quads[0]).inverse_transform for k in range(len(quads))])
    return (five_tap_smooth(raw) if smooth else raw).astype(np.float32)


def _ranges(ks: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"`` (at most 10 ranges shown)."""
    spans, start = [], ks[0]
    for a, b in zip(ks, ks[1:] + [None]):
        if b != a + 1:
            spans.append(f"{start}-{a}" if a > start else f"{start}")
            start = b
    return ", ".join(spans[:10]) + (", ..." if len(spans) > 10 else "")


def video_info(clip: str | Path, max_side: int = MAX_SIDE) -> VideoInfo:
    """The clip's layout (see :func:`instyle.video.media.probe`)."""
    return probe(clip, max_side)
