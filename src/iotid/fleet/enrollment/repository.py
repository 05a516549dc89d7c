"""SQL of the enrollment slice: nonces, the revocation state of batch CAs, issued certificates
and enrollment evidence.

Scope: every query the enrollment service and the database nonce store run, over a session the
caller holds inside a transaction (``Database.transaction``). Row locks: :meth:`lock_nonce`
issues ``SELECT ... FOR UPDATE`` (PostgreSQL); SQLite ignores the clause and relies on the write
transaction's ``BEGIN IMMEDIATE`` (``iotid.fleet.db``). Device rows are locked through the
devices slice's :class:`~iotid.fleet.devices.repository.DeviceRepository` (one spelling of that
lock in the code base).

Not in scope: rules (``service``, ``dbnonces``), the audit log, committing.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from iotid.fleet.devices.repository import DeviceRepository
from iotid.fleet.models import Batch, Certificate, Device, Enrollment, Nonce

__all__ = ["EnrollmentRepository", "NonceRepository"]


class NonceRepository:
    """The ``nonces`` table."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add(
        self,
        *,
        value: str,
        purpose: str,
        device_uid: str | None,
        created_at: dt.datetime,
        expires_at: dt.datetime,
    ) -> None:
        self._session.add(
            Nonce(
                value=value,
                purpose=purpose,
                device_uid=device_uid,
                created_at=created_at,
                expires_at=expires_at,
            )
        )
        self._session.flush()  # a duplicate value fails here (IntegrityError)

    def lock_nonce(self, value: str, purpose: str) -> Nonce | None:
        """The nonce row of ``purpose``, row-locked until the transaction ends."""
        return self._session.execute(
            select(Nonce)
            .where(Nonce.value == value, Nonce.purpose == purpose)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).scalar_one_or_none()

    def nonce(self, value: str) -> Nonce | None:
        """Any nonce row with ``value`` (tests and diagnostics)."""
        return self._session.execute(select(Nonce).where(Nonce.value == value)).scalar_one_or_none()

    def purge(self, purpose: str, expired_before: dt.datetime) -> int:
        """Delete nonces of ``purpose`` that expired before ``expired_before``; how many."""
        result = self._session.execute(
            delete(Nonce)
            .where(Nonce.purpose == purpose, Nonce.expires_at < expired_before)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)


class EnrollmentRepository:
    """Devices (through the devices slice's repository), batches, certificates, enrollments."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._devices = DeviceRepository(session)

    def lock_device(self, uid: str) -> Device | None:
        """The device with its batch, row-locked until the transaction ends."""
        return self._devices.lock_device(uid)

    def device(self, uid: str) -> Device | None:
        return self._devices.device(uid)

    def batch_ca_revoked(self, batch_ca_sha256: str) -> bool:
        """True when a batch whose attestation CA has this fingerprint is revoked."""
        query = select(
            exists().where(Batch.batch_ca_sha256 == batch_ca_sha256, Batch.revoked_at.is_not(None))
        )
        return bool(self._session.execute(query).scalar())

    def add_certificate(self, certificate: Certificate) -> Certificate:
        self._session.add(certificate)
        self._session.flush()  # a duplicate serial fails here (IntegrityError)
        return certificate

    def add_enrollment(self, enrollment: Enrollment) -> Enrollment:
        self._session.add(enrollment)
        self._session.flush()
        return enrollment

    def certificates_of(self, device: Device) -> list[Certificate]:
        """The device's certificates, oldest first."""
        return list(
            self._session.execute(
                select(Certificate)
                .where(Certificate.device_id == device.id)
                .order_by(Certificate.id)
            ).scalars()
        )

    def enrollments_of(self, device: Device) -> list[Enrollment]:
        """The device's accepted enrollments, oldest first."""
        return list(
            self._session.execute(
                select(Enrollment).where(Enrollment.device_id == device.id).order_by(Enrollment.id)
            ).scalars()
        )
