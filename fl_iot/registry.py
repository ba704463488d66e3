"""Name registries for plugins, extensible by third-party packages through entry points.

A registry maps a short name (``"mitbih"``, ``"dp-sgd"``) to a factory. Built-in plugins register
themselves at import time; a third-party package adds its own by declaring an entry point in the
registry's group, for example in its ``pyproject.toml``::

    [project.entry-points."fl_iot.trainers"]
    my-trainer = "my_package.trainers:MyTrainer"

Entry points are loaded lazily, the first time a name is looked up or the names are listed, so a
broken third-party plugin cannot break an unrelated run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from fl_iot.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of plugins of one kind.

    Parameters
    ----------
    kind : str
        What the registry holds, used in error messages (``"dataset"``, ``"trainer"``).
    entry_point_group : str
        The entry-point group scanned for third-party plugins.
    """

    def __init__(self, kind: str, entry_point_group: str) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, name: str, item: T, *, force: bool = False) -> T:
        """Add ``item`` under ``name``; refuse to replace an existing entry unless ``force``."""
        if name in self._items and not force and self._items[name] is not item:
            raise ValueError(
                f"{self.kind} {name!r} is already registered; pass force=True to replace it"
            )
        self._items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers the decorated object under ``name``."""

        def _register(item: T) -> T:
            return self.register(name, item)

        return _register

    def unregister(self, name: str) -> None:
        """Remove ``name`` (used by tests to leave no global state behind)."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        """Return the plugin registered as ``name``.

        Raises
        ------
        UnknownNameError
            If no plugin has that name; the message lists the valid names.
        """
        if name not in self._items:
            self._load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        """Return the sorted names of all registered plugins, third-party ones included."""
        self._load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for entry_point in entry_points(group=self.entry_point_group):
            if entry_point.name not in self._items:
                self._items[entry_point.name] = entry_point.load()
