"""Alembic revisions of the fleet registry, oldest first (Alembic skips this file)."""
