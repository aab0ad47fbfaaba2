"""The tree keeps its architecture: one door to the database, and arrows that point one way.

Every ``import`` in ``perdure/`` (also those under ``TYPE_CHECKING`` and inside functions) is
read with :mod:`ast`; these tests fail when a module reaches past its layer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "perdure"
DRIVERS = {"sqlite3", "sqlean", "psycopg", "psycopg_pool"}
# Lower layers never import higher ones: cli / server -> triggers -> engine -> store -> vocabulary.
LAYERS = {"vocabulary": 0, "store": 1, "engine": 2, "triggers": 3, "server": 4, "cli": 5}
# The words every layer may use; `_optional` (which extra a feature needs) depends only on errors.
VOCABULARY = {"perdure.records", "perdure.errors", "perdure._optional", "perdure._cancel"}
SQL_TEXT = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+TABLE)\b", re.I)


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer(module: str) -> int:
    if module in VOCABULARY:
        return LAYERS["vocabulary"]
    for part in ("store", "triggers", "server", "cli"):
        if module == f"perdure.{part}" or module.startswith(f"perdure.{part}."):
            return LAYERS[part]
    return LAYERS["engine"]


def imports(module: str, path: Path) -> set[str]:
    """Absolute names of every module ``module`` imports: ``from x import y`` is x.y when that
    is a module (``from . import validators``), else x."""
    known = modules()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return names


def _docstrings(tree: ast.Module) -> list[ast.Constant]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.append(first.value)
    return found


def test_no_database_driver_and_no_sql_outside_the_store() -> None:
    offenders = []
    for module, path in modules().items():
        if layer(module) == LAYERS["store"]:
            continue
        drivers = {name.split(".")[0] for name in imports(module, path)} & DRIVERS
        if drivers:
            offenders.append(f"{module} imports {sorted(drivers)}")
        tree = ast.parse(path.read_text())
        docstrings = {id(d) for d in _docstrings(tree)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if SQL_TEXT.search(node.value):
                    offenders.append(f"{module}:{node.lineno} builds SQL: {node.value[:60]!r}")
    assert offenders == []


def test_arrows_point_one_way() -> None:
    known = modules()
    wrong = []
    for module, path in known.items():
        for name in imports(module, path):
            if name in known and name != module and layer(name) > layer(module):
                wrong.append(f"{module} -> {name}")
    assert wrong == []


def test_no_import_cycle_between_engine_binding_and_cron() -> None:
    known = modules()
    graph = {m: {n for n in imports(m, p) if n in known and n != m} for m, p in known.items()}
    for start in ("perdure.engine", "perdure.binding", "perdure.cron"):
        seen, stack = set(), list(graph[start])
        while stack:
            current = stack.pop()
            if current == start:
                raise AssertionError(f"{start} imports itself through {sorted(seen)}")
            if current not in seen:
                seen.add(current)
                stack.extend(graph.get(current, ()))


def test_the_vocabulary_has_one_home() -> None:
    """Nothing imports the store to learn a word: the store's modules define no statuses."""
    words = {"QUEUED", "RUNNING", "COMPLETE", "STATUSES", "TERMINAL", "DO", "SLEEP", "WAIT", "StepRecord"}
    for module, path in modules().items():
        if layer(module) != LAYERS["store"]:
            continue
        for node in ast.parse(path.read_text()).body:
            targets = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            if isinstance(node, ast.ClassDef):
                targets.append(node.name)
            assert not set(targets) & words, f"{module} defines {set(targets) & words}"
