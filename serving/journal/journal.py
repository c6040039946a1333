"""The journal: open (and migrate) the database, one transaction per state change, read back.

SQLite under the home by default, in WAL mode so the API can read while the live loop
writes; any SQLAlchemy URL otherwise (``QT_JOURNAL_URL``, e.g. Postgres). Opening runs the
Alembic migrations to ``head`` in one transaction, so a journal is never half-migrated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from core.errors import BadConfigError, RetryableError
from core.settings import Settings
from serving.journal import queries
from serving.journal.models import Event, Order, Position, ProtectiveOrder

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: How long a SQLite writer waits for another writer's lock before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30.0
_READ_OPTION = "qt_journal_read"

T = TypeVar("T")


class Journal:
    """The transactional trade journal.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path/journal.db``, ``postgresql+psycopg://…``).

    Raises:
        BadConfigError: the URL cannot be opened or migrated (named, password masked).
        RetryableError: SQLite only: another process held the write lock for the whole
            busy timeout while this one had to migrate.
    """

    def __init__(self, url: str) -> None:
        self.url = mask_url(url)
        parsed = _parse(url)
        self.engine = _create_engine(parsed, self.url)
        read_engine = self.engine.execution_options(**{_READ_OPTION: True})
        try:
            self._upgrade(read_engine)
        except Exception:
            self.engine.dispose()
            raise
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        self._reader = sessionmaker(read_engine, expire_on_commit=False)

    @classmethod
    def open(cls, settings: Settings) -> Journal:
        """The journal of ``settings`` (``QT_JOURNAL_URL``, else ``<home>/journal/journal.db``)."""
        if settings.journal_url is None:
            folder = settings.home / "journal"
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise BadConfigError(
                    f"journal folder {folder} cannot be created: {err.strerror or err}"
                ) from err
        return cls(settings.journal_uri)

    @classmethod
    def if_exists(cls, settings: Settings) -> Journal | None:
        """The journal of ``settings``, or None before anything was journalled (creates nothing)."""
        if settings.journal_url is None and not (settings.home / "journal" / "journal.db").exists():
            return None
        return cls(settings.journal_uri)

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose changes commit together on success and roll back on any error.

        Objects stay readable after the block (they are not expired on commit).
        """
        with self._writer.begin() as session:
            yield session

    def read(self, question: Callable[[Session], T]) -> T:
        """Run ``question(session)`` in a short read-only transaction (SQLite: no write lock)."""
        with self._reader.begin() as session:
            return question(session)

    def order_by_client_id(self, client_order_id: str) -> Order | None:
        """The order with this client order id, or None."""
        return self.read(lambda s: queries.order_by_client_id(s, client_order_id))

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        """Orders that may still fill, oldest first."""
        return self.read(lambda s: queries.open_orders(s, symbol))

    def open_positions(self, symbol: str | None = None) -> list[Position]:
        """Positions not closed yet, oldest first."""
        return self.read(lambda s: queries.open_positions(s, symbol))

    def protective_orders(self, position_id: int) -> list[ProtectiveOrder]:
        """The exits journalled for a position, with their orders."""
        return self.read(lambda s: queries.protective_orders(s, position_id))

    def recent_events(self, limit: int = 50, kind: str | None = None) -> list[Event]:
        """The newest events first."""
        return self.read(lambda s: queries.recent_events(s, limit, kind))

    def trades_since(self, since: datetime | None = None) -> list[Position]:
        """Closed positions closed at or after ``since``."""
        return self.read(lambda s: queries.trades_since(s, since))

    def _upgrade(self, read_engine: Engine) -> None:
        """Alembic ``upgrade head`` in one transaction, when the journal is not at head already.

        The revision is read first without a write lock, so opening a journal that another
        process is writing to does not wait for its transaction (SQLite).
        """
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
        head = ScriptDirectory.from_config(config).get_current_head()
        try:
            with read_engine.connect() as connection:
                if MigrationContext.configure(connection).get_current_revision() == head:
                    return
            with self.engine.begin() as connection:  # SQLite: BEGIN IMMEDIATE, DDL included
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except DBAPIError as err:
            reason = self._reason(err)
            if "database is locked" in reason:
                raise RetryableError(f"journal {self.url}: {reason} (another process is writing)") from err
            raise BadConfigError(f"journal {self.url} (QT_JOURNAL_URL) cannot be opened: {reason}") from err
        except CommandError as err:
            raise BadConfigError(
                f"journal {self.url} (QT_JOURNAL_URL) cannot be migrated: {self._reason(err)}; "
                "was it written by a newer Quantum Trader?"
            ) from err

    def _reason(self, err: Exception) -> str:
        reason = str(getattr(err, "orig", None) or err).splitlines()[0]
        password = self.engine.url.password
        return reason.replace(str(password), "***") if password else reason


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError as err:
        raise BadConfigError(
            f"journal URL {mask_url(url)!r} (QT_JOURNAL_URL) is not a SQLAlchemy URL "
            "(e.g. sqlite:///path/journal.db or postgresql+psycopg://user@host/db)"
        ) from err


def _create_engine(url: URL, shown: str) -> Engine:
    sqlite = url.get_backend_name() == "sqlite"
    connect_args: dict[str, Any] = {"timeout": SQLITE_BUSY_TIMEOUT_S} if sqlite else {}
    try:
        engine = create_engine(url, connect_args=connect_args, pool_pre_ping=not sqlite)
    except (NoSuchModuleError, ImportError, ArgumentError) as err:
        raise BadConfigError(
            f"journal {shown} (QT_JOURNAL_URL): unknown database or driver not installed ({err})"
        ) from err
    if sqlite:
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    """WAL, foreign keys, and transactions SQLAlchemy begins itself (pysqlite's own BEGIN skips DDL).

    Writers take the lock at BEGIN (``BEGIN IMMEDIATE``), so a read-then-write transaction
    never fails half-way on a lock upgrade; reads (:meth:`Journal.read`) begin deferred.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN below
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")  # a committed order survives power loss
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(_READ_OPTION, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
