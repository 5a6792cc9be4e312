"""What a spec file's folder gives the spec: the base of its relative paths, and the user's code.

- **Paths.** Every file a spec names (:data:`PATH_FIELDS`: the ``files`` dataset's ``path`` and
  ``test``, the pair's ``original``, ``unlearned`` and ``forget``, each supplied shadow pair's
  three files), in the spec or in its ``grid:``, is read relative to the spec file's folder;
  absolute paths and URIs (``s3://``, ``file://``, ...) stay as written. A ``--set`` override
  is what a user typed on the command line: it is read relative to the current folder.
  Resolved paths are absolute, so every worker (and node) reads the same file.
- **Code.** The folder is importable on the driver (appended to ``sys.path``: an installed
  module of the same name wins, as it does on the workers), and its Python files travel to
  every Ray worker as the job's ``runtime_env`` ``py_modules`` — its top-level ``*.py``
  modules and its packages (folders with ``__init__.py``), Python files only, at most
  :data:`MAX_CODE_BYTES` — so ``package.module:function`` factories and
  ``package.module:Class`` methods beside the spec run without PYTHONPATH, on the embedded Ray
  and on a cluster alike.

Light at import: the CLI's parsers import the spec loader, and ``--help`` loads no Ray.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.spec.key_paths import SpecError

__all__ = ["MAX_CODE_BYTES", "PATH_FIELDS", "SpecCode", "SpecFolderError", "collect_code",
           "import_from", "resolve_paths", "runtime_env", "spec_folder"]

# Key paths of the files a spec names ("*": any item of a list).
PATH_FIELDS: tuple[tuple[str, ...], ...] = (
    ("dataset", "path"), ("dataset", "test"),
    ("pair", "original"), ("pair", "unlearned"), ("pair", "forget"),
    ("pair", "shadow", "*", "original"), ("pair", "shadow", "*", "unlearned"),
    ("pair", "shadow", "*", "forget"),
)
NOT_A_FILE = {("pair", "forget"): "unknown"}  # a value of a path field that names no file

# The Python shipped to every worker: enough for any user's models and methods, small enough
# that a spec kept in a home folder or a repository root is refused instead of uploaded.
MAX_CODE_BYTES = 16 * 2**20
# The tool's own packages: every worker has them installed; never shipped from a checkout.
OWN_PACKAGES = frozenset({"orchestrator", "tasks"})


class SpecFolderError(SpecError):
    """The spec's folder cannot be shipped to the workers (too much Python in it)."""


def spec_folder(path: str | os.PathLike) -> Path:
    """The absolute folder of a spec file (as given: a symlinked spec's own folder)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path)))).parent


# --- paths ---------------------------------------------------------------------------------

def _match(keys: tuple, pattern: tuple[str, ...]) -> bool:
    return len(keys) <= len(pattern) and all(
        (p == "*" and (isinstance(k, int) or str(k).isdigit())) or p == str(k)
        for k, p in zip(keys, pattern))


def _resolve_value(keys: tuple, value: Any, base: Path) -> Any:
    """``value`` found at ``keys``, with every path field at or below it resolved."""
    full = [p for p in PATH_FIELDS if _match(keys, p)]
    if not full:
        return value
    if any(len(p) == len(keys) for p in full):
        fixed = tuple("*" if p == "*" else k for k, p in zip(keys, full[0]))
        return _absolute(value, base, NOT_A_FILE.get(fixed))
    if isinstance(value, Mapping):
        return {k: _resolve_value((*keys, k), v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_value((*keys, i), v, base) for i, v in enumerate(value)]
    return value


def _absolute(value: Any, base: Path, keyword: str | None) -> Any:
    """A relative local path joined to ``base``; anything else (absolute paths, URIs, a
    keyword such as ``unknown``, values of the wrong type: refused later) as it is."""
    if not isinstance(value, str) or not value or "://" in value or value == keyword:
        return value
    path = os.path.expanduser(value)
    if os.path.isabs(path):
        return value
    return os.path.normpath(os.path.join(base, path))


def resolve_paths(data: Mapping[str, Any], base: str | os.PathLike) -> dict[str, Any]:
    """A copy of a spec mapping whose relative file paths (:data:`PATH_FIELDS`, in the spec
    and in its ``grid:``) are joined to ``base``. Idempotent; malformed sections are left for
    validation to refuse with their key path."""
    base = Path(os.path.abspath(base))
    out = {k: _resolve_value((k,), copy.deepcopy(v), base) for k, v in data.items()
           if k != "grid"}
    if "grid" in data:
        grid = copy.deepcopy(data["grid"])
        if isinstance(grid, Mapping):
            grid = {key: _resolve_grid(key, values, base) for key, values in grid.items()}
        out["grid"] = grid
    return {k: out[k] for k in data}  # the spec's own key order


def _resolve_grid(key: Any, values: Any, base: Path) -> Any:
    if not isinstance(key, str) or not isinstance(values, list):
        return values
    paths = [tuple(int(k) if k.isdigit() else k for k in p.strip().split("."))
             for p in key.split(",")]
    if len(paths) == 1:
        return [_resolve_value(paths[0], v, base) for v in values]
    return [[_resolve_value(p, part, base) for p, part in zip(paths, v)]
            if isinstance(v, list) and len(v) == len(paths) else v for v in values]


# --- code ----------------------------------------------------------------------------------

def import_from(folder: Path) -> None:
    """Make the spec's folder importable here (after every other entry of ``sys.path``)."""
    entry = str(folder)
    if entry not in sys.path:
        sys.path.append(entry)


