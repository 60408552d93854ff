"""The declarative registry that maps Stripe event types to pure handlers and mirror tables.

A family module declares its mirror tables and registers one handler per group of event types;
handlers are pure functions from a parsed Stripe event to the rows it projects, importing no
Kafka and no database. Writers read the registry to know which columns each table has.

The registry also holds what each event type means for the object it carries: a registration
names the types whose event says Stripe deleted the object, and a family records the types its
topic carries that it leaves unhandled, with the reason.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from streams.log.routing import route_event

Event = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class MirrorTable:
    """A mirror table in schema ``stripe`` and its typed columns beyond the common ones.

    Common columns every mirror table has: id, data, deleted, livemode, account, last_event_id,
    last_event_created, last_event_offset, updated_at.
    """

    name: str
    column_types: Mapping[str, str]
    """Each typed column and its SQL type (``text``, ``bigint``, ``timestamptz``, ...)."""
    family: str
    """The one family whose events write this table, so rebuilding a family rebuilds it."""
    api_path: str | None = None
    """Where Stripe's API lists these objects (``/v1/customers``); None: not listable alone."""
    reconciled_type: str | None = None
    """The type of the events ``reconcile`` appends to repair a row of this table."""

    @property
    def columns(self) -> tuple[str, ...]:
        """The typed columns' names, in declaration order."""
        return tuple(self.column_types)


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
    """A handler with the family it belongs to and a name for errors and dead letters.

    ``deletes`` is true when an event of this type says Stripe deleted the object it carries.
    """

    family: str
    name: str
    handle: Handler
    deletes: bool = False


@dataclass(frozen=True, slots=True)
class UnhandledType:
    """An event type a family's topic carries but that projects nothing, and why."""

    family: str
    reason: str


@dataclass
class HandlerRegistry:
    """Event type to handler (or to why it has none), and table name to mirror table."""

    _handlers: dict[str, RegisteredHandler] = field(default_factory=dict)
    _unhandled: dict[str, UnhandledType] = field(default_factory=dict)
    _tables: dict[str, MirrorTable] = field(default_factory=dict)

    def table(
        self, name: str, column_types: Mapping[str, str], family: str, *,
        api_path: str | None = None, reconciled_type: str | None = None,
    ) -> MirrorTable:
        """Declare a mirror table, its typed columns with their SQL types, and its family."""
        if name in self._tables:
            raise ValueError(f"mirror table {name!r} is declared twice")
        declared = MirrorTable(name, dict(column_types), family, api_path, reconciled_type)
        self._tables[name] = declared
        return declared

    def handles(
        self, *event_types: str, deletes: tuple[str, ...] = ()
    ) -> Callable[[Handler], Handler]:
        """Register the decorated pure function as the handler of these event types.

        Types in ``deletes`` are handled too, and their events mark the object deleted: list
        there only the types whose event means the object no longer exists in Stripe. The
        family is the one the routing table sends these types to.
        """

        def register(handler: Handler) -> Handler:
            self.register(handler.__name__, handler, *event_types, deletes=deletes)
            return handler

        return register

    def register(
        self, name: str, handler: Handler, *event_types: str, deletes: tuple[str, ...] = ()
    ) -> None:
        """Register ``handler``, named ``name`` in dead letters, for these event types."""
        family = family_of((*event_types, *deletes))
        for event_type in (*event_types, *deletes):
            self._claim(event_type)
            self._handlers[event_type] = RegisteredHandler(
                family, f"{family}.{name}", handler, deletes=event_type in deletes
            )

    def leaves_unhandled(self, *event_types: str, reason: str) -> None:
        """Record event types a family's topic carries but deliberately does not project."""
        family = family_of(event_types)
        for event_type in event_types:
            self._claim(event_type)
            self._unhandled[event_type] = UnhandledType(family, reason)

    def _claim(self, event_type: str) -> None:
        if event_type in self._handlers or event_type in self._unhandled:
            raise ValueError(f"event type {event_type!r} is declared twice")

    def lookup(self, event_type: str) -> RegisteredHandler | None:
        """Return the handler of an event type, or None when the type is not projected."""
        return self._handlers.get(event_type)

    def deletes(self, event_type: str) -> bool:
        """Whether an event of this type says Stripe deleted the object it carries."""
        registered = self._handlers.get(event_type)
        return registered is not None and registered.deletes

    @property
    def tables(self) -> Mapping[str, MirrorTable]:
        """Every declared mirror table by name."""
        return self._tables

    def tables_of(self, family: str) -> list[str]:
        """The names of the mirror tables ``family``'s events write."""
        return sorted(name for name, table in self._tables.items() if table.family == family)

    @property
    def event_types(self) -> Mapping[str, RegisteredHandler]:
        """Every registered event type and its handler."""
        return self._handlers

    @property
    def unhandled_types(self) -> Mapping[str, UnhandledType]:
        """Every event type recorded as left unhandled, with its family and reason."""
        return self._unhandled


def family_of(event_types: tuple[str, ...]) -> str:
    """The one family the routing table sends all these event types to."""
    families = {route_event(event_type) for event_type in event_types}
    if len(families) != 1:
        raise ValueError(f"event types {sorted(event_types)} route to families {sorted(families)}")
    return families.pop()


REGISTRY = HandlerRegistry()


@cache
def load_handlers() -> HandlerRegistry:
    """Import every family module of this package so each registers itself; return the registry."""
    package = importlib.import_module("streams.handlers")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name != "registry":
            importlib.import_module(f"streams.handlers.{module.name}")
    return REGISTRY
