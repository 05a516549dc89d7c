"""SQL of the gateway's presence bookkeeping: a device's state and its ``last_seen_at``.

Scope: :class:`PresenceRepository` over a session the caller holds inside a write transaction:
the device's state and epoch under a row lock (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's
``BEGIN IMMEDIATE`` already serialises writers) and the ``last_seen_at`` update. UIDs arrive
normalised (upper-case hex).

Not in scope: the rules (``iotid.fleet.gateway.presence``), committing, state transitions
themselves (``iotid.fleet.devices.service.transition_device``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from iotid.fleet.models import Device, DeviceState

__all__ = ["DeviceSnapshot", "PresenceRepository"]


@dataclass(frozen=True)
class DeviceSnapshot:
    uid: str
    state: DeviceState
    key_epoch: int


class PresenceRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def lock_snapshot(self, uid: str) -> DeviceSnapshot | None:
        """The device's state and epoch, row-locked until the transaction ends; None if unknown."""
        row = self._session.execute(
            select(Device.uid, Device.state, Device.key_epoch)
            .where(Device.uid == uid)
            .with_for_update()
        ).one_or_none()
        if row is None:
            return None
        return DeviceSnapshot(row.uid, DeviceState(row.state), row.key_epoch)

    def snapshot(self, uid: str) -> DeviceSnapshot | None:
        row = self._session.execute(
            select(Device.uid, Device.state, Device.key_epoch).where(Device.uid == uid)
        ).one_or_none()
        if row is None:
            return None
        return DeviceSnapshot(row.uid, DeviceState(row.state), row.key_epoch)

    def touch(self, uid: str, now: dt.datetime) -> None:
        self._session.execute(update(Device).where(Device.uid == uid).values(last_seen_at=now))
