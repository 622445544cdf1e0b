"""The package layout as a contract (`ARCHITECTURE.md`): every import points down the layers, no
module imports another in a loop, and no module or function outgrows its welcome.

Layers, top to bottom; a module may import its own package, and any package of a lower layer.
Packages that share a layer are siblings: they may not import each other, except the shared
leaves, which may (loops among them are still caught by the cycle check).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "warmroute"
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("app",),
    ("bench",),
    ("sim",),
    ("api",),
    ("gateway",),
    ("store", "engine"),
    ("config", "types", "errors", "pricing", "procs", "sse", "jsoncodec", "connection_events",
     "server_protocol", "__init__"),
)
LEAVES = LAYERS[-1]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name, e.g. warmroute.gateway.proxy
    imported: str
    line: int


def module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, importer: str, is_package: bool = False) -> list[Import]:
    """Every `warmroute.*` import in a module, top-level or not (a lazy import is still a
    dependency), relative ones resolved."""
    found: list[Import] = []
    package = importer if is_package else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(importer, a.name, node.lineno) for a in node.names
                      if a.name.startswith("warmroute")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("warmroute"):
                found += [Import(importer, f"{base}.{a.name}", node.lineno) for a in node.names]
    return found


def top_package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(package: str) -> int:
    for index, layer in enumerate(LAYERS):
        if package in layer:
            return index
    raise AssertionError(f"warmroute.{package} is in no layer of the contract")


def violations(found: Iterable[Import]) -> list[str]:
    out = []
    for imp in found:
        source, target = top_package(imp.importer), top_package(imp.imported)
        if source == target:
            continue
        upward = layer_of(target) < layer_of(source)
        sideways = layer_of(target) == layer_of(source) and source not in LEAVES
        if upward or sideways:
            out.append(f"{imp.importer}:{imp.line} imports {imp.imported} "
                       f"({'up' if upward else 'sideways'}: {source} -> {target})")
    return out


def existing(module: str, known: set[str]) -> str | None:
    """The module an import names (`a.b.name` may be the module `a.b`)."""
    while module and module not in known:
        module = module.rpartition(".")[0]
    return module or None


def cycles(found: Iterable[Import], known: set[str]) -> list[list[str]]:
    graph: dict[str, set[str]] = {m: set() for m in known}
    for imp in found:
        target = existing(imp.imported, known)
        if target and target != imp.importer and not imp.importer.startswith(target + "."):
            graph[imp.importer].add(target)
    loops: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                loops.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return loops


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def all_imports() -> list[Import]:
    return [imp for name, path in modules().items()
            for imp in imports_of(path.read_text(), name, path.name == "__init__.py")]


def test_every_import_points_down_the_layers() -> None:
    assert violations(all_imports()) == []


def test_no_module_imports_itself_in_a_loop() -> None:
    assert cycles(all_imports(), set(modules())) == []


def test_every_package_is_in_a_layer() -> None:
    for name in modules():
        layer_of(top_package(name))


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for name, path in modules().items():
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert too_long == []


@pytest.mark.parametrize(
    ("importer", "source", "expected"),
    [
        ("warmroute.gateway.proxy", "from warmroute.api.sse import SSE_HEADERS",
         "up: gateway -> api"),
        ("warmroute.engine.engine", "import warmroute.store", "sideways: engine -> store"),
        ("warmroute.config", "def f():\n    from warmroute.gateway import x\n",
         "up: config -> gateway"),
        ("warmroute.gateway.proxy", "from ..app import cli", "up: gateway -> app"),
    ],
)
def test_the_contract_catches_an_upward_or_sideways_import(
    importer: str, source: str, expected: str
) -> None:
    found = violations(imports_of(source, importer))
    assert len(found) == 1 and expected in found[0]


def test_the_contract_allows_downward_imports_and_leaves_among_themselves() -> None:
    source = "from warmroute.gateway.proxy import Proxy\nfrom warmroute.config import X\n"
    assert violations(imports_of(source, "warmroute.api.chat_app")) == []
    assert violations(imports_of("from warmroute.types import Usage", "warmroute.pricing")) == []


def test_the_cycle_check_finds_a_loop() -> None:
    known = {"warmroute.a", "warmroute.b", "warmroute.c"}
    found = [Import("warmroute.a", "warmroute.b.f", 1), Import("warmroute.b", "warmroute.c", 1),
             Import("warmroute.c", "warmroute.a.g", 1)]
    assert cycles(found, known) == [["warmroute.a", "warmroute.b", "warmroute.c", "warmroute.a"]]
