"""``instyle video``: invert, edit and paste back a face through a whole clip."""

from __future__ import annotations

import argparse

from instyle.cli.common import MAX_BATCH, MAX_WORKERS, add_count, add_device_arg, error
from instyle.cli.refining import MAX_REFINE_STEPS
from instyle.errors import InstyleError

#: Largest --every: keep one frame in this many.
MAX_FRAME_STEP = 10_000

DESCRIPTION = """\
Track the face of CLIP, crop it smoothly (STIT's temporal smoothing), encode every frame,
optionally tune one generator on all frames (--pti), edit, optionally tune each frame's
stitching (--stitch), paste back and write OUT/result.mp4
(the clip's frames and fps, its audio) with OUT/report.json and OUT/report.png (crop motion,
flicker, reconstruction per frame, frames whose face was interpolated).

  instyle video -c psp_ffhq_encode.pt clip.mp4 --out out/
  instyle video -c e4e_ffhq_encode.pt clip.mp4 --out out/ -d age=age.pt --edit age=0:0,2s:3,4s:3 --side-by-side
  instyle video -c e4e_ffhq_encode.pt clip.mp4 --out out/ -d smile.npy --edit smile=2 --pti --pti-steps 50

Edits: NAME[:COMPONENT]=STRENGTH (constant) or NAME=TIME:STRENGTH,... key-framed, TIME a
frame number or seconds (2s); the strength moves linearly between keys. Every stage is
cached in OUT/cache: a stopped run resumes where it stopped with the same result.

Encoders over StyleGAN3 work as stylegan3-editing's video pipeline: every frame is encoded
from its aligned crop and rendered under its landmark transform into the first frame's crop
(transforms smoothed over time with the original's five-tap kernel), which is pasted back;
the codes are post-processed as the original's (fine W+ rows averaged over the clip, then
the five-tap smoothing); --pti fits those crops under the unsmoothed transforms with the
original's video PTI settings (350 Adam steps on shuffled batches of 4, lr 3e-4, LPIPS 1 +
L2 1); --expand L,R,T,B renders that many generator pixels more around the crop (the
original's field-of-view expansion) and pastes the wider view back; --stitch is not
available for them.

  instyle video -c restyle_pSp_ffhq.pt clip.mp4 --out out/ --pti --expand 128,128,64,0
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("video", help="invert, edit and paste back a face through a video clip",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("clip", metavar="CLIP", help="a video file (constant frame rate)")
    p.add_argument("--checkpoint", "-c", required=True,
                   help="pSp, e4e, ReStyle, HyperStyle or ReStyle-over-StyleGAN3 checkpoint: official .pt or an instyle "
                   "model folder")
    p.add_argument("--out", "-o", required=True, help="output folder (result.mp4, report.json, report.png, cache/)")
    p.add_argument("--w-encoder", metavar="PATH", help="HyperStyle only: the W-encoder checkpoint the model needs")
    p.add_argument("--generator", metavar="PATH",
                   help="encoders over StyleGAN3 only: a replacement StyleGAN3 generator (e.g. a PTI-tuned one)")
    p.add_argument("--direction", "-d", action="append", default=[], metavar="[NAME=]FILE",
                   help="edit file: .npy, InterFaceGAN .pt, GANSpace PCA .pt, SeFa .npz (repeatable)")
    p.add_argument("--edit", "-e", action="append", default=[], metavar="NAME[:COMP]=S|T:S,...",
                   help="edit strength, constant (age=3) or key-framed (age=0:0,2s:3,4s:3) (repeatable)")
    p.add_argument("--start", type=float, help="first second of the clip to use")
    p.add_argument("--end", type=float, help="second of the clip to stop at")
    add_count(p, "--every", minimum=1, maximum=MAX_FRAME_STEP, default=1, help="use every N-th frame (output at fps / N; default 1)")
    p.add_argument("--detector", default="auto", choices=["auto", "hog", "cnn"], help="dlib face detector (default: auto)")
    p.add_argument("--center-sigma", type=float, default=1.0, help="smoothing of the crop centre over time, frames (default 1)")
    p.add_argument("--axes-sigma", type=float, default=3.0, help="smoothing of the crop's scale and rotation, frames (default 3)")
    p.add_argument("--latent-sigma", type=float, default=0.0, help="smoothing of the codes over time, frames (default 0: none)")
    add_count(p, "--batch-size", minimum=1, maximum=MAX_BATCH, default=4, help="frames per encoder pass (default 4)")
    add_count(p, "--workers", minimum=1, maximum=MAX_WORKERS, default=1,
              help="threads detecting faces (default 1; same result with more)")
    p.add_argument("--pti", action="store_true",
                   help="tune one generator on all frames (pivotal tuning; the model family's published settings: STIT's, "
                   "or stylegan3-editing's for encoders over StyleGAN3)")
    add_count(p, "--pti-steps", minimum=1, maximum=MAX_REFINE_STEPS, default=None,
              help="PTI passes over all frames (default 300, as STIT); encoders over StyleGAN3: Adam steps on batches of "
              "4 frames (default 350, as stylegan3-editing)")
    p.add_argument("--pti-lr", type=float, help="PTI learning rate (default 3e-5, as STIT; StyleGAN3: 3e-4)")
    p.add_argument("--pti-time-budget", type=float, help="stop PTI after this many seconds (resumable)")
    p.add_argument("--pti-locality", type=float,
                   help="weight of PTI's locality regulariser (default 0: off, as STIT)")
    p.add_argument("--stitch", action="store_true",
                   help="STIT's stitching tuning: per frame, tune the generator so the edit meets the frame around the face")
    add_count(p, "--stitch-steps", minimum=1, maximum=MAX_REFINE_STEPS, default=100,
              help="stitching tuning steps per frame (default 100, as STIT)")
    p.add_argument("--expand", type=_expansion, default=(0, 0, 0, 0), metavar="L,R,T,B",
                   help="encoders over StyleGAN3: render this many generator pixels more around the crop (left, right, "
                   "top, bottom; stylegan3-editing's field-of-view expansion) and paste the wider view back (default 0,0,0,0)")
    p.add_argument("--side-by-side", action="store_true", help="also write side_by_side.mp4: source | reconstruction | edit")
    p.add_argument("--feather", type=float, default=0.1, help="paste-back blend width, fraction of the crop (default 0.1)")
    add_count(p, "--crf", minimum=0, maximum=51, default=18, help="H.264 quality, lower is better (default 18)")
    p.add_argument("--lpips-weights", metavar="PATH", help="LPIPS backbone weights: per-frame LPIPS, and PTI's LPIPS term")
    p.add_argument("--identity", metavar="SPEC", help="per-frame identity similarity: dlib or arcface:PATH")
    p.add_argument("--seed", type=int, default=0, help="seed of PTI's random codes (default 0)")
    add_device_arg(p)
    p.set_defaults(func=run)


def _expansion(text: str) -> tuple[int, ...]:
    """``L,R,T,B`` (or one number for all four sides) -> four non-negative integers."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1:
        parts *= 4
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 0 or max(values) > 4096:
        raise argparse.ArgumentTypeError(f"{text!r}: give L,R,T,B (or one number), integers in [0, 4096] pixels")
    return values


