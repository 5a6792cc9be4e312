"""Small name -> component registries, filled by a decorator and selected by a spec key.

A spec names a component in one of three ways:

* a registered name (``gradient_ascent``), filled by ``@REGISTRY.register("name")``;
* ``package.module:attr``, an object outside this package, imported on first use;
* a name that an installed distribution registers under the registry's entry-point group
  (``unlearn_audit.unlearning``, ``unlearn_audit.attacks``, ...), loaded on first lookup.

Objects from outside are checked against the registry's interface (``check``) before use; one
that does not fit is refused with what it lacks (:class:`PluginError`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownComponentError(KeyError):
    """A spec named a component that no registry entry provides."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginError(UnknownComponentError):
    """A ``module:attr`` or entry-point component that cannot be loaded or does not fit."""


class Registry(Generic[T]):
    """A dict of components of one kind, e.g. ``UNLEARNING = Registry("unlearning method")``.

    ``group``: the entry-point group installed packages register into. ``check``: called with
    a component from outside; returns what it lacks (an empty string when it fits).
    """

    def __init__(self, kind: str, group: str | None = None,
                 check: Callable[[object], str] | None = None) -> None:
        self.kind = kind
        self.group = group
        self.check = check
        self._items: dict[str, T] = {}
        self._entry_points_loaded = group is None

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(component: T) -> T:
            if name in self._items and self._items[name] is not component:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = component
            return component

        return decorate

    def get(self, name: str) -> T:
        if ":" in name:
            return self._import(name)
        if name not in self._items:
            self._load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}; known: {known}, or package.module:attr"
            ) from None

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and ":" in name:
            try:
                self._import(name)
            except UnknownComponentError:
                return False
            return True
        self._load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    # --- components from outside the package ---------------------------------------------------

    def _import(self, ref: str) -> T:
        module_name, _, attr = ref.partition(":")
        if not module_name or not attr:
            raise PluginError(f"{self.kind} {ref!r}: expected package.module:attr")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise PluginError(f"{self.kind} {ref!r}: cannot import {module_name!r} "
                              f"({err})") from None
        obj: object = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise PluginError(f"{self.kind} {ref!r}: {module_name!r} has no "
                                  f"attribute {attr!r}")
            obj = getattr(obj, part)
        self._verify(ref, obj)
        return obj  # type: ignore[return-value]

    def _verify(self, ref: str, obj: object) -> None:
        if self.check is None:
            return
        lacks = self.check(obj)
        if lacks:
            raise PluginError(f"{self.kind} {ref!r} does not fit: {lacks}")

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                continue
            try:
                obj = ep.load()
            except Exception as err:  # noqa: BLE001  (a broken plug-in must not hide the rest)
                raise PluginError(f"{self.kind} {ep.name!r} from entry point {ep.value!r} "
                                  f"cannot be loaded ({type(err).__name__}: {err})") from None
            self._verify(ep.name, obj)
            self._items[ep.name] = obj


def lacks_members(obj: object, base: type, members: tuple[str, ...] = ()) -> str:
    """What ``obj`` (a class) lacks to serve as a ``base``: '' when it fits."""
    if not isinstance(obj, type):
        return f"expected a class (a subclass of {base.__module__}.{base.__qualname__}), " \
               f"got {type(obj).__name__}"
    if not issubclass(obj, base):
        return f"{obj.__qualname__} is not a subclass of {base.__module__}.{base.__qualname__}"
    missing = [m for m in members if not hasattr(obj, m)]
    abstract = sorted(getattr(obj, "__abstractmethods__", ()))
    parts = []
    if missing:
        parts.append("missing " + ", ".join(missing))
    if abstract:
        parts.append("abstract methods not implemented: " + ", ".join(abstract))
    return "; ".join(parts)
