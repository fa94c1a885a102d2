"""The house's shape (DESIGN.md section 3), checked from the package's own imports: a module imports only
from its own layer or below, nothing forms an import loop, and plug-ins are never named below them.

Every ``import`` counts, also those inside functions or under ``TYPE_CHECKING``: a lazy import is still a
dependency. ``from smoothguard import Name`` counts as an import of the module that defines ``Name``.
"""

import ast
from pathlib import Path

import pytest

import smoothguard
from support.cli import run_without_model

PACKAGE = Path(smoothguard.__file__).resolve().parent


#: DESIGN.md section 3, from the ground up: the first part of a module's name below ``smoothguard``.
LAYERS = {
    0: {"errors", "provenance", "stats", "lazy", "progress", "records", "registry"},
    1: {"answers", "inputs", "models", "openai_client", "noise", "purify", "embed", "cluster"},
    2: {"config", "sampling", "guard"},
    3: {"attacks", "certify", "eval"},
    4: {"server", "testbed"},
    5: {"cli", "__main__"},
}


LAYER_OF = {part: layer for layer, parts in LAYERS.items() for part in parts}


#: Plug-ins: registered through entry points, never named (imported or in a string) below their layer.
PLUGINS = ("smoothguard.testbed",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer of ``smoothguard.X...``; the package's own face (``smoothguard``) is the ground."""
    parts = module.split(".")
    return 0 if len(parts) == 1 else LAYER_OF[parts[1]]


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def facade_exports() -> dict[str, str]:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_EXPORTS":
            return ast.literal_eval(node.value)
    raise AssertionError("smoothguard/__init__.py has no _EXPORTS")


def imports(path: Path, exports: dict[str, str]) -> set[str]:
    """The ``smoothguard`` modules ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("smoothguard")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("smoothguard"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if node.module == "smoothguard" and alias.name in exports:
                    found.add(exports[alias.name])
                elif is_module(submodule):  # ``from smoothguard.cli import attack``: the module itself
                    found.add(submodule)
                else:
                    found.add(node.module)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    exports = facade_exports()
    return {module_name(path): imports(path, exports) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer(graph):
    unknown = sorted(m for m in graph if m != "smoothguard" and m.split(".")[1] not in LAYER_OF)
    assert not unknown, f"modules with no layer in DESIGN.md section 3: {unknown}"


def test_no_module_imports_a_higher_layer(graph):
    upward = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in graph.items()
        for target in sorted(targets)
        if layer(target) > layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_loops(graph):
    state: dict[str, str] = {}
    loops: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                loops.append([*path[path.index(target) :], target] if target in path else [module, target])
            elif target not in state and target in graph:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not loops, "import loops: " + "; ".join(" -> ".join(loop) for loop in loops)


@pytest.mark.parametrize("plugin", PLUGINS)
def test_plugins_are_not_named_below_their_layer(plugin):
    named = [
        module_name(path)
        for path in sorted(PACKAGE.rglob("*.py"))
        if layer(module_name(path)) < layer(plugin) and plugin in path.read_text()
    ]
    assert not named, f"{plugin} is named in lower layers: {named} (register it through an entry point)"


def test_import_smoothguard_imports_nothing_heavy():
    code = """
import json, sys
import smoothguard
print(json.dumps({name: name in sys.modules for name in ("torch", "transformers", "scipy", "sklearn", "fastapi")}))
"""
    assert not any(run_without_model(code).values())
