"""Layout rules for services/: no import circle between its modules, no hand-written module over 450 lines.

Every import counts, module-level, function-local or under TYPE_CHECKING alike: a lazy or typing-only
import hides a circle from Python, not from a reader, who still cannot understand either module alone.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "services"
MAX_LINES = 450


def _generated(path: Path) -> bool:
    return path.name.endswith(("_pb2.py", "_pb2_grpc.py", ".pyi"))


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The modules an import statement in `module` names. `from pkg import sub` names pkg.sub alone
    when sub is a module, so a package __init__ importing its own submodules is no circle."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([base] if base else [])])
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def import_graph(root: Path = SERVICES) -> dict[str, set[str]]:
    """services module -> the services modules it imports (generated protobuf modules left out)."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        if _generated(path):
            continue
        edges = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(node, module, path.name == "__init__.py", known):
                    if target in known and target != module and not _generated(files[target]):
                        edges.add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    pkg = tmp_path / "services"
    (pkg / "p").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "p" / "__init__.py").write_text("from services.p import a\nfrom . import b\n")
    (pkg / "p" / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    (pkg / "p" / "b.py").write_text("def f():\n    from services.p.a import A\n")
    (pkg / "p" / "c.py").write_text("import services.p.a\n")
    (pkg / "p" / "x_pb2.py").write_text("from services.p import c\n")
    (pkg / "p" / "d.py").write_text("from services.p import x_pb2\n")

    graph = import_graph(pkg)

    assert graph["services.p"] == {"services.p.a", "services.p.b"}
    assert graph["services.p.c"] == {"services.p.a"}
    assert graph["services.p.d"] == set()
    assert cycles(graph) == [["services.p.a", "services.p.b"]]


def test_no_import_circle_in_services() -> None:
    assert cycles(import_graph()) == []


def test_no_hand_written_module_over_450_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in sorted(SERVICES.rglob("*.py")) if not _generated(p)
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}

    assert long == {}
