"""Name registries for plugins, extensible by third-party packages through entry points.

A registry maps a short name (``"mitbih"``, ``"dp-sgd"``) to a factory. Built-in plugins register
themselves at import time; a third-party package adds its own by declaring an entry point in the
registry's group, for example in its ``pyproject.toml``::

    [project.entry-points."fl_iot.trainers"]
    my-trainer = "my_package.trainers:MyTrainer"

Entry points are loaded lazily, the first time a name outside the built-ins is looked up or the
names are listed, and each one on its own:

- an entry point that fails to load (import error, missing attribute, an exception in the
  plugin's module) is logged as a warning naming the entry point, its package and the error, and
  skipped; the group's other plugins still load, and looking up the broken one's name raises a
  :class:`~clients.errors.ConfigError` that says why it is unavailable;
- an entry point whose name is already registered in-process (a built-in) is ignored with a
  warning naming its package: the built-in is kept, so installing a package can never change
  what an existing config, or a committed result, means;
- of two entry points of the same name from different packages, the first one found on
  ``sys.path`` is kept and the other is ignored with a warning.

See ``docs/plugins.md`` for writing a plugin package.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from clients.errors import ConfigError, UnknownNameError

T = TypeVar("T")

log = logging.getLogger(__name__)


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
        """Registered in-process (built-ins, tests): these win over entry points."""
        self._plugins: dict[str, T] = {}
        """Loaded from entry points."""
        self._broken: dict[str, str] = {}
        """Entry points that failed to load: name -> what was tried and why it failed."""
        self._entry_points_loaded = False

    def register(self, name: str, item: T, *, force: bool = False) -> T:
        """Add ``item`` under ``name``; refuse to replace an existing entry unless ``force``.

        An entry-point plugin already loaded under ``name`` gives way (with a warning), as it
        would had it been loaded after this registration.
        """
        if name in self._items and not force and self._items[name] is not item:
            raise ValueError(
                f"{self.kind} {name!r} is already registered; pass force=True to replace it"
            )
        if name in self._plugins:
            log.warning(
                "%s plugin %r from an entry point of group %s is replaced by the %s registered "
                "in-process under the same name",
                self.kind,
                name,
                self.entry_point_group,
                _qualified_name(item),
            )
            del self._plugins[name]
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
        self._plugins.pop(name, None)
        self._broken.pop(name, None)

    def get(self, name: str) -> T:
        """Return the plugin registered as ``name``.

        Raises
        ------
        UnknownNameError
            If no plugin has that name; the message lists the valid names.
        ConfigError
            If ``name`` is an installed entry point that failed to load; the message says why.
        """
        if name in self._items:
            return self._items[name]
        self._load_entry_points()
        if name in self._plugins:
            return self._plugins[name]
        if name in self._broken:
            raise ConfigError(
                f"{self.kind} {name!r} is installed but could not be loaded: {self._broken[name]}"
                f"; fix or uninstall that package (valid choices now: {', '.join(self.names())})"
            )
        raise UnknownNameError(self.kind, name, self.names())

    def names(self) -> list[str]:
        """Return the sorted names of all usable plugins, third-party ones included."""
        self._load_entry_points()
        return sorted({*self._items, *self._plugins})

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        found = list(entry_points(group=self.entry_point_group))
        # Marked before loading, so that a plugin module that looks names up while it is being
        # imported sees the plugins loaded so far instead of re-entering this loop.
        self._entry_points_loaded = True
        origin: dict[str, str] = {}
        for entry_point in found:
            name, where = entry_point.name, _describe(entry_point)
            if name in self._items:
                log.warning(
                    "%s plugin %s ignored: %r is the name of the built-in %s, which is kept",
                    self.kind,
                    where,
                    name,
                    _qualified_name(self._items[name]),
                )
                continue
            if name in origin:
                log.warning(
                    "%s plugin %s ignored: %r is already provided by %s, which is kept",
                    self.kind,
                    where,
                    name,
                    origin[name],
                )
                continue
            origin[name] = where
            try:
                self._plugins[name] = entry_point.load()
            except Exception as error:
                self._broken[name] = f"entry point {where} raised {type(error).__name__}: {error}"
                log.warning("%s plugin skipped: %s", self.kind, self._broken[name])


def _describe(entry_point: EntryPoint) -> str:
    """``name = value (group, package version)``: enough to find the entry point's source."""
    dist = getattr(entry_point, "dist", None)
    package = f"package {dist.name} {dist.version}" if dist is not None else "unknown package"
    return f"'{entry_point.name} = {entry_point.value}' (group {entry_point.group}, {package})"


def _qualified_name(item: object) -> str:
    module = getattr(item, "__module__", None)
    name = getattr(item, "__qualname__", None)
    return f"{module}.{name}" if module and name else repr(item)
