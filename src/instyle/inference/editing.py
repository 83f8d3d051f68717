"""Latent editing: directions, layer-wise style combination and local (input-space) edits.

* **Directions** (InterFaceGAN, GANSpace, ... that users bring): ``w + s · d`` for a range of
  strengths ``s``, optionally on a subset of layers::

      d = load_direction("smile.npy")                            # [512] or [n_styles, 512]
      ws = apply_direction(w_plus, d, strengths=[-3, 0, 3], layers=range(0, 8))

* **Published edit files** (:func:`load_edit`, kind read from the content): InterFaceGAN
  tensors, GANSpace PCA dicts, direction sets such as SeFa's; named edits like
  ``age=-3..3:7`` or ``ganspace:54,7,8=20`` (:func:`parse_edit`, :func:`edit_codes`).

* **Style combination**: take some layers of one encoded image from another
  (``combine_styles(w_a, w_b, layers=range(0, 7))``: B's coarse styles on A).

* **Local editing** (the paper's Sec. 4.3): edit the *input* -- a label map or a sketch --
  and encode it again, so only that part of the face changes. Label maps are integer arrays
  ``[H, W]`` of class ids; :func:`transplant_labels` takes some classes' region from another
  map, :func:`paint_labels` sets a region to one class, :func:`paste_region` copies any
  region (a box or a mask) of another image, e.g. a sketch.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from instyle.errors import InputError
from instyle.inference.numpy_files import read_numpy_file
from instyle.utils.files import describe_file, open_regular_file

__all__ = [
    "load_direction",
    "apply_direction",
    "LatentDirection",
    "GANSpacePCA",
    "DirectionSet",
    "load_edit",
    "named_file",
    "EditSpec",
    "parse_edit",
    "resolve_edit",
    "edit_codes",
    "combine_styles",
    "parse_strengths",
    "label_map_to_array",
    "transplant_labels",
    "paint_labels",
    "box_mask",
    "paste_region",
]

Box = tuple[int, int, int, int]


# --------------------------------------------------------------------------- directions


def load_direction(path: str | os.PathLike, n_styles: int | None = None, style_dim: int | None = None) -> torch.Tensor:
    """Read a latent direction: a ``.npy`` of shape ``[D]``, ``[1, D]`` or ``[n_styles, D]``.

    Returns ``[D]`` or ``[n_styles, D]`` float32 (not normalised: strengths are in the units of
    the file, as the direction's authors meant them).

    Raises:
        InputError: unreadable file (checked by :func:`~instyle.inference.numpy_files.read_numpy_file`
            before anything is allocated) or a shape that does not fit ``n_styles`` / ``style_dim``.
    """
    path = Path(path)
    arr = read_numpy_file(path, "direction")
    if isinstance(arr, dict):
        if len(arr) != 1:
            raise InputError(f"{path}: a .npz direction must hold exactly one array, found {sorted(arr)[:20]}")
        (arr,) = arr.values()
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path}: a direction must be numeric [D] or [n_styles, D], got {arr.dtype} {arr.shape}")
    if style_dim is not None and arr.shape[-1] != style_dim:
        raise ValueError(f"{path}: direction has {arr.shape[-1]} components but the model's styles have {style_dim}")
    if n_styles is not None and arr.ndim == 2 and arr.shape[0] != n_styles:
        raise ValueError(f"{path}: direction has {arr.shape[0]} rows but the model has {n_styles} style layers")
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: direction contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


#: Most strengths one edit may ask for (each is a full image).
MAX_STRENGTHS = 256


def parse_strengths(spec: str) -> list[float]:
    """``"-3..3:7"`` (start..stop:count, inclusive; count 7 when left out) or ``"-2,0,2"`` ->
    1 to :data:`MAX_STRENGTHS` finite floats. The one range syntax of every command (``--strengths``,
    ``--edit NAME=VALUES``, the demo); the older ``start:stop:count`` is still read."""
    try:
        if ".." in spec:
            lo, _, rest = spec.partition("..")
            hi, _, count = rest.partition(":")
            spec = f"{lo}:{hi}:{count.strip() or 7}"
        if ":" in spec:
            start, stop, count = spec.split(":")
            n = int(count)
            if not 1 <= n <= MAX_STRENGTHS:
                raise ValueError
            values = np.linspace(float(start), float(stop), n).tolist()
        else:
            values = [float(s) for s in spec.split(",") if s.strip()]
        if not values or len(values) > MAX_STRENGTHS or not np.isfinite(values).all():
            raise ValueError
        return values
    except ValueError:
        raise ValueError(
            f"strengths {spec!r}: give 'start..stop:count' (e.g. -3..3:7, count 1-{MAX_STRENGTHS}) "
            "or a list of finite numbers like -2,0,2"
        ) from None


def _layer_mask(layers: Sequence[int] | None, n_styles: int, device) -> torch.Tensor:
    mask = torch.zeros(n_styles, 1, device=device)
    idx = range(n_styles) if layers is None else list(layers)
    for i in idx:
        if not 0 <= i < n_styles:
            raise ValueError(f"layer {i} is outside the model's 0-based style layers [0, {n_styles - 1}]")
        mask[i] = 1.0
    return mask


def apply_direction(
    w_plus: torch.Tensor,
    direction: torch.Tensor,
    strengths: Sequence[float],
    layers: Sequence[int] | None = None,
) -> torch.Tensor:
    """``w + s · d`` for each strength ``s`` (on ``layers`` only, all by default).

    Args:
        w_plus: one code ``[n_styles, D]`` (or ``[1, n_styles, D]``).
        direction: ``[D]`` (same for all layers) or ``[n_styles, D]``.
        strengths: the values of ``s``; ``s = 0`` returns ``w_plus`` unchanged.
        layers: 0-based layers to edit (None = all).

    Returns:
        ``[len(strengths), n_styles, D]``.
    """
    if w_plus.ndim == 3 and w_plus.shape[0] == 1:
        w_plus = w_plus[0]
    if w_plus.ndim != 2:
        raise ValueError(f"apply_direction edits one code [n_styles, D], got {tuple(w_plus.shape)}")
    n, d = w_plus.shape
    direction = torch.as_tensor(direction).to(w_plus)
    if direction.ndim == 1:
        direction = direction[None].expand(n, d)
    if direction.shape != (n, d):
        raise ValueError(f"direction of shape {tuple(direction.shape)} does not fit codes [{n}, {d}]")
    strengths = list(strengths)
    if not strengths:
        raise ValueError("apply_direction needs at least one strength")
    step = direction * _layer_mask(layers, n, w_plus.device).to(w_plus)
    s = torch.tensor(strengths, dtype=w_plus.dtype, device=w_plus.device)[:, None, None]
    return w_plus[None] + s * step[None]


# --------------------------------------------------------------------------- published edit files

_NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class LatentDirection:
    """An InterFaceGAN-style direction (``age.pt``, ``smile.pt``, ``pose.pt``, a ``.npy``):
    edited codes are ``w + s · vector`` on every style (``vector [D]``) or per style
    (``vector [n_styles, D]``)."""

    vector: torch.Tensor
    source: str = ""
    kind: str = "interfacegan"

    def check_fits(self, n_styles: int, style_dim: int) -> None:
        _check_vector(self.vector, n_styles, style_dim, self.source)

    def edit(self, w_plus: torch.Tensor, strengths: Sequence[float], component=None, layers=None) -> torch.Tensor:
        if component:
            raise ValueError(f"{self.source}: a single direction takes no component, got {component}")
        return apply_direction(w_plus, self.vector, strengths, layers)


@dataclass(frozen=True)
class GANSpacePCA:
    """A GANSpace PCA file (``ffhq_pca.pt``, ``cars_pca.pt``): ``mean [D]``, ``comp [K, D]``,
    ``std [K]``. An edit ``(idx, start, end) = strength`` moves the code to the coordinate
    ``strength`` along component ``idx`` -- measured on the FIRST style only, as the e4e
    code does -- on styles ``start…end-1``: strength is a target, not a step."""

    mean: torch.Tensor
    comp: torch.Tensor
    std: torch.Tensor
    source: str = ""
    kind: str = "ganspace"

    def check_fits(self, n_styles: int, style_dim: int) -> None:
        if self.mean.shape[-1] != style_dim:
            raise ValueError(f"{self.source}: PCA has {self.mean.shape[-1]} components per style but the model has {style_dim}")

    def coordinate(self, w_plus: torch.Tensor, idx: int) -> torch.Tensor:
        """Coordinate of a code ``[n_styles, D]`` along component ``idx`` in units of its std."""
        comp, std = self.comp.to(w_plus), self.std.to(w_plus)
        return ((w_plus[0] - self.mean.to(w_plus)) * comp[idx]).sum() / std[idx]

    def edit(self, w_plus: torch.Tensor, strengths: Sequence[float], component=None, layers=None) -> torch.Tensor:
        """``component = (idx, start, end)``; returns ``[len(strengths), n_styles, D]``."""
        if layers is not None:
            raise ValueError(f"{self.source}: a GANSpace edit names its layers in the component (idx,start,end)")
        w_plus = _one_code(w_plus)
        idx, start, end = self._component(component, w_plus.shape[0])
        comp, std = self.comp.to(w_plus)[idx], self.std.to(w_plus)[idx]
        target = torch.tensor(list(strengths), dtype=w_plus.dtype, device=w_plus.device)
        if target.numel() == 0:
            raise ValueError("a GANSpace edit needs at least one strength")
        delta = (target - self.coordinate(w_plus, idx))[:, None] * comp[None] * std  # [S, D]
        out = w_plus[None].repeat(len(target), 1, 1)
        out[:, start:end] += delta[:, None]
        return out

    def _component(self, component, n_styles: int) -> tuple[int, int, int]:
        if component is None or len(component) != 3:
            raise ValueError(f"{self.source}: a GANSpace edit needs idx,start,end (e.g. 54,7,8), got {component}")
        idx, start, end = (int(c) for c in component)
        if not 0 <= idx < self.comp.shape[0]:
            raise ValueError(f"{self.source}: component {idx} is not one of 0..{self.comp.shape[0] - 1}")
        if not 0 <= start < end <= n_styles:
            raise ValueError(
                f"GANSpace edit on styles {start}..{end} (end exclusive): need 0 <= start < end <= {n_styles}, "
                f"the model's style count"
            )
        return idx, start, end


@dataclass(frozen=True)
class DirectionSet:
    """Several directions ``[K, D]`` for fixed styles, e.g. SeFa's eigenvectors
    (``instyle directions sefa``): edit ``k`` is ``w + s · directions[k]`` on ``layers``."""

    directions: torch.Tensor
    layers: tuple[int, ...] | None = None
    source: str = ""
    kind: str = "sefa"

    def check_fits(self, n_styles: int, style_dim: int) -> None:
        _check_vector(self.directions[0], n_styles, style_dim, self.source)
        if self.layers and max(self.layers) >= n_styles:
            raise ValueError(f"{self.source}: styles {list(self.layers)} do not all exist in a model with {n_styles}")

    def edit(self, w_plus: torch.Tensor, strengths: Sequence[float], component=None, layers=None) -> torch.Tensor:
        if component is None or len(component) != 1 or not 0 <= int(component[0]) < len(self.directions):
            raise ValueError(f"{self.source}: name one direction 0..{len(self.directions) - 1}, got {component}")
        use = self.layers if layers is None else layers
        return apply_direction(w_plus, self.directions[int(component[0])], strengths, use)


Edit = LatentDirection | GANSpacePCA | DirectionSet


def _one_code(w_plus: torch.Tensor) -> torch.Tensor:
    if w_plus.ndim == 3 and w_plus.shape[0] == 1:
        w_plus = w_plus[0]
    if w_plus.ndim != 2:
        raise ValueError(f"edits apply to one code [n_styles, D], got {tuple(w_plus.shape)}")
    return w_plus


def _check_vector(v: torch.Tensor, n_styles: int, style_dim: int, source: str) -> None:
    if v.shape[-1] != style_dim:
        raise ValueError(f"{source}: direction has {v.shape[-1]} components but the model's styles have {style_dim}")
    if v.ndim == 2 and v.shape[0] != n_styles:
        raise ValueError(f"{source}: direction has {v.shape[0]} rows but the model has {n_styles} style layers")


def _float_tensor(obj, path: Path, what: str) -> torch.Tensor:
    if not isinstance(obj, torch.Tensor) or not obj.is_floating_point():
        raise ValueError(f"{path}: {what} must be a float tensor, got {type(obj).__name__}")
    if not torch.isfinite(obj).all():
        raise ValueError(f"{path}: {what} contains NaN or infinite values")
    return obj.detach().float().cpu()


def _edit_from_torch(obj, path: Path) -> Edit:
    if isinstance(obj, dict) and {"mean", "comp", "std"} <= set(obj):
        mean, comp, std = (_float_tensor(obj[k], path, k) for k in ("mean", "comp", "std"))
        mean, comp = mean.reshape(-1), comp.reshape(comp.shape[0], -1)
        if comp.shape[1] != mean.numel() or std.reshape(-1).shape[0] != comp.shape[0]:
            raise ValueError(f"{path}: GANSpace shapes disagree: mean {tuple(mean.shape)}, comp {tuple(comp.shape)}, std {tuple(std.shape)}")
        if not (std > 0).all():
            raise InputError(f"{path}: GANSpace 'std' must be positive (edits divide by it), found {float(std.min())}")
        return GANSpacePCA(mean, comp, std.reshape(-1), str(path))
    if isinstance(obj, torch.Tensor):
        v = _float_tensor(obj, path, "the direction")
        while v.ndim > 1 and v.shape[0] == 1:
            v = v[0]
        if v.ndim not in (1, 2):
            raise ValueError(f"{path}: a direction must be [D], [1, D] or [1, n_styles, D], got {tuple(obj.shape)}")
        return LatentDirection(v, str(path))
    found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(
        f"{path}: not an edit file: expected a direction tensor or a GANSpace dict with mean/comp/std, found {found}"
    )


def _edit_from_npz(path: Path) -> Edit:
    z = read_numpy_file(path, "edit file", text=("kind", "meta"))
    if "directions" not in z:
        return LatentDirection(load_direction(path), str(path))
    dirs = torch.from_numpy(np.array(z["directions"], dtype=np.float32))
    if dirs.ndim != 2 or len(dirs) == 0 or not torch.isfinite(dirs).all():
        raise InputError(f"{path}: member 'directions' must be finite [K, D] with K >= 1, got {tuple(dirs.shape)}")
    layers = None
    if "layers" in z:
        raw = z["layers"]
        if raw.ndim != 1 or raw.dtype.kind not in "iu" or (raw < 0).any() or len(raw) > 4096:
            raise InputError(f"{path}: member 'layers' must be non-negative style indices [n], got {raw.dtype} {raw.tolist()[:8]}")
        layers = tuple(int(i) for i in raw)
    kind = "sefa"
    if "kind" in z:
        if z["kind"].ndim != 0 or z["kind"].dtype.kind != "U":
            raise InputError(f"{path}: member 'kind' must be one string, got {z['kind'].dtype} {z['kind'].shape}")
        kind = str(z["kind"][()])[:40]
    return DirectionSet(dirs, layers, str(path), kind)


def _is_npz(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return all(n.endswith(".npy") for n in z.namelist())


def named_file(spec: str) -> tuple[str, str]:
    """``"NAME=FILE"`` -> ``(NAME, FILE)``; a plain file (even one with ``=`` in its name)
    is named after its stem."""
    name, sep, path = spec.partition("=")
    if not sep or not name or Path(spec).exists():
        return Path(spec).stem, spec
    return name, path


def load_edit(path: str | os.PathLike, n_styles: int | None = None, style_dim: int | None = None) -> Edit:
    """Read any edit file, its kind detected from the content (not the name):

    * a ``.npy`` direction -> :class:`LatentDirection`;
    * a ``.npz`` with ``directions [K, D]`` (and ``layers``), e.g. SeFa -> :class:`DirectionSet`;
    * a PyTorch file (read weights-only on the CPU, nothing executed; CUDA-tagged storages
      are mapped): a tensor ``[1, D]`` / ``[1, n_styles, D]`` (InterFaceGAN) ->
      :class:`LatentDirection`, a dict ``mean / comp / std`` (GANSpace) -> :class:`GANSpacePCA`.

    With ``n_styles`` / ``style_dim`` the edit is checked against the model.

    Raises:
        ValueError: unreadable file, another content, or shapes that do not fit.
    """
    from instyle.interop.safe_load import safe_torch_load

    path = Path(path)
    with open_regular_file(path, "edit file") as f:
        head = f.read(len(_NPY_MAGIC))
    if head == _NPY_MAGIC:
        edit: Edit = LatentDirection(load_direction(path), str(path))
    elif _is_npz(path):
        edit = _edit_from_npz(path)
    elif head[:2] == b"PK" or head[:1] == b"\x80":  # a zip-format or legacy (pickle) PyTorch file
        edit = _edit_from_torch(safe_torch_load(path, "edit file"), path)
    else:
        raise InputError(f"{path}: not an edit file: {describe_file(path)}; expected a .npy/.npz direction, a SeFa .npz "
                         "or a PyTorch .pt (InterFaceGAN direction, GANSpace PCA)")
    if n_styles is not None and style_dim is not None:
        edit.check_fits(n_styles, style_dim)
    return edit


# --------------------------------------------------------------------------- named edits


@dataclass(frozen=True)
class EditSpec:
    """One named edit: ``name[:component]=values`` (see :func:`parse_edit`)."""

    name: str
    component: tuple[int, ...] | None
    strengths: tuple[float, ...]

    def label(self, strength: float) -> str:
        comp = f":{','.join(map(str, self.component))}" if self.component else ""
        return f"{self.name}{comp}={strength:+g}"

    @property
    def slug(self) -> str:
        comp = f"_{'_'.join(map(str, self.component))}" if self.component else ""
        return f"{self.name}{comp}"


def parse_edit(spec: str) -> EditSpec:
    """``age=-3..3:7`` (7 values from -3 to 3), ``smile=2``, ``pose=-1,0,1``,
    ``ganspace:54,7,8=20`` (GANSpace component 54 on styles 7..7, to coordinate 20),
    ``sefa:0=-5..5:5`` (direction 0 of a direction set); VALUES as :func:`parse_strengths`."""
    name, sep, values = spec.partition("=")
    name, _, comp = name.strip().partition(":")
    if not sep or not name or not values.strip():
        raise ValueError(f"edit {spec!r}: write NAME=VALUES, e.g. age=-3..3:7, smile=2 or ganspace:54,7,8=20")
    component = None
    if comp:
        try:
            component = tuple(int(c) for c in comp.split(","))
        except ValueError:
            raise ValueError(f"edit {spec!r}: the component after ':' must be integers, e.g. ganspace:54,7,8=20") from None
    return EditSpec(name, component, tuple(parse_strengths(values.strip())))


def resolve_edit(name: str, edits: dict[str, Edit]) -> Edit:
    """The loaded edit called ``name``, or the only one of kind ``name`` (``ganspace``,
    ``interfacegan``, ``sefa``)."""
    if name in edits:
        return edits[name]
    of_kind = [e for e in edits.values() if e.kind == name]
    if len(of_kind) == 1:
        return of_kind[0]
    raise ValueError(
        f"edit {name!r}: no loaded direction has that name{' (several of that kind)' if of_kind else ''}; "
        f"loaded: {', '.join(sorted(edits)) or 'none'}"
    )


def edit_codes(w_plus: torch.Tensor, edit: Edit, spec: EditSpec, layers: Sequence[int] | None = None) -> torch.Tensor:
    """The codes of one named edit: ``[len(spec.strengths), n_styles, D]``."""
    return edit.edit(w_plus, spec.strengths, spec.component, layers)


def combine_styles(w_a: torch.Tensor, w_b: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """``w_a`` with the styles of ``layers`` (0-based) taken from ``w_b``.

    Shapes ``[n_styles, D]`` or ``[B, n_styles, D]`` (both the same); returns the shape of ``w_a``.
    Coarse layers (0-3) carry pose and face shape, middle ones (4-7) features and expression,
    fine ones (8+) colours and micro-structure (StyleGAN's observation, used in the paper).
    """
    if w_a.shape != w_b.shape or w_a.ndim not in (2, 3):
        raise ValueError(f"combine_styles needs two codes of one shape, got {tuple(w_a.shape)} and {tuple(w_b.shape)}")
    n = w_a.shape[-2]
    keep = _layer_mask(layers, n, w_a.device).to(w_a)
    return w_a * (1 - keep) + w_b.to(w_a) * keep


# --------------------------------------------------------------------------- local editing


def label_map_to_array(image: Image.Image | np.ndarray, label_nc: int | None = None) -> np.ndarray:
    """A label map -> ``[H, W]`` int64 class ids.

    Palette (``P``) and grayscale (``L``) images hold the ids directly (the CelebAMask-HQ
    files the original trains on); colour-coded RGB maps are decoded with the seg2face
    task's CelebAMask-HQ palette.
    """
    if isinstance(image, np.ndarray):
        arr = image
    elif image.mode in ("P", "L", "I", "I;16"):
        arr = np.asarray(image)
    else:
        from instyle.tasks.transforms.labels import labels_from_image

        arr = labels_from_image(image, label_nc or 19)
    if arr.ndim != 2:
        raise ValueError(f"a label map must be [H, W] class ids, got shape {arr.shape}")
    arr = arr.astype(np.int64)
    if label_nc is not None and (arr.min() < 0 or arr.max() >= label_nc):
        raise ValueError(f"label map has ids in [{arr.min()}, {arr.max()}] but the model knows {label_nc} classes")
    return arr


def transplant_labels(target: np.ndarray, source: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Take the region of ``classes`` from ``source``: inside the union of those classes'
    pixels in either map, ``source``'s labels replace ``target``'s (so ``target``'s old
    hair disappears where ``source`` has none, and ``source``'s hair appears where it has).
    Everything else keeps ``target``'s labels. Both ``[H, W]`` int arrays of one size."""
    if target.shape != source.shape:
        raise ValueError(f"label maps differ in size: {target.shape} vs {source.shape}; resize them to one size first")
    classes = list(classes)
    region = np.isin(target, classes) | np.isin(source, classes)
    return np.where(region, source, target)


def box_mask(shape: tuple[int, int], box: Box) -> np.ndarray:
    """``[H, W]`` bool mask of the box ``(left, top, right, bottom)`` in pixels (right/bottom exclusive)."""
    h, w = shape
    left, top, right, bottom = box
    if not (0 <= left < right <= w and 0 <= top < bottom <= h):
        raise ValueError(f"box {box} is not inside an image of {w}x{h} (left, top, right, bottom)")
    mask = np.zeros((h, w), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def paint_labels(labels: np.ndarray, mask: np.ndarray, label: int) -> np.ndarray:
    """``labels`` with every pixel of the bool ``mask`` set to class ``label``."""
    if mask.shape != labels.shape:
        raise ValueError(f"mask {mask.shape} and label map {labels.shape} differ in size")
    out = labels.copy()
    out[mask.astype(bool)] = label
    return out


def paste_region(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``target`` with the pixels under the bool ``mask [H, W]`` copied from ``source``
    (images ``[H, W]`` or ``[H, W, C]`` of one size: sketches, label maps, photos)."""
    if target.shape != source.shape:
        raise ValueError(f"images differ in size: {target.shape} vs {source.shape}; resize them to one size first")
    if mask.shape != target.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {target.shape[:2]}")
    m = mask.astype(bool)
    if target.ndim == 3:
        m = m[:, :, None]
    return np.where(m, source, target)
