"""No code outside a model family's own modules asks which family a model is.

The scan walks ``src/instyle`` with :mod:`ast` and finds *family branches*:

* ``isinstance`` / ``issubclass`` against a registered family's model or config class;
* ``hasattr`` / ``getattr`` of an attribute only some families have (``runtime``,
  ``hypernet``, ``family``, ...);
* a comparison of a family (``x.family``, ``family``, ``family_of(m).name``) with a family's
  name (``== "restyle"``, ``in ("psp", "e4e")``);
* ``offsets is None`` style tests on HyperStyle's per-image offsets (the encoding's business).

Such questions belong to the family's own modules (listed below) or to the registry
(:mod:`instyle.models.family`), which the rest of the code asks for a *capability*
(``family_of(model).iterative``, ``.encoding``, ``.runtime``). ``python tests/test_family_branches.py
[SRC]`` prints the count per file.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "instyle"

#: Model and config classes of the families (and their encodings' payload types).
FAMILY_CLASSES = {
    "PSP", "PSPConfig", "HyperStyle", "HyperStyleConfig", "SFE", "SFEConfig", "SFEEncoding",
    "ReStyle3", "ReStyle3Config", "SFEObjective", "E4EObjective",
}
#: Attributes only some families' models or configs have.
FAMILY_ATTRS = {"runtime", "hypernet", "family", "w_encoder", "e4e_encoder", "inverter", "iterations", "crop_cars"}
FAMILY_NAMES = {"psp", "e4e", "restyle", "hyperstyle", "sfe", "restyle3"}
#: The shared tools' name for HyperStyle's offsets (the generator's own ``weights_deltas``
#: argument and the latent file's ``deltas`` field are not family questions).
OFFSET_NAMES = {"offsets"}

#: A family's own modules: its model, its official reader, its training and its tools.
FAMILY_MODULE_STEMS = ("psp", "e4e", "restyle", "restyle3", "hyperstyle", "sfe", "stylegan3", "iterative", "family",
                       "families", "offsets", "unaligned")
FAMILY_PACKAGES = ("models/encoders/",)

#: Files outside the family modules still allowed some branches: path -> (count, why).
ALLOWED: dict[str, tuple[int, str]] = {
    # none left: every family test lives in the family's own modules or goes through its record
}


def is_family_module(rel: str) -> bool:
    stem = Path(rel).stem
    return rel.startswith(FAMILY_PACKAGES) or any(stem == s or stem.startswith(s + "_") for s in FAMILY_MODULE_STEMS)


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _names_family(node: ast.AST) -> bool:
    """``x.family``, ``family``, ``family_of(m).name``, ``getattr(m, "family", ...)``."""
    if isinstance(node, ast.Call) and _name(node.func) == "getattr" and len(node.args) >= 2:
        arg = node.args[1]
        return isinstance(arg, ast.Constant) and arg.value == "family"
    name = _name(node)
    if name is not None and name.endswith("family"):
        return True
    return isinstance(node, ast.Attribute) and node.attr == "name" and "family" in ast.unparse(node.value)


def _family_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in FAMILY_NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_family_literal(e) for e in node.elts)
    return False


def branches(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, what)`` of every family branch in a parsed module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = _name(node.func)
            if fn in ("isinstance", "issubclass") and len(node.args) == 2:
                classes = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                if any(_name(c) in FAMILY_CLASSES for c in classes):
                    found.append((node.lineno, ast.unparse(node)))
            elif fn in ("hasattr", "getattr") and len(node.args) >= 2 and _name(node.args[0]) != "args":
                arg = node.args[1]  # (an argparse namespace's optional flags are not model questions)
                if isinstance(arg, ast.Constant) and arg.value in FAMILY_ATTRS:
                    found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_names_family(s) for s in sides) and any(_family_literal(s) for s in sides) or (len(sides) == 2 and isinstance(node.ops[0], (ast.Is, ast.IsNot))
                  and _name(sides[0]) in OFFSET_NAMES and isinstance(sides[1], ast.Constant) and sides[1].value is None):
                found.append((node.lineno, ast.unparse(node)))
    return sorted({line: what for line, what in sorted(found, key=lambda f: -len(f[1]))}.items())  # one per line


def scan(src: Path = SRC) -> dict[str, list[tuple[int, str]]]:
    """Family branches outside the family modules, by file (relative to ``src``)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        if is_family_module(rel):
            continue
        found = branches(ast.parse(path.read_text(), str(path)))
        if found:
            out[rel] = found
    return out


def test_the_scan_finds_the_kinds_of_branch_it_looks_for():
    code = '''
if isinstance(model, HyperStyle): pass
if hasattr(model, "runtime"): pass
if getattr(model, "family", "psp") == "restyle": pass
if cfg.family in ("psp", "e4e"): pass
if family_of(model).name != "sfe": pass
if offsets is None: pass
if family_of(model).iterative: pass
if fmt == "rosinality": pass
if isinstance(g, Generator): pass
'''
    assert [line for line, _ in branches(ast.parse(code))] == [2, 3, 4, 5, 6, 7]


def test_no_family_branch_outside_the_family_modules():
    found = scan()
    problems = []
    for rel, hits in found.items():
        allowed = ALLOWED.get(rel, (0, ""))[0]
        if len(hits) > allowed:
            where = "; ".join(f"line {line}: {what}" for line, what in hits)
            problems.append(f"{rel}: {len(hits)} family branch(es), {allowed} allowed: {where}")
    assert not problems, (
        "code outside a family's own modules asks which family a model is; ask the registry "
        "(instyle.models.family: family_of(model).<capability>) instead:\n" + "\n".join(problems)
    )


def test_the_allow_list_is_short_and_not_stale():
    found = scan()
    assert sum(n for n, _ in ALLOWED.values()) < 30
    stale = {rel: (n, len(found.get(rel, []))) for rel, (n, _) in ALLOWED.items() if len(found.get(rel, [])) < n}
    assert not stale, f"allow-list entries larger than what the code still has (lower them): {stale}"


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else SRC
    result = scan(root)
    counts = Counter({rel: len(hits) for rel, hits in result.items()})
    for rel, n in counts.most_common():
        print(f"{n:3d}  {rel}")
        for line, what in result[rel]:
            print(f"       {line}: {what[:110]}")
    print(f"{sum(counts.values())} branches in {len(counts)} files outside the family modules")
