"""Typed reading of Stripe objects into mirror rows, shared by the family modules.

A family module declares each mirror table once, as a :class:`Mirror`: the table name, the Stripe
object type it holds, and for every typed column a :class:`Field` saying how the value is read
and which SQL type the column has. Reading a value of the wrong JSON type raises
:class:`~streams.errors.HandlerError` naming the event and the field, so bad data fails in the
handler (and is dead-lettered) rather than in the database.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from streams.errors import HandlerError
from streams.handlers.registry import (
    REGISTRY,
    Event,
    MirrorRow,
    MirrorTable,
    Projection,
    family_of,
)
from streams.log.envelope import EARLIEST_CREATED, LATEST_CREATED


@dataclass(frozen=True, slots=True)
class StripeObject:
    """A Stripe object inside an event, with readers that name the event and field on bad data."""

    event_id: str
    event_type: str
    fields: Mapping[str, Any]
    path: str = "data.object"
    deleted_by_event: bool = False

    @classmethod
    def of(cls, event: Event, object_type: str) -> StripeObject:
        """Return ``data.object`` of ``event``, which must be a ``object_type`` with an id."""
        event_id = str(event.get("id") or "<no id>")
        event_type = str(event.get("type") or "<no type>")
        data = event.get("data")
        fields = data.get("object") if isinstance(data, Mapping) else None
        if not isinstance(fields, Mapping):
            raise HandlerError(f"event {event_id} ({event_type}): data.object is not an object")
        found = cls(event_id, event_type, fields, deleted_by_event=REGISTRY.deletes(event_type))
        found.require_type(object_type)
        return found

    @property
    def id(self) -> str:
        """The object's id."""
        value = self.fields.get("id")
        if not isinstance(value, str) or not value:
            raise self.error(("id",), "is missing or not a string")
        return value

    @property
    def deleted(self) -> bool:
        """Whether the object no longer exists in Stripe.

        True for a deleted stub (``"deleted": true``) and for the ``data.object`` of an event
        type registered as deleting it; objects listed inside it (a subscription's items, say)
        are deleted only by their own stub.
        """
        return self.deleted_by_event or self.fields.get("deleted") is True

    def require_type(self, object_type: str) -> None:
        """Raise HandlerError unless this is a ``object_type`` object with an id."""
        if self.fields.get("object") != object_type:
            raise self.error(("object",), f"is {self.fields.get('object')!r}, not {object_type!r}")
        _ = self.id

    def value(self, path: tuple[str, ...]) -> Any:
        """Return the value at ``path``, None when it or any object on the way is absent."""
        current: Any = self.fields
        for depth, key in enumerate(path):
            if current is None:
                return None
            if not isinstance(current, Mapping):
                raise self.error(path[:depth], "is not an object")
            current = current.get(key)
        return current

    def children(self, path: tuple[str, ...], object_type: str) -> tuple[StripeObject, ...]:
        """Return the objects of the list at ``path`` (a Stripe list or a JSON array)."""
        listed = self.value(path)
        if isinstance(listed, Mapping):
            path, listed = (*path, "data"), listed.get("data")
        if listed is None:
            return ()
        if not isinstance(listed, list):
            raise self.error(path, "is not a list")
        found = []
        for index, fields in enumerate(listed):
            if not isinstance(fields, Mapping):
                raise self.error((*path, str(index)), "is not an object")
            child = StripeObject(
                self.event_id, self.event_type, fields, self._name((*path, str(index)))
            )
            child.require_type(object_type)
            found.append(child)
        return tuple(found)

    def error(self, path: tuple[str, ...], problem: str) -> HandlerError:
        """Return the error saying that the field at ``path`` of this object ``problem``."""
        return HandlerError(
            f"event {self.event_id} ({self.event_type}): {self._name(path)} {problem}"
        )

    def _name(self, path: tuple[str, ...]) -> str:
        return ".".join((self.path, *path))


Reader = Callable[[StripeObject], Any]


@dataclass(frozen=True, slots=True)
class Field:
    """How one typed column is read from a Stripe object, and the column's SQL type."""

    sql_type: str
    read: Reader


def _checked(
    sql_type: str,
    path: tuple[str, ...],
    accepts: Callable[[Any], bool],
    kind: str,
    convert: Callable[[Any], Any] = lambda value: value,
) -> Field:
    def read(obj: StripeObject) -> Any:
        value = obj.value(path)
        if value is None:
            return None
        if not accepts(value):
            raise obj.error(path, f"must be {kind}, got {_shown(value)}")
        return convert(value)

    return Field(sql_type, read)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_bigint(value: Any) -> bool:
    return _is_integer(value) and -(2**63) <= value < 2**63