def run(args: argparse.Namespace) -> int:
    from instyle.interop import load_psp
    from instyle.utils.device import resolve_device
    from instyle.utils.progress import say
    from instyle.video import StitchConfig, VideoOptions, clip_tune_config, edit_video

    try:
        companions = {k: v for k, v in (("w_encoder", args.w_encoder), ("generator", args.generator)) if v}
        model = load_psp(args.checkpoint, device=resolve_device(args.device), **companions).eval()
        pti_config = clip_tune_config(model, steps=args.pti_steps, lr=args.pti_lr, locality_weight=args.pti_locality,
                                      time_budget=args.pti_time_budget, seed=args.seed)
        options = VideoOptions(
            start=args.start, end=args.end, every=args.every, detector=args.detector,
            center_sigma=args.center_sigma, axes_sigma=args.axes_sigma, latent_sigma=args.latent_sigma,
            batch_size=args.batch_size, workers=args.workers, directions=tuple(args.direction), edits=tuple(args.edit),
            pti=args.pti, pti_config=pti_config,
            stitch=args.stitch, stitch_config=StitchConfig(steps=args.stitch_steps), side_by_side=args.side_by_side,
            expand=args.expand, feather=args.feather, crf=args.crf,
            lpips_weights=args.lpips_weights, identity=args.identity, progress=True,
        )
        edit_video(model, args.clip, args.out, options, log=say)
    except (InstyleError, OSError) as e:
        error(str(e).splitlines()[0] if str(e) else type(e).__name__)
        return 1
    print(f"wrote {args.out}/result.mp4 and {args.out}/report.json")
    return 0
