"""The installed release of stripe-streams, exported by every process as ``build_info``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Info

DISTRIBUTION = "stripe-streams"


def installed_version() -> str:
    """The version of the installed ``stripe-streams`` distribution, or ``unknown``."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        # Sources run without installing them still serve metrics, only without a release.
        return "unknown"


def build_info(registry: CollectorRegistry) -> None:
    """Export ``stripe_streams_build_info{version="..."} 1`` from ``registry``.

    Served by the process itself (not through multiprocess files), so it works in every mode.
    """
    Info(
        "stripe_streams_build", "The stripe-streams release this process runs.",
        registry=registry,
    ).info({"version": installed_version()})
