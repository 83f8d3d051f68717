"""Reading, converting and writing images -- robustly.

Every reader raises :class:`ImageLoadError` with a one-line reason that names the
file (corrupt, truncated, empty, not an image, too small, too large, unreadable),
so batch jobs can report it and continue. Writers are atomic (temporary file +
rename): an interrupted job never leaves a half-written image behind.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from instyle.utils.atomic import atomic_path
from instyle.utils.image import pil_to_tensor, tensor_to_pil  # noqa: F401  (the one home; re-exported)
from instyle.utils.image_file import MAX_PIXELS, MIN_SIDE, ImageLoadError, load_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageLoadError",
    "MAX_PIXELS",
    "MIN_SIDE",
    "InputFile",
    "collect_input_files",
    "collect_inputs",
    "output_names",
    "load_image",
    "save_image",
    "pil_to_tensor",
    "tensor_to_pil",
    "make_grid",
    "caption",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
#: latent files the latent-space commands (edit, mix, interpolate) also take from folders
LATENT_EXTENSIONS = (".npy", ".npz")


@dataclass(frozen=True)
class InputFile:
    """One input file of a batch job and the folder its output name is relative to.

    ``root`` is the folder given on the command line (or the fixed part of a glob, or the
    parent of a single file); ``rel`` is the POSIX path of the file inside it.
    """

    path: Path
    root: Path

    @property
    def rel(self) -> str:
        return self.path.relative_to(self.root).as_posix()


def _inside(path: Path, folders: Sequence[Path]) -> bool:
    if not folders:
        return False
    real = path.resolve()
    return any(real == f or f in real.parents for f in folders)


def _scan_folder(
    root: Path, recursive: bool, exclude: Sequence[Path], problems: list[str], extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> list[Path]:
    """Image files under ``root``, sorted; unreadable folders, broken links and special files are
    reported in ``problems``; ``exclude``d folders (resolved) are not entered."""
    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()

    def on_error(e: OSError) -> None:
        problems.append(f"{e.filename}: cannot read folder ({e.strerror or e})")

    for folder, dirs, files in os.walk(root, onerror=on_error, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen_dirs or _inside(Path(folder), exclude):
            dirs[:] = []  # a symlink loop, or the output folder of this job
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(dirs) if recursive else []
        for name in files:
            p = Path(folder) / name
            if p.suffix.lower() not in extensions or _inside(p, exclude):
                continue
            if p.is_symlink() and not p.exists():
                problems.append(f"{p}: broken symbolic link (its target {os.readlink(p)} does not exist)")
            elif not p.is_file():
                problems.append(f"{p}: not a regular file")
            else:
                found.append(p)
    return sorted(found)


def _glob_root(pattern: str) -> Path:
    """The leading folders of a glob pattern without wildcards (``photos/**/*.png`` -> ``photos``)."""
    parts = Path(pattern).expanduser().parts
    fixed = [q for q in itertools.takewhile(lambda q: not any(ch in q for ch in "*?["), parts)]
    return Path(*fixed) if fixed else Path(".")


def collect_input_files(
    inputs: Iterable[str | os.PathLike], recursive: bool = True, exclude: Iterable[str | os.PathLike] = (),
    latents: bool = False,
) -> tuple[list[InputFile], list[str]]:
    """Expand files, folders and glob patterns into de-duplicated :class:`InputFile` s.

    Folders contribute files with an image extension (with ``latents``, also ``.npy`` / ``.npz``
    latent files, for the commands that read them) (recursively by default, sorted), never
    entering the ``exclude`` folders (e.g. the job's output folder); explicit files are kept
    whatever their extension (they get a clear error later if not images).

    Returns:
        ``(files, problems)``: problems name inputs that matched nothing, unreadable
        folders, broken symbolic links and special files (one line each).
    """
    skip = [Path(e).expanduser().resolve() for e in exclude]
    out: list[InputFile] = []
    problems: list[str] = []
    for item in inputs:
        s = os.fspath(item)
        p = Path(s).expanduser()
        try:
            os.stat(p)
        except FileNotFoundError:
            pass  # a glob pattern, a broken link or a missing file: told apart below
        except OSError as e:  # e.g. inside a folder that cannot be searched
            problems.append(f"{p}: cannot read ({e.strerror or e})")
            continue
        except ValueError as e:  # e.g. an embedded NUL character
            problems.append(f"{s!r}: not a valid path ({e})")
            continue
        if p.is_dir():
            before = len(problems)
            inner = [e for e in skip if p.resolve() in e.parents]  # only folders strictly inside this input
            exts = (*IMAGE_EXTENSIONS, *LATENT_EXTENSIONS) if latents else IMAGE_EXTENSIONS
            found = _scan_folder(p, recursive, inner, problems, exts)
            if not found and len(problems) == before:
                problems.append(f"{p}: folder contains no images ({', '.join(exts)})")
            out.extend(InputFile(q, p) for q in found)
        elif p.exists():
            out.append(InputFile(p, p.parent))
        elif p.is_symlink():
            problems.append(f"{p}: broken symbolic link (its target {os.readlink(p)} does not exist)")
        elif any(ch in s for ch in "*?["):
            root = _glob_root(s)
            found = sorted(Path(m) for m in glob.glob(s, recursive=True) if Path(m).is_file() and not _inside(Path(m), skip))
            if not found:
                problems.append(f"{s}: pattern matched no files")
            out.extend(InputFile(q, root) for q in found)
        else:
            problems.append(f"{p}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for f in out:
        key = f.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems


def collect_inputs(inputs: Iterable[str | os.PathLike], recursive: bool = True) -> tuple[list[Path], list[str]]:
    """Like :func:`collect_input_files`, returning only the paths."""
    files, problems = collect_input_files(inputs, recursive)
    return [f.path for f in files], problems


def _strip_suffix(rel: str) -> str:
    head, _, name = rel.rpartition("/")
    stem = Path(name).stem or name
    return f"{head}/{stem}" if head else stem


def output_names(
    files: Sequence[InputFile],
    outputs: Callable[[str], Iterable[str]] = lambda name: [name],
    reserved: Iterable[str] = (),
) -> list[str]:
    """Output names for ``files`` whose written paths never collide, by construction.

    A name is the file's path relative to its input root without the suffix (``sub/face``).
    Files whose outputs (``outputs(name)``: the relative paths a job writes for one name)
    would collide -- with each other or with the ``reserved`` paths of the job -- keep more
    of their path, step by step, never a made-up counter: the suffix (``sub/face.jpg``),
    then the input root's name in front (``photos/sub/face``, ``photos/sub/face.jpg``), and
    last the file's whole path. Paths are compared case-insensitively (safe on macOS and
    Windows folders too).

    Raises:
        ValueError: naming inputs that would still write the same file (the same file
            given twice, or an input whose whole path is a reserved output).
    """
    def candidates(f: InputFile) -> list[str]:
        label = f.root.resolve().name or "root"
        whole = f.path.resolve().as_posix().lstrip("/").replace(":", "")  # the file's full path, last resort
        return [_strip_suffix(f.rel), f.rel, f"{label}/{_strip_suffix(f.rel)}", f"{label}/{f.rel}", whole]

    levels = [0] * len(files)
    options = [candidates(f) for f in files]
    taken = {r.casefold() for r in reserved}
    while True:
        owners: dict[str, list[tuple[int, str]]] = {}
        for i, opts in enumerate(options):
            for path in outputs(opts[levels[i]]):
                owners.setdefault(path.casefold(), []).append((i, path))
        clashes: set[int] = set()
        for key, members in owners.items():
            final = all(levels[i] == len(options[i]) - 1 for i, _ in members)
            if key in taken or (len(members) > 1 and not (final and len({p for _, p in members}) == len(members))):
                clashes.update(i for i, _ in members)  # whole paths differing by case only are distinct files here
        if not clashes:
            return [opts[levels[i]] for i, opts in enumerate(options)]
        movable = [i for i in clashes if levels[i] < len(options[i]) - 1]
        if not movable:
            others = [str(files[i].path) for i in sorted(clashes)]
            raise ValueError(
                f"these inputs would write the same output file: {', '.join(others)}; give them separate output folders"
            )
        for i in movable:
            levels[i] += 1


def save_image(img: Image.Image | torch.Tensor, path: str | os.PathLike, **save_kwargs) -> Path:
    """Write an image atomically; the format follows the suffix (PNG when none)."""
    if isinstance(img, torch.Tensor):
        img = tensor_to_pil(img)
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **save_kwargs)
    return path


def make_grid(
    rows: Sequence[Sequence[Image.Image | torch.Tensor]],
    cell: int | None = None,
    pad: int = 2,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Tile images into a grid, one list per row; cells are resized to ``cell`` (default:
    the first image's height)."""
    pil_rows = [[tensor_to_pil(i) if isinstance(i, torch.Tensor) else i for i in row] for row in rows]
    if not pil_rows or not any(pil_rows):
        raise ValueError("make_grid needs at least one image")
    first = next(i for row in pil_rows for i in row)
    cell = cell or first.size[1]
    ncols = max(len(r) for r in pil_rows)
    grid = Image.new("RGB", (ncols * cell + (ncols + 1) * pad, len(pil_rows) * cell + (len(pil_rows) + 1) * pad), background)
    for r, row in enumerate(pil_rows):
        for c, im in enumerate(row):
            im = im.convert("RGB")
            if im.size != (cell, cell):
                im = im.resize((cell, cell), Image.Resampling.BICUBIC)
            grid.paste(im, (pad + c * (cell + pad), pad + r * (cell + pad)))
    return grid


def caption(img: Image.Image, text: str) -> Image.Image:
    """A copy of ``img`` with ``text`` on a dark band along its bottom edge (size kept, so
    captioned cells still tile in :func:`make_grid`)."""
    from PIL import ImageDraw

    out = img.convert("RGB")
    draw = ImageDraw.Draw(out)
    band = max(12, out.size[1] // 10)
    draw.rectangle((0, out.size[1] - band, out.size[0], out.size[1]), fill=(0, 0, 0))
    draw.text((3, out.size[1] - band + (band - 10) // 2), text, fill=(255, 255, 255))
    return out
