"""Rotation on the operator's schedule: which devices are asked to rotate their identity key.

Scope: :class:`RotationSchedule`. :meth:`~RotationSchedule.schedule` marks devices chosen by
UIDs, rollout group and/or batch (the selectors combine with AND; at least one is required)
with ``devices.rotation_due_at``; only devices in state ``enrolled`` or ``active`` are marked
(others are skipped, not refused: a schedule over a group naturally meets revoked or rotating
devices). One ``rotation.scheduled`` audit entry per marked device (its audit trace shows who
asked), in the same transaction. :func:`rotation_due` is what the gateway's whoami answers: the
device was asked and the time has come. Completing a rotation clears the mark
(``iotid.fleet.rotation.completion.commit_locked``).

Not in scope: the rotation protocol itself (``service``), HTTP (``api``), aborting a rotation
(``RotationService.abort``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from iotid.fleet.db import Database
from iotid.fleet.devices.service import normalize_uid
from iotid.fleet.errors import InvalidInput, NotFound
from iotid.fleet.models import AuditLog, Batch, Device, DeviceState, utcnow

__all__ = ["SCHEDULABLE_STATES", "RotationSchedule", "ScheduleResult", "rotation_due"]

#: States in which a device can be asked to rotate.
SCHEDULABLE_STATES = (DeviceState.ENROLLED, DeviceState.ACTIVE)
#: Most UIDs one request may name.
MAX_UIDS = 10_000
_IN_CHUNK = 500


@dataclass(frozen=True)
class ScheduleResult:
    """The devices marked for rotation, in UID order."""

    uids: tuple[str, ...]

    @property
    def scheduled(self) -> int:
        return len(self.uids)


def rotation_due(session: Session, uid: str, now: dt.datetime) -> bool:
    """True when ``uid`` (normalised) was asked to rotate and the time has come."""
    due = session.execute(
        select(Device.rotation_due_at).where(Device.uid == uid)
    ).scalar_one_or_none()
    return due is not None and due <= now


class RotationSchedule:
    """The operator's rotation schedule over one fleet database."""

    def __init__(self, db: Database, *, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    def __repr__(self) -> str:
        return f"RotationSchedule({self._db!r})"

    def schedule(
        self,
        *,
        uids: Sequence[str] | None = None,
        group: str | None = None,
        batch: str | None = None,
        actor: str,
        at: dt.datetime | None = None,
    ) -> ScheduleResult:
        """Mark the selected enrolled/active devices as due to rotate at ``at`` (default now).

        :class:`InvalidInput` without a selector, a malformed UID or a naive ``at``;
        :class:`NotFound` for a named UID or batch the registry does not know.
        """
        if uids is None and group is None and batch is None:
            raise InvalidInput("rotation.no_selector", "name the devices: uids, group and/or batch")
        now = self._clock()
        due = now if at is None else at
        if due.tzinfo is None:
            raise InvalidInput("rotation.naive_time", "the due time needs a time zone")
        keys = None if uids is None else sorted({normalize_uid(u) for u in uids})
        if keys is not None and len(keys) > MAX_UIDS:
            raise InvalidInput("rotation.too_many", f"at most {MAX_UIDS} UIDs per request")
        with self._db.transaction() as session:
            if keys is not None:
                known = self._select(session, keys, None, None, lock=False)
                missing = sorted(set(keys) - {d.uid for d in known})
                if missing:
                    raise NotFound(
                        "device.not_found", f"{len(missing)} unknown device(s), e.g. {missing[0]}"
                    )
            if (
                batch is not None
                and session.execute(
                    select(Batch.id).where(Batch.name == batch)
                ).scalar_one_or_none()
                is None
            ):
                raise NotFound("batch.not_found", f"no batch {batch}")
            devices = self._select(session, keys, group, batch, lock=True)
            marked = []
            audit = AuditLog(session)
            for device in devices:
                if DeviceState(device.state) not in SCHEDULABLE_STATES:
                    continue
                device.rotation_due_at = due
                device.updated_at = now
                marked.append(device.uid)
                audit.append(
                    actor=actor,
                    action="rotation.scheduled",
                    subject=f"device:{device.uid}",
                    details={
                        "due_at": due.astimezone(dt.UTC).isoformat(),
                        "epoch": device.key_epoch,
                    },
                    now=now,
                )
        return ScheduleResult(tuple(marked))

    def cancel(self, uid: str, *, actor: str) -> bool:
        """Withdraw a not-yet-started schedule of ``uid``; False when none was set."""
        key = normalize_uid(uid)
        now = self._clock()
        with self._db.transaction() as session:
            device = session.execute(
                select(Device).where(Device.uid == key).with_for_update()
            ).scalar_one_or_none()
            if device is None:
                raise NotFound("device.not_found", f"no device {key}")
            if device.rotation_due_at is None:
                return False
            device.rotation_due_at = None
            device.updated_at = now
            AuditLog(session).append(
                actor=actor, action="rotation.unscheduled", subject=f"device:{key}", now=now
            )
            return True

    @staticmethod
    def _select(
        session: Session,
        keys: list[str] | None,
        group: str | None,
        batch: str | None,
        *,
        lock: bool,
    ) -> list[Device]:
        query = select(Device).order_by(Device.uid)
        if lock:
            query = query.with_for_update(of=Device)
        if group is not None:
            query = query.where(Device.group_name == group)
        if batch is not None:
            query = query.join(Batch, Device.batch_id == Batch.id).where(Batch.name == batch)
        if keys is None:
            return list(session.execute(query).scalars())
        out: list[Device] = []
        for start in range(0, len(keys), _IN_CHUNK):
            chunk = keys[start : start + _IN_CHUNK]
            out.extend(session.execute(query.where(Device.uid.in_(chunk))).scalars())
        return sorted(out, key=lambda d: d.uid)
