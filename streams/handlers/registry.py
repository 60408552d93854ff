"""The declarative registry that maps Stripe event types to pure handlers and mirror tables.

A family module declares its mirror tables and registers one handler per group of event types;
handlers are pure functions from a parsed Stripe event to the rows it projects, importing no
Kafka and no database. Writers read the registry to know which columns each table has.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

Event = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class MirrorTable:
    """A mirror table in schema ``stripe`` and its typed columns beyond the common ones.

    Common columns every mirror table has: id, data, deleted, livemode, account, last_event_id,
    last_event_created, last_event_offset, updated_at.
    """

    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MirrorRow:
    """One object as an event shows it, ready to upsert into its mirror table."""

    table: str
    id: str
    data: Mapping[str, Any]
    columns: Mapping[str, Any]
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class ChildSet:
    """The complete set of children a parent has as of an event.

    Rows of ``table`` whose ``parent_column`` equals ``parent_id`` and whose id is not in ``ids``
    are marked deleted (an item removed from a subscription, say).
    """

    table: str
    parent_column: str
    parent_id: str
    ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class Projection:
    """What one event changes in the mirror tables."""

    rows: tuple[MirrorRow, ...] = ()
    child_sets: tuple[ChildSet, ...] = ()


Handler = Callable[[Event], Projection]


@dataclass(frozen=True, slots=True)
class RegisteredHandler:
    """A handler with the family it belongs to and a name for errors and dead letters."""

    family: str
    name: str
    handle: Handler


@dataclass
class HandlerRegistry:
    """Event type to handler, and table name to mirror table, for every family module."""

    _handlers: dict[str, RegisteredHandler] = field(default_factory=dict)
    _tables: dict[str, MirrorTable] = field(default_factory=dict)

    def table(self, name: str, *columns: str) -> MirrorTable:
        """Declare a mirror table and its typed columns."""
        if name in self._tables:
            raise ValueError(f"mirror table {name!r} is declared twice")
        declared = MirrorTable(name, columns)
        self._tables[name] = declared
        return declared

    def handles(self, family: str, *event_types: str) -> Callable[[Handler], Handler]:
        """Register the decorated pure function as the handler of these event types."""

        def register(handler: Handler) -> Handler:
            for event_type in event_types:
                if event_type in self._handlers:
                    raise ValueError(f"event type {event_type!r} has two handlers")
                self._handlers[event_type] = RegisteredHandler(
                    family, f"{family}.{handler.__name__}", handler
                )
            return handler

        return register

    def lookup(self, event_type: str) -> RegisteredHandler | None:
        """Return the handler of an event type, or None when the type is not projected."""
        return self._handlers.get(event_type)

    @property
    def tables(self) -> Mapping[str, MirrorTable]:
        """Every declared mirror table by name."""
        return self._tables

    @property
    def event_types(self) -> Mapping[str, RegisteredHandler]:
        """Every registered event type and its handler."""
        return self._handlers


REGISTRY = HandlerRegistry()


@cache
def load_handlers() -> HandlerRegistry:
    """Import every family module of this package so each registers itself; return the registry."""
    package = importlib.import_module("streams.handlers")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name != "registry":
            importlib.import_module(f"streams.handlers.{module.name}")
    return REGISTRY