def _is_timestamp(value: Any) -> bool:
    return _is_integer(value) and EARLIEST_CREATED <= value <= LATEST_CREATED


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def text(*path: str) -> Field:
    """A ``text`` column from a string field."""
    return _checked("text", path, lambda value: isinstance(value, str), "a string")


def integer(*path: str) -> Field:
    """A ``bigint`` column from an integer field (amounts are in the currency's minor unit)."""
    return _checked("bigint", path, _is_bigint, "an integer that fits in 64 bits")


def boolean(*path: str) -> Field:
    """A ``boolean`` column from a boolean field."""
    return _checked("boolean", path, lambda value: isinstance(value, bool), "a boolean")


def decimal(*path: str) -> Field:
    """A ``numeric`` column from a number field (kept exact: 25.5 stays 25.5)."""
    return _checked(
        "numeric",
        path,
        lambda value: _is_integer(value) or isinstance(value, float),
        "a number",
        lambda value: Decimal(str(value)),
    )


def timestamp(*path: str) -> Field:
    """A ``timestamptz`` column from a Unix timestamp field, as an aware UTC datetime."""
    return _checked(
        "timestamptz",
        path,
        _is_timestamp,
        "a Unix timestamp in years 1 to 9999",
        lambda value: datetime.fromtimestamp(value, UTC),
    )


def reference(*path: str) -> Field:
    """A ``text`` column holding the id of a related object, whether expanded or not."""

    def read(obj: StripeObject) -> str | None:
        value = obj.value(path)
        if isinstance(value, Mapping):
            value = value.get("id")
        if value is None or isinstance(value, str):
            return value
        raise obj.error(path, f"must be an id or an object with an id, got {_shown(value)}")

    return Field("text", read)


def first(*fields: Field) -> Field:
    """The first non-null of several fields of one SQL type: one column, several API shapes."""
    sql_types = {field.sql_type for field in fields}
    if len(sql_types) != 1:
        raise ValueError(f"fields of one column have different SQL types: {sorted(sql_types)}")

    def read(obj: StripeObject) -> Any:
        for field in fields:
            value = field.read(obj)
            if value is not None:
                return value
        return None

    return Field(sql_types.pop(), read)


@dataclass(frozen=True, slots=True)
class Mirror:
    """A mirror table of one Stripe object type and how each typed column is read."""

    table: MirrorTable
    object_type: str
    fields: Mapping[str, Field]

    @classmethod
    def declare(
        cls,
        name: str,
        object_type: str,
        /,
        *,
        events: tuple[str, ...] = (),
        deletes: tuple[str, ...] = (),
        family: str | None = None,
        api_path: str | None = "",
        reconciled: str | None = None,
        **fields: Field,
    ) -> Mirror:
        """Declare the mirror table ``name`` in the registry, holding ``object_type`` objects.

        An event of a type in ``events`` (or ``deletes``, whose events mark the object
        deleted) is projected as one row of this table by ``<object_type>_changed``, and so is
        ``<prefix>.reconciled``, the event ``reconcile`` appends with the object as Stripe's
        API returns it (``<prefix>`` as in the table's events: ``customer.subscription``). A
        table fed by a handler of its own lists no types here and names its ``family`` instead,
        and the ``reconciled`` type that handler registers, if any. Stripe's API lists the
        objects at ``api_path``, ``/v1/<name>`` by default; None: only under their parent.
        """
        if family is None:
            if not events and not deletes:
                raise ValueError(f"mirror table {name!r} needs its events or its family")
            family = family_of((*events, *deletes))
        if events or deletes:
            reconciled = f"{(events or deletes)[0].rsplit('.', 1)[0]}.reconciled"
        column_types = {column: field.sql_type for column, field in fields.items()}
        table = REGISTRY.table(
            name, column_types, family,
            api_path=f"/v1/{name}" if api_path == "" else api_path, reconciled_type=reconciled,
        )
        mirror = cls(table, object_type, fields)
        if events or deletes:
            handler = f"{object_type.replace('.', '_')}_changed"
            REGISTRY.register(
                handler, mirror.project, *events, *([reconciled] if reconciled else []),
                deletes=deletes,
            )
        return mirror

    def row(self, obj: StripeObject) -> MirrorRow:
        """Return the row of ``obj``; deleted when the object or the event says so."""
        obj.require_type(self.object_type)
        return MirrorRow(
            table=self.table.name,
            id=obj.id,
            data=obj.fields,
            columns={name: field.read(obj) for name, field in self.fields.items()},
            deleted=obj.deleted,
        )

    def project(self, event: Event) -> Projection:
        """Return the projection of an event whose object is one row of this table."""
        return Projection(rows=(self.row(StripeObject.of(event, self.object_type)),))
