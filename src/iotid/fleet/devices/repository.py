"""SQL of the devices slice: batches and devices in the registry.

Scope: every query the devices service runs, over a session the caller holds inside a
transaction (``Database.transaction``). Row locks: :meth:`DeviceRepository.lock_device` issues
``SELECT ... FOR UPDATE`` (PostgreSQL); SQLite ignores the clause and relies on the write
transaction's ``BEGIN IMMEDIATE`` (``iotid.fleet.db``). UIDs arrive already normalised to
upper-case hex.

Not in scope: rules (the service), the audit log (``iotid.fleet.models.audit``), committing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, contains_eager, joinedload

from iotid.fleet.models import Batch, Device, DeviceState

__all__ = ["DeviceRepository"]

#: Bound parameters per IN list (SQLite's default limit is 32766; stay far below it).
_IN_CHUNK = 500
#: pg_advisory_xact_lock key of manifest imports ("iotidimp").
_PG_IMPORT_LOCK = int.from_bytes(b"iotidimp", "big")


class DeviceRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    # -- batches ---------------------------------------------------------------------------------
    def lock_imports(self) -> None:
        """Serialise manifest imports until the transaction ends.

        PostgreSQL: a transaction-scoped advisory lock, so an import's "is the batch there?" and
        "are the UIDs free?" see one state (READ COMMITTED would let a concurrent import commit
        between the two). SQLite: the write transaction already holds the database lock.
        """
        if self._session.get_bind().dialect.name == "postgresql":
            self._session.execute(select(func.pg_advisory_xact_lock(_PG_IMPORT_LOCK)))

    def batch_by_name(self, name: str) -> Batch | None:
        return self._session.execute(select(Batch).where(Batch.name == name)).scalar_one_or_none()

    def add_batch(self, batch: Batch) -> Batch:
        self._session.add(batch)
        self._session.flush()  # assigns batch.id; a duplicate name fails here (IntegrityError)
        return batch

    def count_devices(self, batch: Batch) -> int:
        count = self._session.execute(
            select(func.count()).select_from(Device).where(Device.batch_id == batch.id)
        ).scalar_one()
        return int(count)

    # -- devices ---------------------------------------------------------------------------------
    def existing_uids(self, uids: Sequence[str]) -> list[str]:
        """Which of ``uids`` are already registered (in any batch)."""
        found: list[str] = []
        for start in range(0, len(uids), _IN_CHUNK):
            chunk = uids[start : start + _IN_CHUNK]
            found.extend(
                self._session.execute(select(Device.uid).where(Device.uid.in_(chunk))).scalars()
            )
        return sorted(found)

    def add_devices(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Bulk-insert device rows (column name -> value); returns how many."""
        values = [dict(row) for row in rows]
        if values:
            self._session.execute(insert(Device), values)
        return len(values)

    def device(self, uid: str) -> Device | None:
        """The device with its batch loaded, or None."""
        return self._session.execute(
            select(Device)
            .options(joinedload(Device.batch, innerjoin=True))
            .where(Device.uid == uid)
        ).scalar_one_or_none()

    def lock_device(self, uid: str) -> Device | None:
        """The device, row-locked until the transaction ends (waits for a concurrent holder)."""
        return self._session.execute(
            select(Device)
            # An inner join: PostgreSQL refuses FOR UPDATE on the nullable side of an outer one.
            .options(joinedload(Device.batch, innerjoin=True))
            .where(Device.uid == uid)
            .with_for_update(of=Device)
            .execution_options(populate_existing=True)  # the locked row, not a stale identity
        ).scalar_one_or_none()

    def list_devices(
        self,
        *,
        state: DeviceState | None,
        batch: str | None,
        uid_prefix: str | None,
        after: str | None,
        limit: int,
    ) -> list[Device]:
        """Devices ordered by UID, after the ``after`` UID (keyset paging)."""
        query = (
            select(Device)
            .join(Device.batch)
            .options(contains_eager(Device.batch))
            .order_by(Device.uid)
            .limit(limit)
        )
        if state is not None:
            query = query.where(Device.state == state)
        if batch is not None:
            query = query.where(Batch.name == batch)
        if uid_prefix:
            query = query.where(Device.uid.startswith(uid_prefix, autoescape=True))
        if after is not None:
            query = query.where(Device.uid > after)
        return list(self._session.execute(query).scalars())
