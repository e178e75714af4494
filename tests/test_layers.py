"""The package's layers, enforced on the source (AST), imports inside functions included.

Layers, lowest first; a module may import only from its own layer or lower ones:

    treeopt.errors -> treeopt.core -> treeopt.files -> treeopt.optimize -> treeopt.cost
    -> medusa_runtime (the runtime: only errors and core of treeopt)
    -> treeopt.model (torch) and treeopt.pictures (graphviz, matplotlib)
    -> treeopt.workflows -> treeopt.cli

The pure layers never import torch or any other heavy or interactive library.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (package prefix, rank): the longest matching prefix decides a module's layer.
LAYERS = {
    "treeopt.errors": 0,
    "treeopt.core": 1,
    "treeopt.files": 2,
    "treeopt.optimize": 3,
    "treeopt.cost": 4,
    "medusa_runtime": 5,
    "treeopt.model": 6,
    "treeopt.pictures": 6,
    "treeopt.workflows": 7,
    "treeopt.cli": 8,
    "treeopt._version": 0,
    "treeopt": 9,  # treeopt/__init__.py, __main__.py: the lazy API and the entry point
}
PURE = ("treeopt.errors", "treeopt.core", "treeopt.files", "treeopt.optimize", "treeopt.cost")
HEAVY = ("torch", "transformers", "safetensors", "matplotlib", "graphviz", "typer", "rich",
         "optuna", "peft", "accelerate", "datasets", "huggingface_hub", "tqdm", "medusa_runtime",
         "click", "bitsandbytes")
# What medusa_runtime may take from treeopt: data types and errors, nothing that optimizes.
RUNTIME_MAY_IMPORT = ("treeopt.errors", "treeopt.core")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    files = [*ROOT.joinpath("treeopt").rglob("*.py"),
             *ROOT.joinpath("medusa_runtime").rglob("*.py")]
    return {module_name(path): path for path in files}


def imports_of(path: Path, name: str) -> list[tuple[str, int]]:
    """Every module ``path`` imports, at any depth (functions too), with line numbers."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((base, node.lineno))
            # "from treeopt.cli import build": the submodule is what is imported
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def layer_of(module: str) -> int | None:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


MODULES = source_modules()


def internal(target: str) -> str | None:
    """The project module ``target`` names (a module, or a name inside one), else None."""
    while target:
        if target in MODULES:
            return target
        target = target.rpartition(".")[0]
    return None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name: str) -> None:
    own = layer_of(name)
    assert own is not None, f"{name} is in no layer: add it to LAYERS"
    for target, line in imports_of(MODULES[name], name):
        module = internal(target)
        if module is None or module == name:
            continue
        if name in ("treeopt", "treeopt.__main__"):
            continue
        assert layer_of(module) <= own, f"{name}:{line} imports {module}, a higher layer"
        if name.startswith("medusa_runtime") and module.startswith("treeopt"):
            assert module.startswith(RUNTIME_MAY_IMPORT), (
                f"{name}:{line}: the runtime takes only errors and core from treeopt, not {module}"
            )


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith(PURE)))
def test_pure_layers_import_nothing_heavy(name: str) -> None:
    for target, line in imports_of(MODULES[name], name):
        top = target.split(".")[0]
        assert top not in HEAVY, f"{name}:{line} imports {target}: pure layers stay light"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("treeopt.cli.")))
def test_cli_modules_share_only_options(name: str) -> None:
    for target, line in imports_of(MODULES[name], name):
        module = internal(target)
        if module and module.startswith("treeopt.cli") and module != name:
            allowed = module in ("treeopt.cli.options",) or name in ("treeopt.cli.app",)
            assert allowed, f"{name}:{line} imports {module}: verbs share only treeopt.cli.options"


def test_no_import_cycle() -> None:
    graph = {
        name: {m for target, _ in imports_of(path, name)
               if (m := internal(target)) and m != name and not name.startswith(m + ".")}
        for name, path in MODULES.items()
    }
    visiting, done = [], set()

    def visit(node: str) -> None:
        if node in done:
            return
        assert node not in visiting, "import cycle: " + " -> ".join(
            [*visiting[visiting.index(node):], node])
        visiting.append(node)
        for nxt in sorted(graph[node]):
            # a package's __init__ importing its own submodules is not a cycle
            if not nxt.startswith(node + "."):
                visit(nxt)
        visiting.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)


def test_import_tree_stays_light() -> None:
    import subprocess
    import sys

    code = ("import sys, treeopt.core.tree, treeopt.files.tree_file; "
            "print(sorted(m for m in sys.modules if m.startswith(('treeopt.optimize', "
            "'treeopt.cost', 'treeopt.model', 'numpy', 'torch'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"


# Functions longer than this do several jobs; split them. Every package and the
# benchmarks, no exemptions.
MAX_FUNCTION_LINES = 80
BENCHMARKS = sorted(ROOT.joinpath("benchmarks").glob("*.py"))
CHECKED_FOR_LENGTH = {**{name: path for name, path in MODULES.items()},
                      **{f"benchmarks.{path.stem}": path for path in BENCHMARKS}}


@pytest.mark.parametrize("name", sorted(CHECKED_FOR_LENGTH))
def test_no_function_over_80_lines(name: str) -> None:
    tree = ast.parse(CHECKED_FOR_LENGTH[name].read_text(encoding="utf-8"))
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{name}: split {', '.join(long)} (at most {MAX_FUNCTION_LINES} lines)"


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda path: path.name)
def test_benchmarks_import_no_test_module_nor_each_other(path: Path) -> None:
    """What benchmarks share lives in benchmarks/common.py, on the package's own code."""
    others = {other.stem for other in BENCHMARKS} - {"common", path.stem}
    tests = {test.stem for test in ROOT.joinpath("tests").glob("*.py")}
    for target, line in imports_of(path, f"benchmarks.{path.stem}"):
        top = target.split(".")[0]
        assert top not in others, f"{path.name}:{line} imports benchmark {top}: use common.py"
        assert top not in tests and top != "tests", f"{path.name}:{line} imports test {top}"
    assert '"tests")' not in path.read_text(encoding="utf-8").replace(" ", ""), (
        f"{path.name} puts tests/ on the import path")
