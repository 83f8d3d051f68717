"""Imports go one way: each package imports only from its own layer or the layers below,
module level and in-function alike; no module imports itself back through a cycle; and
inference (with the task presets it reads) runs without the trainer in memory."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: The layer order, written once: a package may import from its own layer and those above
#: it in this list. ``instyle`` is the package's own ``__init__`` (the public facade).
LAYERS = (
    ("errors", "version", "utils"),
    ("ops",),
    ("models", "alignment"),
    ("interop",),
    ("export",),
    ("losses", "data", "tasks"),
    ("training", "inference"),
    ("evaluation",),
    ("video",),
    ("demo", "cli", "instyle"),
)
#: Alignment sits beside the models but needs only the utilities (and dlib).
ONLY = {"alignment": {"alignment", "errors", "version", "utils"}}
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for f in (SRC / "instyle").rglob("*.py"):
        parts = f.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = _modules()


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The ``instyle`` modules an import statement names (``from pkg import submodule`` -> the
    submodule; ``from pkg import name`` -> ``pkg``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = module.split(".") if is_package else module.split(".")[:-1]
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    out = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith("instyle") and name != module:
            out.append(name)
    return out


def _import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line}, every import statement anywhere in the file."""
    graph = {}
    for module, path in MODULES.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(node, module, path.name == "__init__.py"):
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "instyle"


def test_every_package_has_a_layer():
    assert sorted({_package(m) for m in MODULES} - set(LAYER)) == []


def test_imports_go_down_the_layers_only():
    bad = []
    for module, edges in _import_graph().items():
        src = _package(module)
        for target, line in edges.items():
            dst = _package(target)
            allowed = ONLY[src] if src in ONLY else {p for p in LAYER if LAYER[p] <= LAYER[src]}
            if dst not in allowed:
                bad.append(f"{MODULES[module].relative_to(SRC)}:{line} ({src}) imports {target} ({dst})")
    assert bad == [], "imports from a higher layer:\n" + "\n".join(bad)


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


#: Where a function may import another instyle module on demand: the entry points, so one
#: command (or ``import instyle``) does not load every other one (and the demo alone loads
#: Gradio), and the Inverter's tools. Everywhere else own-module imports sit at the top;
#: in-function imports are for optional extras (dlib, gradio, lpips, torchvision, ...).
ON_DEMAND = ("instyle", "instyle.cli", "instyle.demo", "instyle.inference", "instyle.inference.inverter",
             "instyle.inference.editing")


def test_own_modules_are_imported_at_module_level():
    bad = []
    for module, path in MODULES.items():
        if module in ON_DEMAND or module.startswith(("instyle.cli.", "instyle.demo.")):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and _imported(node, module, path.name == "__init__.py"):
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert bad == [], "in-function imports of instyle modules:\n" + "\n".join(bad)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles():
    assert _cycles(_import_graph()) == []


ISOLATION_SCRIPT = """
import json, sys
import torch
before = set(sys.modules)
import instyle.inference, instyle.inference.inverter, instyle.inference.preprocess
import instyle.tasks
instyle.tasks.get_task("sketch2face")
new = sorted(set(sys.modules) - before)
print(json.dumps(new))
"""


def test_inference_does_not_import_training():
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", ISOLATION_SCRIPT], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    new = json.loads(out.stdout.strip().splitlines()[-1])
    assert "instyle.inference.inverter" in new and "instyle.tasks" in new
    heavy = ("instyle.training", "instyle.losses", "instyle.data", "instyle.evaluation", "torch.distributed")
    assert [m for m in new if m.startswith(heavy)] == []
