"""Alembic migrations of the fleet registry (run by ``iotid.fleet.db.Database.upgrade``).

Scope: ``env.py`` (how Alembic connects), ``script.py.mako`` (the template for new revisions)
and ``versions/`` (one file per revision). A package so that installs carry it along.
Not in scope: the models (``iotid.fleet.models``), deciding when to migrate (``fleet serve``).
"""
