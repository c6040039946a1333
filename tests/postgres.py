"""A real PostgreSQL for tests: Debian's server binaries, a throwaway cluster in a temporary folder.

:func:`postgres_server` runs ``initdb`` into a fresh folder, starts the server on a free
127.0.0.1 port (its unix socket in that folder, never ``/var/run/postgresql``), creates the
databases asked for and yields where to reach them; on exit it stops the server
(``pg_ctl stop -m fast``) and deletes the folder. Durability is off (``fsync``,
``synchronous_commit``, ``full_page_writes``): the cluster lives for one test module.

PostgreSQL refuses to run as root, and CI runs as root: then the cluster belongs to the
``postgres`` system user Debian's package creates (else ``nobody``), and ``initdb`` /
``pg_ctl`` run as that user. Without the server binaries the test is skipped, naming them;
``.ci/run`` installs Debian's ``postgresql`` package when they are missing, so CI runs it.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

#: Where Debian's postgresql-NN packages put the server programs (not on PATH).
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SUPERUSER = "qt"
HOST = "127.0.0.1"
#: Settings for a cluster that only has to be fast: nothing it holds must survive a crash.
FAST_CONFIG = {
    "listen_addresses": f"'{HOST}'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'16MB'",
    "max_connections": "60",
    "max_wal_size": "'256MB'",
    "autovacuum": "off",
    "log_min_messages": "warning",
}


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway cluster: trust authentication for :data:`SUPERUSER` on ``HOST:port``."""

    port: int
    data_dir: Path
    databases: tuple[str, ...]
    host: str = HOST
    user: str = SUPERUSER

    def url(self, database: str, driver: str = "psycopg") -> str:
        """SQLAlchemy URL of ``database`` (``driver``: ``psycopg`` or ``asyncpg``)."""
        return f"postgresql+{driver}://{self.user}@{self.host}:{self.port}/{database}"

    def query(self, database: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """Rows of one SQL statement run on ``database`` (straight through psycopg, no ORM)."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname=database) as db:
            return list(db.execute(sql.encode(), params or None).fetchall())


def server_binaries() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres`` (newest Debian version first).

    ``initdb`` on PATH counts too, resolved through symlinks (a ``/usr/local/bin/initdb``
    link into ``/usr/lib/postgresql/15/bin``, Homebrew's folder).
    """
    folders = sorted(Path("/").glob(DEBIAN_BIN_GLOB.lstrip("/")), key=_major_version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path is not None:
        folders.append(Path(on_path).resolve().parent)
    for folder in folders:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _major_version(folder: Path) -> int:
    version = folder.parent.name
    return int(version) if version.isdigit() else 0


def _cluster_owner() -> pwd.struct_passwd | None:
    """The unprivileged user who runs the cluster when we are root (None: run it as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.skip("running as root, and neither a postgres nor a nobody user exists to run PostgreSQL")


@contextmanager
def postgres_server(databases: Sequence[str] = ("mlflow", "journal", "prefect")) -> Iterator[PostgresServer]:
    """A fresh PostgreSQL with ``databases`` created, stopped and deleted on exit.

    Skips the test (``pytest.skip``) when PostgreSQL's server binaries are not installed.

    Raises:
        RuntimeError: ``initdb`` or the server failed (with PostgreSQL's own message).
    """
    binaries = server_binaries()
    if binaries is None:
        pytest.skip(
            f"PostgreSQL server binaries not found ({DEBIAN_BIN_GLOB}/initdb, pg_ctl; initdb on PATH): "
            "install Debian's postgresql package (.ci/run does, as root)"
        )
    owner = _cluster_owner()
    root = Path(tempfile.mkdtemp(prefix="qt-pg-"))  # short: the socket path must stay < 108 bytes
    try:
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        data = root / "data"
        _as_owner(owner, root, [str(binaries / "initdb"), "-D", str(data), "-U", SUPERUSER,
                                "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"])  # fmt: skip
        settings = {**FAST_CONFIG, "unix_socket_directories": f"'{root}'"}
        with (data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        port = _start(binaries, owner, root, data)
        try:
            server = PostgresServer(port, data, tuple(databases))
            _create_databases(server)
            yield server
        finally:
            _stop(binaries, owner, root, data)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _start(binaries: Path, owner: pwd.struct_passwd | None, root: Path, data: Path) -> int:
    """Start the server on a free port (another one when a racing process took it first)."""
    log = root / "postgres.log"
    for _attempt in range(3):
        port = free_port()
        done = _as_owner(
            owner, root,
            [str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", f"-p {port}", "-w", "-t", "60",
             "start"],
            check=False,
        )  # fmt: skip
        if done.returncode == 0:
            return port
        text = log.read_text(errors="replace") if log.exists() else ""
        if not re.search(r"could not bind|Address already in use", text):
            break
    _stop(binaries, owner, root, data)  # one still starting after pg_ctl's 60 s must not outlive us
    raise RuntimeError(f"PostgreSQL did not start: {done.stdout}{done.stderr}\n{text[-2000:]}")


def _stop(binaries: Path, owner: pwd.struct_passwd | None, root: Path, data: Path) -> None:
    done = _as_owner(owner, root, [str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                     check=False)  # fmt: skip
    if done.returncode != 0:  # never leave a server behind: cut it off
        _as_owner(owner, root, [str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                  check=False)  # fmt: skip


def _create_databases(server: PostgresServer) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        host=server.host, port=server.port, user=server.user, dbname="postgres", autocommit=True
    ) as db:
        for name in server.databases:
            db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _as_owner(
    owner: pwd.struct_passwd | None, cwd: Path, command: list[str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program as the cluster's owner (root may not run them)."""
    who: dict[str, Any] = {}
    if owner is not None:
        who = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C"}
    if owner is not None:
        env |= {"HOME": str(cwd), "USER": owner.pw_name, "LOGNAME": owner.pw_name}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, **who)
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{Path(command[0]).name} failed ({done.returncode}): {done.stderr or done.stdout}"
        )
    return done
