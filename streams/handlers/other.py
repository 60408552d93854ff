"""The ``other`` topic: event types of objects no family mirrors, recorded and acknowledged.

The ``*.deleted`` types among them are recorded here as left unhandled, with why.
"""

from __future__ import annotations

from streams.handlers.registry import REGISTRY

REGISTRY.leaves_unhandled(
    "account.external_account.deleted",
    reason="carries a connected account's deleted bank account or card; not mirrored",
)
REGISTRY.leaves_unhandled(
    "apps.install.deleted",
    reason="says a Stripe App was uninstalled from the account; not mirrored",
)
REGISTRY.leaves_unhandled(
    "person.deleted",
    reason="carries a person deleted from a connected account; not mirrored",
)
REGISTRY.leaves_unhandled(
    "test_helpers.test_clock.deleted",
    reason="carries a deleted test clock (test mode only); not mirrored",
)
