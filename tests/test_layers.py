"""The project's import graph: layers import downward only, and no module cycle.

Every import counts, module-level or inside a function (a function-local import only hides a cycle until the
function runs). The graph is read from the source with ``ast``, so nothing is imported to build it.
"""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sam_engine", "assets", "jobs")
SQL = re.compile(
    r"\bSELECT\b.*\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b|\bCREATE\s+TABLE\b"
)
# Where SQL may be written: the store's package, and the backup, which works on the raw files of two
# databases (DuckDB and MLflow's SQLite) before any store opens them.
SQL_HOMES = ("sam_engine/quality/", "sam_engine/backup.py")


def _modules(root: Path) -> dict[str, Path]:
    mods = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    return mods


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom, mods: dict[str, Path]) -> list[str]:
    """The project modules one import statement of module ``name`` loads (the longest known prefix)."""
    if isinstance(node, ast.Import):
        wanted = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        wanted = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base for alias in node.names]
    found = []
    for target in wanted:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        if target:
            found.append(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its source (a package's own parents left out:
    importing ``a.b.c`` runs ``a`` and ``a.b`` first, whatever ``c`` does)."""
    mods = _modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges.update(t for t in _targets(name, path, node, mods) if not name.startswith(t + "."))
        edges.discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        return list(e.args[1])
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports that go up: the library into ``assets``/``jobs``, or ``assets`` into ``jobs``."""
    above = {"sam_engine": ("assets", "jobs"), "assets": ("jobs",), "jobs": ()}
    return sorted(
        (src, dst)
        for src, targets in graph.items()
        for dst in targets
        if dst.split(".")[0] in above[src.split(".")[0]]
    )


def test_the_graph_sees_function_local_imports(tmp_path):
    (tmp_path / "sam_engine").mkdir()
    (tmp_path / "assets").mkdir()
    (tmp_path / "jobs").mkdir()
    (tmp_path / "sam_engine" / "__init__.py").write_text("")
    (tmp_path / "sam_engine" / "a.py").write_text("from . import b\n")
    (tmp_path / "sam_engine" / "b.py").write_text(
        "def f():\n    from .a import g\n    from jobs import run\n"
    )
    (tmp_path / "jobs" / "__init__.py").write_text("")
    (tmp_path / "jobs" / "run.py").write_text("import sam_engine.a\n")
    (tmp_path / "assets" / "__init__.py").write_text("")
    graph = import_graph(tmp_path)
    assert graph["sam_engine.b"] == {"sam_engine.a", "jobs.run"}
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"sam_engine.a", "sam_engine.b"}
    assert layer_violations(graph) == [("sam_engine.b", "jobs.run")]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("lower", ["sam_engine", "assets"])
def test_layers_import_downward_only(graph, lower):
    bad = [(s, d) for s, d in layer_violations(graph) if s.split(".")[0] == lower]
    assert not bad, f"{lower} imports a layer above it: {bad}"


def sql_outside_the_store(root: Path = ROOT) -> list[str]:
    """``file:line`` of every string literal with SQL in it outside :data:`SQL_HOMES`."""
    found = []
    for path in _modules(root).values():
        rel = path.relative_to(root).as_posix()
        if rel.startswith(SQL_HOMES):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if isinstance(node, ast.JoinedStr):  # an f-string: its literal parts around each {field}
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            if SQL.search(text):
                found.append(f"{rel}:{node.lineno}")
    return sorted(found)


def test_the_sql_check_sees_a_query(tmp_path):
    (tmp_path / "sam_engine" / "engine").mkdir(parents=True)
    (tmp_path / "sam_engine" / "quality").mkdir()
    (tmp_path / "sam_engine" / "engine" / "x.py").write_text(
        'q = "SELECT mask_id FROM masks"\n"""Select a mask from the store."""\nf = f"SELECT {c} FROM tasks"\n'
    )
    (tmp_path / "sam_engine" / "quality" / "store.py").write_text('q = "DELETE FROM masks"\n')
    assert sql_outside_the_store(tmp_path) == ["sam_engine/engine/x.py:1", "sam_engine/engine/x.py:3"]


def test_no_sql_outside_the_store():
    assert sql_outside_the_store() == [], "SQL belongs in sam_engine/quality/ (a named store method)"
