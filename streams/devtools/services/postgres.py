"""A project-local PostgreSQL cluster from the system's binaries (Debian's packages)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from streams.devtools.services.process import ensure_port_free, read_pid, stop_process
from streams.errors import ServiceError

DEBIAN_BINARIES = Path("/usr/lib/postgresql")
READY_TIMEOUT = 60.0
# Debian's package would otherwise create and start its own cluster on the port we want.
CREATECLUSTER_CONF = Path("/etc/postgresql-common/createcluster.conf")


@dataclass(frozen=True)
class LocalPostgres:
    """One local cluster: where it lives, its address and the database the project uses."""

    home: Path
    host: str = "127.0.0.1"
    port: int = 5432
    database: str = "stripe_streams"
    user: str = "postgres"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def pid(self) -> int | None:
        """Pid of the running postmaster of this cluster, if any."""
        return read_pid(self.data_dir / "postmaster.pid")

    def up(self) -> int:
        """Start the cluster unless it runs, create the database, and return the postmaster pid."""
        bindir = find_binaries()
        running = self.pid()
        if running is None:
            ensure_port_free(self.host, self.port, "PostgreSQL", "DATABASE_URL")
            self._init_cluster(bindir)
            self._run(
                bindir / "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file),
                "-w", "-t", str(int(READY_TIMEOUT)), "start",
            )
            running = self.pid()
            if running is None:
                raise ServiceError(f"PostgreSQL did not start; see {self.log_file}")
        self._create_database()
        return running

    def down(self) -> bool:
        """Stop the cluster (fast shutdown) by its postmaster pid; return whether it ran."""
        pid = self.pid()
        if pid is None:
            return False
        stop_process(pid, signal.SIGINT, timeout=60)
        return True

    def _init_cluster(self, bindir: Path) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.home.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.home, owner.pw_uid, owner.pw_gid)
        self._run(
            bindir / "initdb", "-D", str(self.data_dir), "-U", self.user, "--auth=trust",
            "--encoding=UTF8", "--locale=C.UTF-8",
        )
        # The cluster is disposable dev/CI state: durability is traded for test speed.
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.home}'",
            "max_connections": "300",
            "shared_buffers": "256MB",
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "off",
            "log_min_messages": "warning",
        }
        with (self.data_dir / "postgresql.auto.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _create_database(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                with psycopg.connect(
                    host=self.host, port=self.port, user=self.user, dbname="postgres",
                    autocommit=True, connect_timeout=5,
                ) as conn:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
                    ).fetchone()
                    if not exists:
                        conn.execute(
                            sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database))
                        )
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ServiceError(f"PostgreSQL at {self.address} refused: {exc}") from None
                time.sleep(0.5)

    def _run(self, *command: str | Path) -> None:
        argv = [str(part) for part in command]
        program = Path(argv[0]).name
        if os.geteuid() == 0:
            # initdb and postgres refuse to run as root.
            argv = ["runuser", "-u", "postgres", "--", *argv]
        result = subprocess.run(
            argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"{program} failed: "
                + (result.stderr or result.stdout).strip().replace("\n", " | ")
            )


def find_binaries() -> Path:
    """Return the newest PostgreSQL server bindir, installing Debian's package when root."""
    bindir = _newest_bindir()
    if bindir is not None:
        return bindir
    if os.geteuid() == 0 and shutil.which("apt-get"):
        _install_debian_postgresql()
        bindir = _newest_bindir()
        if bindir is not None:
            return bindir
    raise ServiceError(
        "PostgreSQL server binaries not found: install them (apt-get install postgresql)"
    )


def _newest_bindir() -> Path | None:
    candidates = sorted(
        (path for path in DEBIAN_BINARIES.glob("*/bin") if (path / "initdb").exists()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _install_debian_postgresql() -> None:
    CREATECLUSTER_CONF.parent.mkdir(parents=True, exist_ok=True)
    if not CREATECLUSTER_CONF.exists():
        CREATECLUSTER_CONF.write_text("create_main_cluster = false\n")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        [
            "apt-get", "install", "-y", "-qq", "-o", "Dpkg::Options::=--force-confold",
            "postgresql",
        ],
    ):
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise ServiceError(
                "apt-get install postgresql failed: " + result.stderr.strip()[-300:]
            )
