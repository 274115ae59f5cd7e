"""The layout the README draws, read off the code itself: which layer imports which, no import circle, no
module over about 400 lines, and the torch-free layers free of torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rar_deploy"
TORCH_FREE = ("contract", "runtime", "tools", "serving", "cli", "outputs")
# what each layer may import of the package (besides itself and the base modules errors and version)
ALLOWED = {
    "contract": set(),
    "runtime": {"contract"},
    "outputs": set(),
    "tools": {"contract", "runtime", "outputs", "model", "export"},  # model and export lazily: --ckpt, baselines
    "serving": {"contract", "runtime", "tools"},
    "model": {"contract", "runtime", "outputs"},
    "export": {"contract", "runtime", "outputs", "model", "tools"},
    "cli": {"contract", "runtime", "tools", "serving", "outputs", "model", "export", "training"},
    "training": {"contract", "runtime", "outputs", "model", "export", "tools"},
}
BASE = {"errors", "version"}


def modules() -> dict[str, Path]:
    return {".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
            for path in PACKAGE.rglob("*.py")}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) of every import of rar_deploy in a file, lazy ones included."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rar_deploy"):
            found += [(node.module, id(node) in top)]
        elif isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names if alias.name.startswith("rar_deploy")]
    return found


def layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "package"


def test_every_layer_imports_only_the_layers_below_it():
    wrong = []
    for name, path in modules().items():
        if name == "rar_deploy":
            continue
        own = layer(name)
        for imported, _ in imports(path):
            other = layer(imported)
            if other not in {own, *BASE, *ALLOWED[own]}:
                wrong.append(f"{name} imports {imported}")
    assert wrong == []


def test_the_runtime_never_imports_model_or_export_code_and_the_torch_free_layers_import_no_torch():
    wrong = []
    for name, path in modules().items():
        if layer(name) in ("contract", "runtime", "outputs"):
            wrong += [f"{name} imports {m}" for m, _ in imports(path) if layer(m) in ("model", "export")]
        if layer(name) in TORCH_FREE:
            tree = ast.parse(path.read_text())
            wrong += [f"{name} imports torch" for node in ast.walk(tree)
                      if isinstance(node, (ast.Import, ast.ImportFrom))
                      and any(n.split(".")[0] == "torch" for n in
                              ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]))]
    assert wrong == []


def test_no_import_circle_at_module_level():
    """Among the modules (a package's __init__ only re-exports: importing a package is not counted)."""
    found = modules()
    inits = {name for name, path in found.items() if path.name == "__init__.py"}
    graph = {name: {m for m, top in imports(path) if top and m in found and m not in inits and m != name}
             for name, path in found.items() if name not in inits}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_over_about_400_lines(name):
    assert len(modules()[name].read_text().splitlines()) <= 420, f"{name} has grown: split it by concern"