@dataclass(frozen=True)
class SpecCode:
    """The Python beside a spec that its workers need: top-level modules and packages."""

    folder: Path
    modules: tuple[str, ...]  # top-level names: "byo_models", "mypkg"
    files: tuple[str, ...]  # relative paths of the Python files shipped
    size: int  # their bytes


def _python_files(package: str) -> Iterator[str]:
    """Every ``*.py`` file below a package folder (hidden folders and caches skipped)."""
    for root, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py") and not name.startswith("."):
                yield os.path.join(root, name)


def _taken(name: str, folder: Path) -> bool:
    """Whether ``name`` is imported from elsewhere than ``folder`` (the tool itself, the
    standard library, an installed package): then it is not the user's code to ship."""
    if name in OWN_PACKAGES or name in sys.stdlib_module_names:
        return True
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    if found is None:
        return False
    where = found.origin if found.origin not in (None, "namespace") else next(
        iter(found.submodule_search_locations or ()), None)
    if where is None:
        return True  # built in or frozen
    return os.path.dirname(os.path.abspath(where)) not in (str(folder), str(folder / name))


def collect_code(spec_path: str | os.PathLike) -> SpecCode:
    """The Python files beside the spec ``spec_path`` to ship to the workers; a
    :class:`SpecFolderError` (one line) when they come to more than :data:`MAX_CODE_BYTES`."""
    folder = spec_folder(spec_path)
    modules, files, size = [], [], 0
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        entries = []
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name == "__pycache__":
            continue
        if name.endswith(".py") and entry.is_file():
            module, found = name[:-3], [entry.path]
        elif entry.is_dir() and os.path.isfile(os.path.join(entry.path, "__init__.py")):
            module, found = name, _python_files(entry.path)
        else:
            continue
        if not module.isidentifier() or _taken(module, folder):
            continue
        modules.append(module)
        for path in found:
            size += os.path.getsize(path)
            files.append(os.path.relpath(path, folder))
            if size > MAX_CODE_BYTES:
                raise SpecFolderError(
                    f"{folder}: the Python modules and packages beside the spec come to more "
                    f"than {MAX_CODE_BYTES // 2**20} MiB, too much to ship to every Ray "
                    "worker; keep the spec and its own code in a folder of their own")
    return SpecCode(folder, tuple(modules), tuple(files), size)


@contextlib.contextmanager
def runtime_env(code: SpecCode | None) -> Iterator[dict[str, Any] | None]:
    """The job's Ray ``runtime_env`` shipping ``code`` (None when there is none), valid while
    the context is open: ``ray.init`` uploads it, so the context closes after it returns.

    Each module is one ``py_modules`` entry (Ray puts it on the workers' import path): a
    top-level file as it is, a package as a copy of its Python files only (no data travels).
    """
    if code is None or not code.modules:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="unlearn-audit-code-") as staging:
        entries = []
        for module in code.modules:
            single = code.folder / f"{module}.py"
            if single.is_file() and not (code.folder / module / "__init__.py").is_file():
                entries.append(str(single))
                continue
            for rel in code.files:
                if rel.split(os.sep, 1)[0] == module:
                    target = os.path.join(staging, rel)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copyfile(code.folder / rel, target)
            entries.append(os.path.join(staging, module))
        yield {"py_modules": entries}
