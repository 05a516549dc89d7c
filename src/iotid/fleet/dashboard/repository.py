"""SQL of the dashboard: the read-only aggregates and lists no other slice already queries.

Scope: over a session the caller holds inside a READ transaction: device counts by state and by
(batch, state), the batches, the time span of accepted enrollments and their counts per time
bucket (grouped in SQL: ``extract(epoch ...)`` on PostgreSQL, ``julianday`` on SQLite, so a
large fleet is never loaded row by row), the most recent revocation events, and a device's
rotations and commands (metadata only: never a ciphertext or a proof).

Not in scope: what the other slices already answer (device lookup: ``DeviceRepository``; the
trace: ``AuditService``; telemetry: ``TelemetryService``; rollout: ``FirmwareService``), any
write, rendering.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Float, Integer, cast, func, select
from sqlalchemy.orm import Session

from iotid.fleet.models import (
    Batch,
    Command,
    Device,
    DeviceState,
    Enrollment,
    RevocationEvent,
    Rotation,
)

__all__ = ["BatchRow", "CommandRow", "DashboardRepository", "EventRow", "RotationRow"]


@dataclass(frozen=True)
class BatchRow:
    name: str
    algorithm: str
    imported_at: dt.datetime
    revoked_at: dt.datetime | None


@dataclass(frozen=True)
class EventRow:
    id: int
    kind: str
    subject: str
    reason: str
    created_by: str
    created_at: dt.datetime
    uids: int
    serials: int


@dataclass(frozen=True)
class RotationRow:
    from_epoch: int
    to_epoch: int
    state: str
    created_at: dt.datetime
    completed_at: dt.datetime | None


@dataclass(frozen=True)
class CommandRow:
    id: int
    key_epoch: int
    size: int
    created_by: str
    created_at: dt.datetime
    delivered_at: dt.datetime | None


class DashboardRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    @property
    def _postgres(self) -> bool:
        return self._session.get_bind().dialect.name == "postgresql"

    # -- fleet overview --------------------------------------------------------------------------
    def state_counts(self) -> dict[DeviceState, int]:
        rows = self._session.execute(
            select(Device.state, func.count()).group_by(Device.state)
        ).all()
        return {DeviceState(state): int(n) for state, n in rows}

    def batch_state_counts(self) -> list[tuple[str, DeviceState, int]]:
        rows = self._session.execute(
            select(Batch.name, Device.state, func.count())
            .join(Device, Device.batch_id == Batch.id)
            .group_by(Batch.name, Device.state)
            .order_by(Batch.name)
        ).all()
        return [(name, DeviceState(state), int(n)) for name, state, n in rows]

    def batches(self) -> list[BatchRow]:
        rows = self._session.execute(
            select(Batch.name, Batch.algorithm, Batch.imported_at, Batch.revoked_at).order_by(
                Batch.name
            )
        ).all()
        return [BatchRow(r.name, r.algorithm, r.imported_at, r.revoked_at) for r in rows]

    def enrollment_span(self) -> tuple[int, dt.datetime | None, dt.datetime | None]:
        """(how many accepted enrollments, the first one's time, the last one's time)."""
        count, first, last = self._session.execute(
            select(
                func.count(Enrollment.id),
                func.min(Enrollment.created_at),
                func.max(Enrollment.created_at),
            )
        ).one()
        return int(count), _as_utc(first), _as_utc(last)

    def _epoch_seconds(self) -> ColumnElement[float]:
        if self._postgres:
            return cast(func.extract("epoch", Enrollment.created_at), Float)
        # SQLite stores naive UTC text; julianday counts days since noon, 4714 BC.
        return (func.julianday(Enrollment.created_at) - 2440587.5) * 86400.0

    def enrollment_buckets(self, origin: dt.datetime, width_s: int) -> list[tuple[int, int]]:
        """(bucket index from ``origin``, accepted enrollments in it), in bucket order."""
        offset = origin.timestamp()
        index = cast(func.floor((self._epoch_seconds() - offset) / float(width_s)), Integer)
        rows = self._session.execute(
            select(index.label("bucket"), func.count())
            .select_from(Enrollment)
            .group_by("bucket")
            .order_by("bucket")
        ).all()
        return [(int(bucket), int(n)) for bucket, n in rows]

    def recent_events(self, limit: int) -> list[EventRow]:
        """The newest ``limit`` revocation events, newest first."""
        rows = self._session.execute(
            select(RevocationEvent).order_by(RevocationEvent.id.desc()).limit(limit)
        ).scalars()
        return [_event(row) for row in rows]

    # -- one device ------------------------------------------------------------------------------
    def device_events(self, uid: str, batch: str, limit: int = 20) -> list[EventRow]:
        """Revocation events naming the device (its own, its certificates') or its batch."""
        rows = self._session.execute(
            select(RevocationEvent)
            .where(
                (
                    RevocationEvent.kind.in_(("device", "certificate"))
                    & (RevocationEvent.subject == uid)
                )
                | ((RevocationEvent.kind == "batch") & (RevocationEvent.subject == batch))
            )
            .order_by(RevocationEvent.id.desc())
            .limit(limit)
        ).scalars()
        return [_event(row) for row in rows]

    def rotations(self, device_id: int) -> list[RotationRow]:
        rows = self._session.execute(
            select(
                Rotation.from_epoch,
                Rotation.to_epoch,
                Rotation.state,
                Rotation.created_at,
                Rotation.completed_at,
            )
            .where(Rotation.device_id == device_id)
            .order_by(Rotation.to_epoch)
        ).all()
        return [RotationRow(*row) for row in rows]

    def commands(self, device_id: int, limit: int) -> list[CommandRow]:
        """The newest ``limit`` commands of the device, newest first (sizes, not contents)."""
        rows = self._session.execute(
            select(
                Command.id,
                Command.key_epoch,
                func.length(Command.ciphertext),
                Command.created_by,
                Command.created_at,
                Command.delivered_at,
            )
            .where(Command.device_id == device_id)
            .order_by(Command.id.desc())
            .limit(limit)
        ).all()
        return [
            CommandRow(int(i), int(epoch), int(size or 0), by, created, delivered)
            for i, epoch, size, by, created, delivered in rows
        ]


def _event(row: RevocationEvent) -> EventRow:
    return EventRow(
        id=row.id,
        kind=row.kind,
        subject=row.subject,
        reason=row.reason,
        created_by=row.created_by,
        created_at=row.created_at,
        uids=len(row.uids),
        serials=len(row.serials),
    )


def _as_utc(value: object) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite aggregates bypass the column type
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"expected a time, got {type(value).__name__}")
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
