"""The shape of the code: no import cycles, no oversized modules, a fast ``--help``, and
registries that the ``tasks`` packages fill themselves.

The import graph is read from the source with ``ast`` (nothing is imported): every ``import``
and ``from`` statement counts, at module level and inside functions alike, except those under
``if TYPE_CHECKING:`` (they never run). Importing ``a.b.c`` also runs the ``__init__`` of ``a``
and ``a.b``, so an edge to a module adds edges to the packages on its path that the importer is
not itself inside; a package whose ``__init__`` imports its modules through
``pkgutil.iter_modules`` has an edge to each of them.
"""

from __future__ import annotations

import ast
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "tasks")
MAX_LINES = 500


def _modules(root: Path = REPO) -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, type_checking: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, skipping the bodies of ``if TYPE_CHECKING:`` unless asked."""
    found = []

    def visit(node: ast.AST) -> None:
        if not type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path = REPO, type_checking: bool = False) -> dict[str, set[str]]:
    """module -> the modules of ``orchestrator`` and ``tasks`` that importing it runs (with
    ``type_checking``: or that a type checker reads)."""
    modules = _modules(root)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        targets: set[str] = set()
        for node in _imports(tree, type_checking):
            if isinstance(node, ast.Import):
                targets.update(t for a in node.names if (t := known(a.name)))
                continue
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                target = full if full in modules else known(base)
                if target:
                    targets.add(target)
        if is_package and "iter_modules" in path.read_text():
            # importlib over pkgutil.iter_modules(__path__): every module of the package
            targets.update(m for m in modules if m.rpartition(".")[0] == name)
        edges = set()
        inside = {name} | {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
        for target in targets:
            edges.add(target)
            parts = target.split(".")
            for i in range(1, len(parts)):  # the packages whose __init__ the import runs
                package = ".".join(parts[:i])
                if package in modules and package not in inside:
                    edges.add(package)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_function_level_imports_and_package_inits(tmp_path):
    # The checker itself: a lazy import inside a function closes a cycle, and so does an
    # import that runs a package __init__ which imports back.
    (tmp_path / "orchestrator").mkdir()
    (tmp_path / "tasks" / "p").mkdir(parents=True)
    (tmp_path / "orchestrator" / "__init__.py").write_text("")
    (tmp_path / "orchestrator" / "a.py").write_text("import orchestrator.b\n")
    (tmp_path / "orchestrator" / "b.py").write_text(
        "def f():\n    from orchestrator.a import x\n")
    (tmp_path / "tasks" / "__init__.py").write_text("")
    (tmp_path / "tasks" / "p" / "__init__.py").write_text("from tasks.p import m\n")
    (tmp_path / "tasks" / "p" / "m.py").write_text("from tasks.q import y\n")
    (tmp_path / "tasks" / "q.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import orchestrator.a\n"
        "from tasks.p.base import z\n")
    graph = import_graph(tmp_path)
    assert graph["orchestrator.b"] == {"orchestrator.a"}
    assert "orchestrator.a" not in graph["tasks.q"]  # TYPE_CHECKING only
    assert "tasks.p" in graph["tasks.q"]  # importing tasks.p.base runs tasks/p/__init__
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    (tmp_path / "orchestrator" / "b.py").write_text("")
    (tmp_path / "tasks" / "q.py").write_text("")
    assert find_cycle(import_graph(tmp_path)) is None


def test_no_import_cycles():
    graph = import_graph()
    assert "orchestrator.search.cli" in graph and "tasks.unlearning" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycles_counting_type_checking_imports():
    # A cycle only a type checker walks still ties two modules together (issue 27).
    cycle = find_cycle(import_graph(type_checking=True))
    assert cycle is None, "import cycle (TYPE_CHECKING included): " + " -> ".join(cycle)


MAX_TOP_LEVEL = 8


def test_orchestrator_has_a_few_rooms_at_its_top_level():
    top = sorted(p.stem if p.is_file() else p.name + "/"
                 for p in (REPO / "orchestrator").iterdir()
                 if (p.suffix == ".py" and p.name != "__init__.py")
                 or (p.is_dir() and (p / "__init__.py").is_file()))
    assert len(top) <= MAX_TOP_LEVEL, f"orchestrator/ has {len(top)} top-level modules: {top}"
    assert {"engine/", "spec/", "store/", "reporting/", "stages/", "search/"} <= set(top), top


def private_imports(root: Path = REPO) -> list[str]:
    """``from a import _x`` and ``a._x`` across modules of our packages: a private name used
    outside the module that defines it. A package's ``__init__`` may use its own modules'."""
    modules = _modules(root)
    found = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        aliases: set[str] = set()  # local names bound to one of our modules
        for node in _imports(tree, type_checking=True):
            if isinstance(node, ast.Import):
                aliases.update(a.asname for a in node.names if a.asname and a.name in modules)
                continue
            if not node.module or node.module.split(".")[0] not in PACKAGES:
                continue
            for a in node.names:
                if f"{node.module}.{a.name}" in modules:
                    aliases.add(a.asname or a.name)
                elif a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{name}: from {node.module} import {a.name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{name}: {node.value.id}.{node.attr}")
    return found


def test_the_private_import_check_sees_both_forms(tmp_path):
    (tmp_path / "orchestrator").mkdir()
    (tmp_path / "tasks").mkdir()
    (tmp_path / "orchestrator" / "__init__.py").write_text("")
    (tmp_path / "tasks" / "__init__.py").write_text("")
    (tmp_path / "orchestrator" / "a.py").write_text("def _x():\n    pass\n")
    (tmp_path / "orchestrator" / "b.py").write_text("from orchestrator.a import _x\n")
    (tmp_path / "tasks" / "c.py").write_text(
        "from orchestrator import a as mod\nmod._x()\nmod.__name__\n")
    assert private_imports(tmp_path) == ["orchestrator.b: from orchestrator.a import _x",
                                         "tasks.c: mod._x"]


def test_no_module_imports_a_private_name_from_another():
    found = private_imports()
    assert not found, "private names used across modules (give them a public home):\n" + \
        "\n".join(found)


def test_no_module_over_500_lines():
    long = {}
    for folder in (*PACKAGES, "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            n = len(path.read_text().splitlines())
            if n > MAX_LINES:
                long[rel] = n
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


HEAVY = ("torch", "ray", "optuna", "sklearn", "pandas", "matplotlib")


@pytest.mark.parametrize("argv", [["--help"], ["tune", "--help"], ["run", "--help"],
                                  ["report", "--help"]])
def test_help_imports_nothing_heavy(argv):
    code = (f"import sys\nfrom orchestrator.cli.main import main\ntry:\n    main({argv!r})\n"
            "except SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert _run(code).strip().splitlines()[-1] == "[]"


@pytest.mark.alone  # a wall-time bound: make test runs it with the machine to itself
def test_help_answers_within_a_second():
    walls = []
    for _ in range(3):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", "--help"], check=False,
                             cwd=REPO, capture_output=True, text=True, timeout=60)
        walls.append(time.perf_counter() - start)
        assert out.returncode == 0 and "tune" in out.stdout, out.stderr
    assert statistics.median(walls) < 1.0, walls


NO_ORCHESTRATOR = ("assert not [m for m in sys.modules if m.split('.')[0] == 'orchestrator'], "
                   "'orchestrator imported'")


def test_importing_tasks_unlearning_registers_retrain_dp():
    _run("import sys\nimport tasks.unlearning\nfrom tasks.unlearning import UNLEARNING\n"
         "assert 'retrain_dp' in UNLEARNING, UNLEARNING.names()\n"
         "assert UNLEARNING.get('retrain_dp').exact\n" + NO_ORCHESTRATOR)


def test_importing_tasks_defences_registers_the_output_transforms():
    _run("import sys\nimport tasks.defences\n"
         "from tasks.attacks.membership import OUTPUT_TRANSFORMS, posteriors\n"
         "from tasks.defences import DEFENCES\n"
         "outputs = {n for n in DEFENCES.names() if DEFENCES.get(n).acts_on == 'outputs'}\n"
         "assert outputs and outputs <= set(OUTPUT_TRANSFORMS), list(OUTPUT_TRANSFORMS)\n"
         "import numpy as np\n"
         "p = posteriors(np.array([[2.0, 1.0, 0.0]]), 'label_only')\n"
         "assert p.tolist() == [[1.0, 0.0, 0.0]], p\n" + NO_ORCHESTRATOR)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_writing_a_searchs_tables_reaches_no_code_that_trains_or_evaluates():
    # Issue 27: writing `best` once climbed back into the membership search and execute.
    reached = _reachable(import_graph(), "orchestrator.search.result_tables")
    assert "orchestrator.store.tables" in reached  # the check sees its imports
    trains = {"orchestrator.search.evaluate", "orchestrator.search.objectives",
              "orchestrator.engine.execute", "orchestrator.engine.units", "tasks.training"}
    assert not reached & trains, sorted(reached & trains)
