"""SQL of the rotation slice: rotate nonces, rotation rows, the certificates they touch.

Scope: every query :mod:`iotid.fleet.rotation.service` runs, over a session the caller holds
inside a transaction (``Database.transaction``). Rotate nonces live in the shared ``nonces``
table with purpose :data:`PURPOSE` and the device's UID; their value is lower-case hex (the
spelling ``Rotation.nonce`` uses too). Row locks are ``SELECT ... FOR UPDATE`` on PostgreSQL;
SQLite ignores the clause and relies on the write transaction's ``BEGIN IMMEDIATE``. The device
row itself is locked with ``iotid.fleet.devices.repository.DeviceRepository.lock_device``.

Not in scope: rules (the service), the audit log, committing, the enrollment nonces (their own
store), revocation other than the ``superseded`` certificates a rotation retires.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from iotid.fleet.models import Certificate, Nonce, RevocationEvent, Rotation, RotationState

__all__ = ["PURPOSE", "RotationRepository"]

#: ``Nonce.purpose`` of rotation challenges.
PURPOSE = "rotate"
#: The channel the revocation slice follows (PostgreSQL LISTEN/NOTIFY).
_NOTIFY_CHANNEL = "iotid_revocation"


class RotationRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    # -- nonces ----------------------------------------------------------------------------------
    def add_nonce(self, value: str, uid: str, now: dt.datetime, expires_at: dt.datetime) -> None:
        self._session.add(
            Nonce(
                value=value,
                purpose=PURPOSE,
                device_uid=uid,
                created_at=now,
                expires_at=expires_at,
            )
        )
        self._session.flush()  # a duplicate value fails here (IntegrityError)

    def nonce(self, value: str, *, lock: bool = False) -> Nonce | None:
        query = select(Nonce).where(Nonce.value == value)
        if lock:
            query = query.with_for_update().execution_options(populate_existing=True)
        return self._session.execute(query).scalar_one_or_none()

    def purge_nonces(self, before: dt.datetime) -> int:
        """Delete rotate nonces that expired before ``before`` (housekeeping)."""
        rows = self._session.execute(
            select(Nonce).where(Nonce.purpose == PURPOSE, Nonce.expires_at < before)
        ).scalars()
        count = 0
        for row in rows:
            self._session.delete(row)
            count += 1
        return count

    # -- rotations -------------------------------------------------------------------------------
    def rotation(self, device_id: int, to_epoch: int) -> Rotation | None:
        """The rotation of a device to ``to_epoch`` (at most one: unique constraint)."""
        return self._session.execute(
            select(Rotation)
            .where(Rotation.device_id == device_id, Rotation.to_epoch == to_epoch)
            .execution_options(populate_existing=True)
        ).scalar_one_or_none()

    def pending(self, device_id: int) -> Rotation | None:
        """The device's pending rotation, if any (the newest one should several exist)."""
        return self._session.execute(
            select(Rotation)
            .where(Rotation.device_id == device_id, Rotation.state == RotationState.PENDING.value)
            .order_by(Rotation.to_epoch.desc())
            .limit(1)
            .execution_options(populate_existing=True)
        ).scalar_one_or_none()

    def add_rotation(self, rotation: Rotation) -> Rotation:
        self._session.add(rotation)
        self._session.flush()
        return rotation

    # -- certificates ----------------------------------------------------------------------------
    def certificate(self, serial: str) -> Certificate | None:
        return self._session.execute(
            select(Certificate).where(Certificate.serial == serial)
        ).scalar_one_or_none()

    def first_certificate(
        self, device_id: int, key_epoch: int, spki_sha256: str
    ) -> Certificate | None:
        """The first certificate issued to the device for that key and epoch (the rotation's)."""
        return self._session.execute(
            select(Certificate)
            .where(
                Certificate.device_id == device_id,
                Certificate.key_epoch == key_epoch,
                Certificate.spki_sha256 == spki_sha256,
            )
            .order_by(Certificate.id)
            .limit(1)
        ).scalar_one_or_none()

    def add_certificate(self, certificate: Certificate) -> Certificate:
        self._session.add(certificate)
        self._session.flush()
        return certificate

    def live_certificates(
        self,
        device_id: int,
        *,
        below_epoch: int | None = None,
        epoch: int | None = None,
        spki_sha256: str | None = None,
    ) -> Sequence[Certificate]:
        """Unrevoked certificates of the device: of epochs below ``below_epoch``, or of exactly
        ``epoch`` (and key ``spki_sha256``)."""
        query = select(Certificate).where(
            Certificate.device_id == device_id, Certificate.revoked_at.is_(None)
        )
        if below_epoch is not None:
            query = query.where(Certificate.key_epoch < below_epoch)
        if epoch is not None:
            query = query.where(Certificate.key_epoch == epoch)
        if spki_sha256 is not None:
            query = query.where(Certificate.spki_sha256 == spki_sha256)
        return list(self._session.execute(query.order_by(Certificate.id)).scalars())

    def revocation_event(
        self, uid: str, serials: list[str], reason: str, actor: str, now: dt.datetime
    ) -> RevocationEvent:
        """Record certificates a rotation retired, so every fleet process drops connections made
        with them (``uids`` stays empty: the device itself is not revoked). On PostgreSQL the
        followers are woken with ``pg_notify`` in this same transaction."""
        event = RevocationEvent(
            kind="certificate",
            subject=uid,
            uids=[],
            serials=serials,
            reason=reason,
            created_by=actor,
            created_at=now,
        )
        self._session.add(event)
        self._session.flush()
        if self._session.get_bind().dialect.name == "postgresql":
            self._session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": _NOTIFY_CHANNEL, "payload": str(event.id)},
            )
        return event

    def count_rotations(self, device_id: int) -> int:
        return int(
            self._session.execute(
                select(func.count()).select_from(Rotation).where(Rotation.device_id == device_id)
            ).scalar_one()
        )
