"""The layers of the installed packages, read statically from every import statement (function-level too).

- ``ddsm_core`` (the method) imports nothing of ``api`` or ``workers``;
- ``workers`` use ``ddsm_core`` and, of the service, only its persistence, settings, queue and artifact
  modules (never routes, schemas, services, the controller or the demo);
- ``api`` imports neither ``workers`` nor ``ddsm_core.cli``, except ``api.cli``: the one top-level entry
  that composes every package's commands;
- no installed module imports pytest (test helpers live in ``tests/``);
- no import cycle between modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ddsm_core", "api", "workers")
COMPOSING_ENTRY = "api.cli"
WORKERS_MAY_USE = ("api.db", "api.settings", "api.queue", "api.artifacts")
TEST_ONLY = ("pytest", "_pytest")

Graph = dict[str, dict[str, int]]  # module -> {imported name: first line}


def find_modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``packages`` under ``root``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imported_names(module: str, path: Path) -> Iterable[tuple[str, int]]:
    """Every name an import statement of ``path`` reaches, absolute (``from a import b`` gives ``a.b``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                yield f"{source}.{alias.name}", node.lineno


def import_graph(modules: Mapping[str, Path]) -> Graph:
    """Edges to project modules (the deepest one a name reaches) and to outside top-level packages."""
    graph: Graph = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for name, line in _imported_names(module, path):
            parts = name.split(".")
            if parts[0] in {m.split(".")[0] for m in modules}:
                while parts and ".".join(parts) not in modules:
                    parts.pop()  # `from a import function` (a.function) reaches module a
                if not parts:
                    continue
                target = ".".join(parts)
            else:
                target = parts[0]
            if target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(graph: Graph) -> list[str]:
    """One line per forbidden edge: ``source:line imports target (rule)``."""
    found = []
    for source, edges in sorted(graph.items()):
        for target, line in sorted(edges.items()):
            rule = _broken_rule(source, target)
            if rule:
                found.append(f"{source}:{line} imports {target} ({rule})")
    return found


def _broken_rule(source: str, target: str) -> str | None:
    if target in TEST_ONLY:
        return "installed code never imports the test framework"
    if _within(source, "ddsm_core") and (_within(target, "api") or _within(target, "workers")):
        return "ddsm_core imports nothing of api/ or workers/"
    if _within(source, "workers") and _within(target, "api"):
        if not any(_within(target, allowed) for allowed in WORKERS_MAY_USE):
            return f"workers use only {', '.join(WORKERS_MAY_USE)} of api/"
    if _within(source, "api") and source != COMPOSING_ENTRY:
        if _within(target, "workers"):
            return f"api imports nothing of workers/ (only {COMPOSING_ENTRY} composes their commands)"
        if _within(target, "ddsm_core.cli"):
            return f"api imports no ddsm_core.cli (only {COMPOSING_ENTRY} composes commands)"
    return None


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected group of project modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in graph:
                continue
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_one_cycle(graph, group) for group in sorted(groups)]


def _one_cycle(graph: Graph, group: list[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group (breadth first)."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return [*paths[node], start]
                if nxt in members and nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no cycle through {start} in {group}")  # a strongly connected group has one


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(find_modules(ROOT))


def test_every_import_follows_the_layers(graph: Graph) -> None:
    assert violations(graph) == []


def test_no_module_imports_itself_back_through_others(graph: Graph) -> None:
    assert [" -> ".join(c) for c in cycles(graph)] == []


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_upward_edges_and_cycles_in_a_synthetic_tree(tmp_path: Path) -> None:
    _write(tmp_path, {
        "ddsm_core/__init__.py": "",
        "ddsm_core/cli/__init__.py": "",
        "ddsm_core/cli/cmd.py": "",
        "ddsm_core/core.py": "def f():\n    from api.db import models\n",
        "api/__init__.py": "",
        "api/cli.py": "import ddsm_core.cli.cmd\nfrom workers import commands\n",
        "api/schemas.py": "from .routes import thing\n",
        "api/routes.py": "import pytest\nfrom . import schemas\n",
        "api/db/__init__.py": "",
        "api/db/models.py": "",
        "api/demo.py": "from ddsm_core.cli import cmd\n",
        "api/settings.py": "",
        "workers/__init__.py": "",
        "workers/commands.py": "from api.settings import Settings\n",
        "workers/tasks.py": "from api.db.models import X\n\n\ndef g():\n    import api.routes\n",
    })  # fmt: skip
    graph = import_graph(find_modules(tmp_path))
    assert graph["api.schemas"] == {"api.routes": 1}  # a relative import, resolved to its module
    found = violations(graph)
    assert [line.split(" (")[0] for line in found] == [
        "api.demo:1 imports ddsm_core.cli.cmd",
        "api.routes:1 imports pytest",
        "ddsm_core.core:2 imports api.db.models",  # a function-level import counts
        "workers.tasks:5 imports api.routes",
    ]
    assert found[2].endswith("(ddsm_core imports nothing of api/ or workers/)")
    assert cycles(graph) == [["api.routes", "api.schemas", "api.routes"]]


def test_the_checker_passes_a_tree_that_follows_the_layers(tmp_path: Path) -> None:
    _write(tmp_path, {
        "ddsm_core/__init__.py": "",
        "ddsm_core/spec.py": "import json\n",
        "ddsm_core/cli/__init__.py": "from ddsm_core import spec\n",
        "api/__init__.py": "",
        "api/cli.py": "import ddsm_core.cli\nimport workers.cli\n",
        "api/queue.py": "from ddsm_core.spec import x\n",
        "workers/__init__.py": "",
        "workers/cli.py": "from api.queue import y\n",
    })  # fmt: skip
    graph = import_graph(find_modules(tmp_path))
    assert graph["workers.cli"] == {"api.queue": 1}
    assert violations(graph) == [] and cycles(graph) == []
