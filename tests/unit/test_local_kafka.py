"""The cluster id `services up` formats a fresh Kafka storage with."""

from __future__ import annotations

import uuid

import pytest

from streams.devtools.services import kafka


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka's tools read an argument starting with '-' as an option, so Kafka never draws one."""
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=bytes(range(16)))])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))

    assert kafka.new_cluster_id() == "AAECAwQFBgcICQoLDA0ODw"
