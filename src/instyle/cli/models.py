"""``instyle models``: the model families and the checkpoints their authors publish."""

from __future__ import annotations

import argparse
import json

from instyle.cli.common import error

DESCRIPTION = """\
List the model families instyle loads and the checkpoint files their authors publish: the
family, task, domain, output size, the other files a checkpoint needs and where to download it.
Put downloaded files in the cache folder ($INSTYLE_CACHE or ~/.cache/instyle) to load them by
bare name (instyle.load("hyperstyle_ffhq.pt", w_encoder="faces_w_encoder.pt")).
"""


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model families and their published checkpoints",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", metavar="NAME", help="only this family's files (pSp, e4e, restyle, hyperstyle, sfe, ...)")
    p.add_argument("--task", metavar="NAME", help="only files trained for this task (inversion, sketch2face, ...)")
    p.add_argument("--json", action="store_true", help="print the entries as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instyle.interop.published import list_published
    from instyle.models.family import get_family, list_families

    family = args.family.lower() if args.family else None
    if family is not None and family not in list_families():
        error(f"--family={args.family!r}: not a model family; choose from {', '.join(list_families())}")
        return 2
    entries = list_published(family=family, task=args.task)
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
        return 0
    if family is None and args.task is None:
        print("families:")
        for name in list_families():
            f = get_family(name)
            needs = f", needs {' + '.join(f.companions)}" if f.companions else ""
            steps = f", {f.default_iterations} iterations by default" if f.iterative else ""
            carries = "" if f.encoding == "latent" else f" + {f.encoding}"
            print(f"  {name:<11} {f.title}: encodes to W+{carries}{steps}{needs}")
        print("published checkpoints:")
    for e in entries:
        needs = "  needs " + ", ".join(f"{k}={v}" for k, v in e.companions.items()) if e.companions else ""
        print(f"  {e.name:<34} {e.family:<10} {e.task:<16} {e.output_size:>4}px  {e.domain}{needs}")
    urls = sorted({e.url for e in entries})
    if urls:
        print("download pages: " + "  ".join(urls))
    if not entries:
        print("no published checkpoint matches")
    return 0
