"""Every count a user types is bounded where it is parsed, with the maximum in ``--help``."""

from __future__ import annotations

import pytest

from instyle.cli.main import build_parser, main

M = ["-c", "model", "--out", "o"]

# (argv, option): each asks for far more than the documented maximum
HUGE = [
    (["mix", "a.png", *M, "-n", "1000000000"], "--n-outputs"),
    (["mix", "a.png", *M, "--batch-size", "100000000"], "--batch-size"),
    (["interpolate", "a.png", "b.png", *M, "--steps", "1000000000"], "--steps"),
    (["interpolate", "a.png", "b.png", *M, "--grid-frames", "1000000"], "--grid-frames"),
    (["edit", "direction", "a.png", *M, "-d", "x.npy", "--batch-size", "99999999"], "--batch-size"),
    (["encode", "a.png", *M, "--iterations", "1000000"], "--iterations"),
    (["encode", "a.png", *M, "--refine", "optimize", "--refine-steps", "1000000000"], "--refine-steps"),
    (["encode", "a.png", *M, "--batch-size", "100000000"], "--batch-size"),
    (["encode", "a.png", *M, "--resize-factor", "100000"], "--resize-factor"),
    (["evaluate", "--checkpoint", "m", "--data", "d", "--out", "o", "--warmup", "100000000"], "--warmup"),
    (["evaluate", "--checkpoint", "m", "--data", "d", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["serve", "-c", "m", "--iterations", "100000"], "--iterations"),
    (["serve", "-c", "m", "--concurrency", "100000"], "--concurrency"),
    (["serve", "-c", "m", "--queue-size", "100000000"], "--queue-size"),
    (["serve", "-c", "m", "--port", "70000"], "--port"),
    (["align", "a.png", "--out", "o", "--workers", "100000"], "--workers"),
    (["export", "-c", "m", "--out", "o", "--iterations", "1000000"], "--iterations"),
    (["export", "-c", "m", "--out", "o", "--batch", "100000000"], "--batch"),
    (["video", "-c", "m", "clip.mp4", "--out", "o", "--every", "100000000"], "--every"),
    (["video", "-c", "m", "clip.mp4", "--out", "o", "--batch-size", "100000000"], "--batch-size"),
    (["video", "-c", "m", "clip.mp4", "--out", "o", "--workers", "100000"], "--workers"),
    (["video", "-c", "m", "clip.mp4", "--out", "o", "--pti-steps", "1000000000"], "--pti-steps"),
    (["video", "-c", "m", "clip.mp4", "--out", "o", "--stitch-steps", "1000000000"], "--stitch-steps"),
    (["video", "-c", "m", "clip.mp4", "--out", "o", "--crf", "99"], "--crf"),
    (["align", "a.png", "--out", "o", "--upsample", "50"], "--upsample"),
    (["align", "a.png", "--out", "o", "--size", "1000000"], "--size"),
    (["prepare", "sketch2face", "--photos", "p", "--out", "o", "--size", "1000000"], "--size"),
    (["quickstart", "--limit", "100000000"], "--limit"),
    (["mix", "a.png", *M, "-n", "-3"], "--n-outputs"),
    (["interpolate", "a.png", "b.png", *M, "--steps", "1"], "--steps"),
    (["mix", "a.png", *M, "-n", "2.5"], "--n-outputs"),
]


@pytest.mark.parametrize("argv, option", HUGE, ids=[f"{a[0]}{o}{a[-1]}" for a, o in HUGE])
def test_counts_out_of_bounds_are_refused_at_parse_time(argv, option, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    line = err.strip().splitlines()[-1]
    assert option in line and "an integer in" in line and "Traceback" not in err, err


@pytest.mark.parametrize("command, option", [(["mix"], "--n-outputs"), (["interpolate"], "--steps"),
                                             (["encode"], "--iterations"), (["encode"], "--refine-steps")])
def test_help_documents_the_maximum(command, option):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command[0]]
    text = " ".join(sub.format_help().split())
    i = text.rindex(option + " ")  # the option's own entry, after the usage line
    assert "accepted: " in text[i : i + 300], text[i : i + 300]


@pytest.mark.parametrize(
    "family, field",
    [("psp", "batch_size"), ("psp", "test_batch_size"), ("psp", "workers"), ("psp", "test_workers"),
     ("psp", "image_size"), ("psp", "output_size"), ("psp", "max_steps"), ("psp", "input_nc"), ("psp", "val_max_batches"),
     ("psp", "image_interval"), ("restyle", "n_iters_per_batch"), ("e4e", "w_pool_size"), ("e4e", "d_reg_every")],
)
def test_training_counts_are_bounded(family, field):
    """``train --set KEY=VALUE`` and a run's config.json: a count of 2**40 is refused, naming the key."""
    import dataclasses

    from instyle.training.config import TrainConfig
    from instyle.utils.config import ConfigError

    base = TrainConfig()
    if family == "restyle":
        base = dataclasses.replace(base, family="restyle", encoder_type="BackboneEncoder", start_from_latent_avg=True)
    elif family == "e4e":
        base = dataclasses.replace(base, family="e4e", encoder_type="Encoder4Editing")
    with pytest.raises(ConfigError, match=rf"{field}=1099511627776 must be an integer in \[\d+, \d+\]"):
        dataclasses.replace(base, **{field: 2**40})
