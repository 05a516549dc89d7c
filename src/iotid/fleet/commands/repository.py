"""SQL of the commands slice.

Scope: inserting a :class:`Command`, a device's undelivered commands, one command of one device
(never another device's: the device id is part of every lookup) and marking it delivered; over a
session the caller holds in a transaction. Devices are locked through ``DeviceRepository``.

Not in scope: rules and encryption (``service``), committing.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from iotid.fleet.models import Command, Device

__all__ = ["CommandRepository"]


class CommandRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def device_id(self, uid: str) -> int | None:
        value = self._session.execute(
            select(Device.id).where(Device.uid == uid)
        ).scalar_one_or_none()
        return None if value is None else int(value)

    def add(self, command: Command) -> Command:
        self._session.add(command)
        self._session.flush()  # assigns command.id
        return command

    def undelivered(self, device_id: int, limit: int) -> list[Command]:
        return list(
            self._session.execute(
                select(Command)
                .where(Command.device_id == device_id, Command.delivered_at.is_(None))
                .order_by(Command.id)
                .limit(limit)
            ).scalars()
        )

    def lock_command(self, device_id: int, command_id: int) -> Command | None:
        """Command ``command_id`` if it belongs to ``device_id``, row-locked; else None."""
        return self._session.execute(
            select(Command)
            .where(Command.id == command_id, Command.device_id == device_id)
            .with_for_update()
        ).scalar_one_or_none()
