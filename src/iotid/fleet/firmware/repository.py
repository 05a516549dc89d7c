"""SQL of the firmware slice: releases, group assignments, rollout counts, device groups.

Scope: every query the firmware service runs, over a session the caller holds inside a
transaction. Release listings never load the image bytes (deferred); assignments are serialised
by :meth:`FirmwareRepository.lock_assignments` (PostgreSQL: a transaction-scoped advisory lock;
SQLite: the write transaction's ``BEGIN IMMEDIATE`` already is one). Device rows are locked
through ``iotid.fleet.devices.repository.DeviceRepository.lock_device``.

Not in scope: rules (``service``), HTTP, committing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from iotid.fleet.models import AuditEntry, Device, FirmwareAssignment, FirmwareRelease

__all__ = ["REPORT_ACTION", "FirmwareRepository"]

#: Audit action of a device's firmware report (only ``invalid`` and ``applied`` are recorded).
REPORT_ACTION = "firmware.reported"
#: pg_advisory_xact_lock key of firmware assignments ("iotidfwa").
_PG_ASSIGN_LOCK = int.from_bytes(b"iotidfwa", "big")


class FirmwareRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    # -- releases -------------------------------------------------------------------------------
    def release(self, name: str, *, with_image: bool = False) -> FirmwareRelease | None:
        query = select(FirmwareRelease).where(FirmwareRelease.name == name)
        if not with_image:
            query = query.options(defer(FirmwareRelease.image))
        return self._session.execute(query).scalar_one_or_none()

    def add_release(self, release: FirmwareRelease) -> FirmwareRelease:
        self._session.add(release)
        self._session.flush()  # a duplicate name fails here (IntegrityError)
        return release

    def releases(self) -> list[FirmwareRelease]:
        return list(
            self._session.execute(
                select(FirmwareRelease)
                .options(defer(FirmwareRelease.image))
                .order_by(FirmwareRelease.created_at, FirmwareRelease.id)
            ).scalars()
        )

    # -- assignments ----------------------------------------------------------------------------
    def lock_assignments(self) -> None:
        """Serialise assignment changes until the transaction ends."""
        if self._session.get_bind().dialect.name == "postgresql":
            self._session.execute(select(func.pg_advisory_xact_lock(_PG_ASSIGN_LOCK)))

    def assignment(self, group: str) -> FirmwareAssignment | None:
        return self._session.execute(
            select(FirmwareAssignment)
            .where(FirmwareAssignment.group_name == group)
            .with_for_update()
        ).scalar_one_or_none()

    def add_assignment(self, assignment: FirmwareAssignment) -> None:
        self._session.add(assignment)
        self._session.flush()

    def assignments(self) -> list[tuple[FirmwareAssignment, FirmwareRelease]]:
        rows = self._session.execute(
            select(FirmwareAssignment, FirmwareRelease)
            .join(FirmwareRelease, FirmwareRelease.id == FirmwareAssignment.release_id)
            .options(defer(FirmwareRelease.image))
            .order_by(FirmwareAssignment.group_name)
        ).all()
        return [(a, r) for a, r in rows]

    def release_for_group(self, group: str) -> FirmwareRelease | None:
        return self._session.execute(
            select(FirmwareRelease)
            .join(FirmwareAssignment, FirmwareAssignment.release_id == FirmwareRelease.id)
            .where(FirmwareAssignment.group_name == group)
            .options(defer(FirmwareRelease.image))
        ).scalar_one_or_none()

    # -- devices --------------------------------------------------------------------------------
    def device_group(self, uid: str) -> str | None:
        """The device's group, or None for an unknown UID."""
        return self._session.execute(
            select(Device.group_name).where(Device.uid == uid)
        ).scalar_one_or_none()

    def version_counts(self) -> list[tuple[str, str | None, int]]:
        """(group, reported firmware version or None, devices) for every combination present."""
        rows = self._session.execute(
            select(Device.group_name, Device.firmware_version, func.count())
            .group_by(Device.group_name, Device.firmware_version)
            .order_by(Device.group_name)
        ).all()
        return [(g, v, int(n)) for g, v, n in rows]

    def device_groups(self, uids: list[str]) -> dict[str, str]:
        """UID -> group for the given UIDs (unknown ones are absent)."""
        out: dict[str, str] = {}
        for start in range(0, len(uids), 500):
            chunk = uids[start : start + 500]
            rows = self._session.execute(
                select(Device.uid, Device.group_name).where(Device.uid.in_(chunk))
            ).all()
            out.update((uid, group) for uid, group in rows)
        return out

    def reports(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(subject, details) of every recorded firmware report, oldest first."""
        rows = self._session.execute(
            select(AuditEntry.subject, AuditEntry.details)
            .where(AuditEntry.action == REPORT_ACTION)
            .order_by(AuditEntry.seq)
            .execution_options(yield_per=1000)
        )
        for subject, details in rows:  # noqa: UP028 (rows are Row objects, not tuples)
            yield subject, details
