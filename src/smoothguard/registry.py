"""One registry for every kind of thing looked up by name: models, purifiers, benchmarks, judges, answer
parsers, embedders (in the manner of lm-evaluation-harness' registry).

A :class:`Registry` holds built-in entries (an object, or ``"module:attribute"`` imported on first use),
aliases, and the entry points of installed packages (``group``, e.g. ``smoothguard.benchmarks``): how a
plug-in adds a name without being named here. Looking up a name it does not know is a one-line
``ConfigError``: ``unknown <kind> 'x'; choose one of a, b, c``. Nothing is imported until asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from smoothguard.errors import ConfigError, first_line

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries of one ``kind`` (the word its messages use, e.g. ``"benchmark"``).

    ``entries``: name -> the entry or ``"module:attribute"``; ``aliases``: other name -> name; ``group``:
    the entry-point group whose names join the built-in ones (a built-in name wins over an entry point).
    """

    def __init__(
        self,
        kind: str,
        *,
        entries: Mapping[str, T | str] | None = None,
        aliases: Mapping[str, str] | None = None,
        group: str | None = None,
    ) -> None:
        self.kind = kind
        self.group = group
        self.entries: dict[str, T | str] = dict(entries or {})
        self.aliases: dict[str, str] = dict(aliases or {})

    def register(self, name: str, entry: T | str, *, aliases: Iterable[str] = ()) -> None:
        """Make ``entry`` (or ``"module:attribute"``) the one called ``name`` (and each of ``aliases``);
        replaces an earlier registration of that name."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{self.kind} name must be a non-empty string, got {name!r}")
        self.entries[name] = entry
        self.aliases.update(dict.fromkeys(aliases, name))

    def names(self) -> list[str]:
        """The built-in names in registration order, then the installed entry points' names, sorted."""
        plugins = sorted({entry.name for entry in self._entry_points()} - set(self.entries))
        return [*self.entries, *plugins]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        name = self.aliases.get(name, name)
        return name in self.entries or self._entry_point(name) is not None

    def canonical(self, name: str) -> str:
        """The registered name ``name`` stands for (itself, or what it is an alias of)."""
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}")
        return self.aliases.get(name, name)

    def target(self, name: str) -> str:
        """Where ``name``'s entry comes from, for messages: ``module:attribute`` or the object's repr."""
        name = self.canonical(name)
        if name not in self.entries:
            return self._entry_point(name).value
        entry = self.entries[name]
        return entry if isinstance(entry, str) else repr(entry)

    def get(self, name: str) -> T:
        """The entry called ``name`` (or an alias of it), imported if it was registered by reference."""
        name = self.canonical(name)
        entry = self.entries.get(name)
        try:
            if name not in self.entries:
                return self._entry_point(name).load()
            if isinstance(entry, str):
                module, _, attribute = entry.partition(":")
                return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"{self.kind} {name!r} is registered as {self.target(name)} but cannot be imported: {first_line(exc)}"
            ) from exc
        return entry

    def _entry_point(self, name: str) -> Any:
        return next((entry for entry in self._entry_points() if entry.name == name), None)

    def _entry_points(self) -> list[Any]:
        """The installed entry points of ``group`` (objects with ``name``, ``value`` and ``load()``)."""
        return list(entry_points(group=self.group)) if self.group else []
