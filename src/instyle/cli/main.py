"""``instyle`` command-line entry point.

Each subcommand lives in its own module of this package exposing
``register(subparsers)`` (adds its parser and sets ``func``). Modules are listed in
:data:`COMMANDS`; a command whose optional dependencies are missing still shows in
``--help`` and explains what to install when run.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from instyle.version import __version__

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = [
    "quickstart",
    "encode",
    "convert",
    "export",
    "train",
    "serve",
    "align",
    "prepare",
    "mix",
    "interpolate",
    "edit",
    "directions",
    "evaluate",
    "video",
    "models",
]

EPILOG = """\
Typical use:
  instyle quickstart                         # random-weight demo on bundled photos (no downloads)
  instyle encode --checkpoint psp_ffhq_encode.pt photos/ --out results/
  instyle convert psp_ffhq_encode.pt models/psp_ffhq_encode

Run `instyle COMMAND --help` for the options of each command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instyle",
        description="pixel2style2pixel (pSp) and its successors e4e, ReStyle and HyperStyle: encode face images, "
        "sketches and label maps into StyleGAN2's W+ latent space and decode them back into photos.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"instyle {__version__}")
    parser.add_argument("--quiet", "-q", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"instyle.cli.{name}")
        module.register(sub)
    _add_quiet(sub)
    return parser


QUIET_HELP = "no progress bars or status lines on stderr (errors and the final result still print)"


def _add_quiet(sub: argparse._SubParsersAction) -> None:
    """``--quiet`` also after the command name (``instyle encode ... --quiet``), at every level."""
    for p in set(sub.choices.values()):
        if "--quiet" not in p._option_string_actions:
            p.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_quiet(action)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from instyle.utils.progress import quiet

    try:
        with quiet(args.quiet):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
