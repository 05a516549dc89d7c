"""Fleet test fixtures: a fresh database per test on SQLite and on PostgreSQL, and signed manifests.

- ``fleet_db_url`` (parametrized ``sqlite`` / ``postgresql``): a URL to an empty database: a
  SQLite file under ``tmp_path``, or a uniquely named schema in the PostgreSQL database named by
  ``IOTID_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``),
  dropped after the test (and any left over from this session at its end).
- ``empty_fleet_db`` / ``fleet_db``: a :class:`Database` on it, without / with migrations.
- ``manifests``: a test issuance root and batch CA, and ``manifests.make(...)`` for signed
  manifests (the construction of tests/unit/factory/test_manifest.py).

PostgreSQL tests are skipped only when the server is unreachable, with the reason in the
``-ra`` summary; ``IOTID_REQUIRE_POSTGRES=1`` (CI) turns that into a failure.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import URL, make_url

from iotid.fleet.db import Database
from support.manifests import Manifests

POSTGRES_URL = os.environ.get(
    "IOTID_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
_SCHEMA_PREFIX = f"iotid_test_{os.getpid()}_"


def _admin_connect(url: URL) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        dbname=url.database or "postgres",
        connect_timeout=5,
        autocommit=True,
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[URL]:
    """The PostgreSQL server's URL, or a skip (a failure under IOTID_REQUIRE_POSTGRES=1)."""
    url = make_url(POSTGRES_URL)
    try:
        with _admin_connect(url) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        reason = f"PostgreSQL unreachable at {url.host}:{url.port}: {' '.join(str(exc).split())}"
        if os.environ.get("IOTID_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason} (IOTID_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    yield url
    with _admin_connect(url) as conn:  # schemas a crashed test left behind
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (_SCHEMA_PREFIX + "%",)
        ).fetchall()
        for (name,) in rows:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def new_postgres_schema(url: URL) -> tuple[str, URL]:
    name = _SCHEMA_PREFIX + secrets.token_hex(4)
    with _admin_connect(url) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    return name, url.update_query_dict({"options": f"-csearch_path={name}"})


def drop_postgres_schema(url: URL, name: str) -> None:
    with _admin_connect(url) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def fleet_db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[URL]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("fleet") / "fleet.sqlite3"
        yield make_url(f"sqlite:///{path}")
        return
    server: URL = request.getfixturevalue("postgres_url")
    name, url = new_postgres_schema(server)
    try:
        yield url
    finally:
        drop_postgres_schema(server, name)


@pytest.fixture
def empty_fleet_db(fleet_db_url: URL) -> Iterator[Database]:
    db = Database(fleet_db_url)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def fleet_db(empty_fleet_db: Database) -> Database:
    empty_fleet_db.upgrade()
    return empty_fleet_db


@pytest.fixture(scope="session")
def manifests() -> Manifests:
    return Manifests()
