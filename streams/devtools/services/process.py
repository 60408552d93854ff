"""Pid files and process control shared by the local services."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

from streams.errors import ServiceError


def read_pid(pid_file: Path) -> int | None:
    """Return the pid recorded in a pid file when that process is still alive."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if is_alive(pid) else None


def is_alive(pid: int) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state != "Z"


def stop_process(pid: int, sig: signal.Signals, timeout: float) -> None:
    """Send a signal and wait for the process to exit, killing it when the timeout passes."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(pid):
            return
        _reap(pid)
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while is_alive(pid):
        _reap(pid)
        time.sleep(0.1)


def _reap(pid: int) -> None:
    # A child of this very process stays a zombie until it is waited for.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def ensure_port_free(host: str, port: int, service: str, variable: str) -> None:
    """Refuse to start a service on an address some other process already serves."""
    with socket.socket() as probe:
        probe.settimeout(1)
        if probe.connect_ex((host, port)) == 0:
            raise ServiceError(
                f"{host}:{port} is already served by a process 'services up' did not start; "
                f"stop it or point {variable} at another address before starting {service}"
            )
