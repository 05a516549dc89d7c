"""SQL of the telemetry slice.

Scope: the caller's device (id, state, current identity key and epoch), inserting one
:class:`Telemetry` row and listing a device's newest rows; over a session the caller holds in a
transaction. UIDs arrive normalised (upper-case hex).

Not in scope: rules and signature checks (``service``), committing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from iotid.fleet.models import Device, DeviceState, Telemetry

__all__ = ["DeviceKey", "TelemetryRepository"]


@dataclass(frozen=True)
class DeviceKey:
    id: int
    state: DeviceState
    identity_spki: bytes | None
    key_epoch: int


class TelemetryRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def device_key(self, uid: str) -> DeviceKey | None:
        row = self._session.execute(
            select(Device.id, Device.state, Device.identity_spki, Device.key_epoch).where(
                Device.uid == uid
            )
        ).one_or_none()
        if row is None:
            return None
        return DeviceKey(row.id, DeviceState(row.state), row.identity_spki, row.key_epoch)

    def add(self, row: Telemetry) -> Telemetry:
        self._session.add(row)
        self._session.flush()  # assigns row.id
        return row

    def newest(self, device_id: int, limit: int) -> list[Telemetry]:
        return list(
            self._session.execute(
                select(Telemetry)
                .where(Telemetry.device_id == device_id)
                .order_by(Telemetry.id.desc())
                .limit(limit)
            ).scalars()
        )
