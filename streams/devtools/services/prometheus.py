"""Prometheus and promtool from Debian's ``prometheus`` package, to prove ``deploy/`` against.

Tests run their own Prometheus on a port of their own; nothing here starts a daemon.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from streams.errors import ServiceError

# Debian starts the packaged daemon on systemd hosts, where it would hold port 9090.
_SYSTEMD = Path("/run/systemd/system")


@dataclass(frozen=True)
class PrometheusTools:
    """The ``prometheus`` server and ``promtool`` binaries."""

    prometheus: Path
    promtool: Path

    def version(self) -> str:
        """The release of the server, as ``prometheus --version`` says it (``2.42.0+ds``)."""
        result = subprocess.run(
            [str(self.prometheus), "--version"], capture_output=True, text=True, check=False,
        )
        words = (result.stdout or result.stderr).split()
        return words[2] if len(words) > 2 else "unknown"


def installed_prometheus() -> PrometheusTools | None:
    """Prometheus' binaries on ``PATH``, or None when either is missing."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        return None
    return PrometheusTools(Path(prometheus), Path(promtool))


def find_prometheus() -> PrometheusTools:
    """Return Prometheus' binaries, installing Debian's package when root and they are missing."""
    tools = installed_prometheus()
    if tools is not None:
        return tools
    if os.geteuid() == 0 and shutil.which("apt-get"):
        _install_debian_prometheus()
        tools = installed_prometheus()
        if tools is not None:
            return tools
    raise ServiceError(
        "Prometheus binaries (prometheus, promtool) not found: install them "
        "(apt-get install prometheus)"
    )


def _install_debian_prometheus() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise ServiceError(
                "apt-get install prometheus failed: " + result.stderr.strip()[-300:]
            )
    if _SYSTEMD.is_dir():
        subprocess.run(
            ["systemctl", "disable", "--now", "prometheus.service"],
            capture_output=True, check=False,
        )
