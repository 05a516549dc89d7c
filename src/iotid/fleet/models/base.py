"""The declarative base of the fleet registry and its shared column types.

Scope: :class:`Base` (one ``MetaData`` with a constraint naming convention, so that Alembic
migrations name every index and constraint the same on SQLite and PostgreSQL), the
:class:`UTCDateTime` column type (timezone-aware UTC in Python on both back ends) and
:func:`utcnow`.

Not in scope: the tables themselves (the sibling modules), the engine (``iotid.fleet.db``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import DateTime, MetaData
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

__all__ = ["NAMING_CONVENTION", "WRITE_SESSION", "Base", "UTCDateTime", "utcnow"]

#: ``Session.info`` key (and engine execution option) marking a write transaction; set by
#: ``iotid.fleet.db.Database``, checked by code that must only run in one (audit appends).
WRITE_SESSION = "iotid_write"

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime in Python; ``timestamptz`` on PostgreSQL, naive UTC text on SQLite.

    Naive datetimes are refused on the way in: a time without a zone is a bug, not a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: the registry stores UTC times with their zone")
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":  # SQLite has no zone: store UTC, re-attach it on the way out
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
