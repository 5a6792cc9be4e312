"""Key paths in spec data: ``a.b.0.c`` set in nested mappings and lists (``--set`` and
grids), and the expansion of a ``grid:`` into variants.

A grid maps key paths to lists of values and expands into their product. A key that joins
several paths with commas sets them together, one tuple per value — for settings that belong
together, such as a model and the unlearning settings tuned for it::

    grid:
      model.hidden, unlearning:
        - [[64], [{method: retrain}, {method: finetune, lr: 0.05}]]
        - [[], [{method: retrain}, {method: finetune, lr: 0.01}]]
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import Any


class SpecError(ValueError):
    """A spec that cannot run; the message starts with the offending key path."""


def set_path(data: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in nested mappings and lists; SpecError naming the key when the path
    does not fit the data (a list index that is not a number or out of range, a value where a
    section should be). A mapping's key that itself holds dots (a search space's
    ``attack.lr``) is matched whole, the longest such key first."""
    keys = dotted.split(".")
    if not dotted or any(not k for k in keys):
        raise SpecError(f"{dotted!r}: expected a key path such as training.epochs")
    node: Any = data
    i = 0
    while True:
        if isinstance(node, list):
            k, step = keys[i], 1
            here = ".".join(keys[:i + 1])
            try:
                index = int(k)
                if not -len(node) <= index < len(node):
                    raise IndexError
            except (ValueError, IndexError):
                raise SpecError(f"{here}: no such list item (the list has {len(node)} "
                                f"item(s), numbered from 0)") from None
            if i + step == len(keys):
                node[index] = value
                return
            nxt = node[index]
        elif isinstance(node, dict):
            step = next((j - i for j in range(len(keys), i + 1, -1)
                         if ".".join(keys[i:j]) in node), 1)
            k = ".".join(keys[i:i + step])
            here = ".".join(keys[:i + step])
            if i + step == len(keys):
                node[k] = value
                return
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
        else:
            raise SpecError(f"{'.'.join(keys[:i])}: is a value, not a section")
        if not isinstance(nxt, (dict, list)):
            raise SpecError(f"{here}: is a value, not a section")
        node = nxt
        i += step


def _grid_paths(key: Any, values: Any) -> list[str]:
    """The key paths of one grid entry, its values checked against them."""
    paths = [p.strip() for p in key.split(",")] if isinstance(key, str) else []
    if not paths or not all(paths):
        raise SpecError(f"grid.{key}: expected a key path such as training.epochs, or several "
                        "joined by commas")
    if not isinstance(values, list) or not values:
        raise SpecError(f"grid.{key}: expected a non-empty list of values")
    if len(paths) > 1:
        for n, value in enumerate(values):
            if not isinstance(value, list) or len(value) != len(paths):
                raise SpecError(f"grid.{key}.{n}: expected a list of {len(paths)} values, one "
                                f"for each of {', '.join(paths)}")
    return paths


def grid_variants(data: dict, grid: Any) -> list[dict]:
    """One copy of ``data`` per combination of the grid's values."""
    if not isinstance(grid, Mapping):
        raise SpecError("grid: expected a mapping of key paths to lists of values")
    entries = [(_grid_paths(key, values), values) for key, values in grid.items()]
    seen: set[str] = set()
    for paths, _ in entries:
        for path in paths:
            if path in seen:  # one would silently overwrite the other
                raise SpecError(f"grid.{path}: set by two grid keys; keep it in one")
            seen.add(path)
    variants = []
    for combo in itertools.product(*(values for _, values in entries)):
        variant = copy.deepcopy(data)
        for (paths, _), value in zip(entries, combo):
            for path, part in zip(paths, value if len(paths) > 1 else [value]):
                try:
                    set_path(variant, path, part)
                except SpecError as err:
                    raise SpecError(f"grid.{err}") from None
        variants.append(variant)
    return variants
