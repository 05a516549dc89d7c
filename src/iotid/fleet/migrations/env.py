"""Alembic environment of the fleet registry: online migrations only.

Scope: run the revisions against the connection handed over in ``config.attributes``
(what ``iotid.fleet.db.Database.upgrade`` does, inside its transaction), or against
``sqlalchemy.url`` when Alembic's own command line is pointed here. SQLite uses batch mode
(``ALTER TABLE`` by copy) so later revisions can change columns.

Not in scope: offline (SQL script) mode, which the fleet does not support.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from iotid.fleet.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        raise RuntimeError("the fleet's migrations run online only")
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run(connection)
        return
    from iotid.fleet.db import Database  # noqa: PLC0415 (only for Alembic's own CLI)

    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url given to the migrations")
    database = Database(url)
    try:
        with database.connection(write=True) as connection:
            _run(connection)
    finally:
        database.dispose()


_main()
