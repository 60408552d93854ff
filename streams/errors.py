"""The one exception root of stripe-streams.

Each error says whether retrying can help (``retriable``); the retry and dead-letter policy reads
that attribute instead of matching exception types.
"""

from __future__ import annotations


class StreamsError(Exception):
    """Something in stripe-streams went wrong."""

    retriable: bool = False


class ConfigurationError(StreamsError):
    """A setting has a wrong value; the message names the variable."""


class CodecError(StreamsError):
    """A Kafka message is not a valid Avro single-object encoded record of a known schema."""


class InvalidEvent(StreamsError):
    """A body is not a Stripe event (JSON with id, object, type, created and data.object)."""


class HandlerError(StreamsError):
    """An event's object cannot be projected: the message names the event and the field."""


class ServiceError(StreamsError):
    """A local service could not be started, stopped or reached."""


class MigrationError(StreamsError):
    """The database schema cannot be migrated safely."""


class DependencyUnavailable(StreamsError):
    """A dependency (Kafka, PostgreSQL) is down; waiting and retrying will succeed."""

    retriable = True


class Misconfiguration(StreamsError):
    """A dependency refuses us for good (wrong password, no such database, schema not migrated).

    Waiting cannot help: the message is one line naming what to fix, and never a secret.
    """
