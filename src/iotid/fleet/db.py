"""The fleet's database: engine, sessions, transactions and schema migrations.

Scope: :class:`Database` over a SQLAlchemy URL (a SQLite file by default; PostgreSQL through
psycopg 3 by ``postgresql://`` or ``postgresql+psycopg://``), with the engine options each back
end needs, a session factory, :meth:`Database.transaction`, and Alembic migrations run
programmatically (no ``alembic.ini``): :meth:`Database.upgrade` / :func:`upgrade`.

Locking model (every state transition happens under a row lock, DESIGN.md section 9):

- PostgreSQL: READ COMMITTED; repositories lock rows with ``SELECT ... FOR UPDATE``.
- SQLite: the database is one lock. A write transaction starts with ``BEGIN IMMEDIATE`` (the
  write lock is taken at BEGIN, so a read-then-write can never be overtaken and never dies of a
  lock upgrade), a read transaction with a plain deferred ``BEGIN``. WAL lets readers run beside
  the writer; ``busy_timeout`` makes writers queue instead of failing; foreign keys are on;
  ``synchronous=FULL`` so a committed registry change survives power loss.

Not in scope: the tables (``iotid.fleet.models``), queries (the slices' repositories),
LISTEN/NOTIFY (the revocation slice).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from iotid.fleet.models.base import WRITE_SESSION

__all__ = [
    "DEFAULT_URL",
    "MIGRATIONS_DIR",
    "Database",
    "alembic_config",
    "normalize_url",
    "upgrade",
]

DEFAULT_URL = "sqlite:///iotid-fleet.sqlite3"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: How long a SQLite writer waits for the lock before giving up (seconds).
SQLITE_BUSY_TIMEOUT_S = 30.0
#: pg_advisory_xact_lock key serialising concurrent `upgrade` calls ("iotidmig").
_PG_MIGRATION_LOCK = int.from_bytes(b"iotidmig", "big")


def normalize_url(url: str | URL) -> URL:
    """Parse ``url``; ``postgresql://`` means psycopg 3. Only SQLite and PostgreSQL are allowed."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername == "sqlite+pysqlite":
        parsed = parsed.set(drivername="sqlite")
    if parsed.drivername not in ("sqlite", "postgresql+psycopg"):
        raise ValueError(
            f"unsupported database {parsed.drivername!r}: use sqlite:///FILE or postgresql://..."
        )
    return parsed


def _sqlite_engine(url: URL, echo: bool, busy_timeout: float) -> Engine:
    memory = url.database in (None, "", ":memory:")
    options: dict[str, Any] = {
        "echo": echo,
        "connect_args": {"timeout": busy_timeout, "check_same_thread": False},
    }
    if memory:
        options["poolclass"] = StaticPool  # one connection, or every session sees another DB
    engine = create_engine(url, **options)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # SQLAlchemy emits BEGIN itself (below); sqlite3's implicit transactions are off.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cursor.execute("PRAGMA synchronous=FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE_SESSION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _postgres_engine(
    url: URL, echo: bool, pool_size: int, max_overflow: int, application_name: str
) -> Engine:
    return create_engine(
        url,
        echo=echo,
        pool_pre_ping=True,  # survive a database restart without a failed request
        pool_size=pool_size,
        max_overflow=max_overflow,
        connect_args={"connect_timeout": 10, "application_name": application_name},
    )


class Database:
    """One fleet database: an engine and its sessions. Thread-safe; share one per process."""

    def __init__(
        self,
        url: str | URL = DEFAULT_URL,
        *,
        echo: bool = False,
        pool_size: int = 10,
        max_overflow: int = 20,
        busy_timeout: float = SQLITE_BUSY_TIMEOUT_S,
        application_name: str = "iotid-fleet",
    ) -> None:
        self.url = normalize_url(url)
        if self.url.drivername == "sqlite":
            self.engine = _sqlite_engine(self.url, echo, busy_timeout)
        else:
            self.engine = _postgres_engine(
                self.url, echo, pool_size, max_overflow, application_name
            )
        self._write_engine = self.engine.execution_options(**{WRITE_SESSION: True})
        self._readers = sessionmaker(bind=self.engine, expire_on_commit=False)
        self._writers = sessionmaker(bind=self._write_engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def session(self, *, write: bool = True) -> Session:
        """A new session (the caller begins, commits and closes it)."""
        session = (self._writers if write else self._readers)()
        session.info[WRITE_SESSION] = write
        return session

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Session]:
        """A session inside one transaction: committed on success, rolled back on any exception.

        ``write=False`` is for reads only (SQLite: a deferred BEGIN that does not take the write
        lock); anything that may write, lock rows or append to the audit log uses the default.
        """
        with self.session(write=write) as session, session.begin():
            yield session

    @contextmanager
    def connection(self, *, write: bool = True) -> Iterator[Connection]:
        """A Core connection inside one transaction (committed on success), for DDL and bulk."""
        with (self._write_engine if write else self.engine).begin() as connection:
            yield connection

    def upgrade(self, revision: str = "head") -> None:
        """Migrate the schema to ``revision`` in one transaction (safe to call concurrently)."""
        with self.connection(write=True) as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            command.upgrade(alembic_config(connection), revision)

    def current_revision(self) -> str | None:
        """The schema's Alembic revision, or None for an empty database."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(connection: Connection | None = None, url: str | URL | None = None) -> Config:
    """An Alembic configuration for the fleet's migrations, without any ini file.

    With ``connection``, migrations run on it (inside its transaction); otherwise ``env.py``
    opens ``url``.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        rendered = normalize_url(url).render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(url: str | URL = DEFAULT_URL, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision``."""
    database = Database(url)
    try:
        database.upgrade(revision)
    finally:
        database.dispose()
