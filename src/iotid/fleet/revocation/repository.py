"""SQL of the revocation slice: revocation events, certificate and device revocation state.

Scope: every query the revocation service, index, follower, OCSP responder and CRL publisher
run, over a session the caller holds inside a transaction. Bulk updates (a batch of 10k devices)
are single statements with sub-selects, not per-row round trips. PostgreSQL specifics:
:meth:`RevocationRepository.lock_revocations` (a transaction-scoped advisory lock that makes
revocation event ids commit in id order, so a follower reading ``id > last`` never skips one)
and :meth:`RevocationRepository.notify` (``pg_notify``, delivered at commit).

Not in scope: rules (``service``), the audit log, committing, device state edges.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from iotid.fleet.models import Batch, Certificate, Device, DeviceState, RevocationEvent

__all__ = ["CHANNEL", "RevocationRepository"]

#: The PostgreSQL NOTIFY channel; the payload is the new event's id.
CHANNEL = "iotid_revocation"
#: pg_advisory_xact_lock key serialising revocations ("iotidrev").
_PG_REVOCATION_LOCK = int.from_bytes(b"iotidrev", "big")
_TERMINAL = (DeviceState.REVOKED, DeviceState.RETIRED)


class RevocationRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    @property
    def _postgres(self) -> bool:
        return self._session.get_bind().dialect.name == "postgresql"

    # -- writing ---------------------------------------------------------------------------------
    def lock_revocations(self) -> None:
        """Serialise revocations until commit (PostgreSQL; SQLite's write lock already does).

        Event ids then become visible in id order: a reader that saw id N never later sees an
        id below N appear (READ COMMITTED plus sequence gaps would otherwise allow it).
        """
        if self._postgres:
            self._session.execute(select(func.pg_advisory_xact_lock(_PG_REVOCATION_LOCK)))

    def lock_batch(self, name: str) -> Batch | None:
        return self._session.execute(
            select(Batch)
            .where(Batch.name == name)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).scalar_one_or_none()

    def lock_batch_devices(self, batch_id: int) -> list[tuple[int, str, DeviceState]]:
        """(id, uid, state) of every device of the batch, row-locked, ordered by UID."""
        rows = self._session.execute(
            select(Device.id, Device.uid, Device.state)
            .where(Device.batch_id == batch_id)
            .order_by(Device.uid)
            .with_for_update()
        ).all()
        return [(row.id, row.uid, DeviceState(row.state)) for row in rows]

    def revoke_live_devices_of_batch(self, batch_id: int, now: dt.datetime) -> None:
        """Every non-terminal device of the batch -> revoked (one statement)."""
        self._session.execute(
            update(Device)
            .where(Device.batch_id == batch_id, Device.state.not_in(_TERMINAL))
            .values(state=DeviceState.REVOKED, revoked_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        self._session.execute(
            update(Device)
            .where(Device.batch_id == batch_id, Device.revoked_at.is_(None))
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )

    def revoke_certificates(
        self,
        *,
        device_id: int | None = None,
        batch_id: int | None = None,
        now: dt.datetime,
        reason: str,
    ) -> list[str]:
        """Revoke every unrevoked certificate of one device or of a batch; their serials."""
        if (device_id is None) == (batch_id is None):
            raise ValueError("one of device_id and batch_id")
        if device_id is not None:
            owner = Certificate.device_id == device_id
        else:
            owner = Certificate.device_id.in_(
                select(Device.id).where(Device.batch_id == batch_id).scalar_subquery()
            )
        serials = list(
            self._session.execute(
                select(Certificate.serial)
                .where(owner, Certificate.revoked_at.is_(None))
                .order_by(Certificate.serial)
                .with_for_update()
            ).scalars()
        )
        if serials:
            self._session.execute(
                update(Certificate)
                .where(owner, Certificate.revoked_at.is_(None))
                .values(revoked_at=now, reason=reason)
                .execution_options(synchronize_session=False)
            )
        return serials

    def add_event(self, event: RevocationEvent) -> RevocationEvent:
        self._session.add(event)
        self._session.flush()  # assigns the id
        return event

    def notify(self, event_id: int) -> None:
        """PostgreSQL: wake every follower at commit (no-op on SQLite, whose followers poll)."""
        if self._postgres:
            self._session.execute(select(func.pg_notify(CHANNEL, str(event_id))))

    # -- reading ---------------------------------------------------------------------------------
    def latest_event(self, kind: str, subject: str) -> RevocationEvent | None:
        return self._session.execute(
            select(RevocationEvent)
            .where(RevocationEvent.kind == kind, RevocationEvent.subject == subject)
            .order_by(RevocationEvent.id.desc())
            .limit(1)
        ).scalar_one_or_none()

    def max_event_id(self) -> int:
        return int(
            self._session.execute(
                select(func.coalesce(func.max(RevocationEvent.id), 0))
            ).scalar_one()
        )

    def events_after(self, last_id: int, limit: int = 1000) -> Sequence[RevocationEvent]:
        return list(
            self._session.execute(
                select(RevocationEvent)
                .where(RevocationEvent.id > last_id)
                .order_by(RevocationEvent.id)
                .limit(limit)
            ).scalars()
        )

    def revoked_serials(self) -> list[str]:
        return list(
            self._session.execute(
                select(Certificate.serial).where(Certificate.revoked_at.is_not(None))
            ).scalars()
        )

    def revoked_uids(self) -> list[str]:
        return list(
            self._session.execute(
                select(Device.uid).where(
                    (Device.revoked_at.is_not(None)) | (Device.state == DeviceState.REVOKED)
                )
            ).scalars()
        )

    def revoked_batches(self) -> list[str]:
        return list(
            self._session.execute(select(Batch.name).where(Batch.revoked_at.is_not(None))).scalars()
        )

    def certificate(self, serial: str, issuer_sha256: str) -> Certificate | None:
        return self._session.execute(
            select(Certificate).where(
                Certificate.serial == serial, Certificate.issuer_sha256 == issuer_sha256
            )
        ).scalar_one_or_none()

    def revoked_certificates(
        self, issuer_sha256: str, not_expired_at: dt.datetime
    ) -> list[tuple[str, dt.datetime, str | None]]:
        """(serial, revoked_at, reason) of the CA's revoked, unexpired certificates."""
        rows = self._session.execute(
            select(Certificate.serial, Certificate.revoked_at, Certificate.reason)
            .where(
                Certificate.issuer_sha256 == issuer_sha256,
                Certificate.revoked_at.is_not(None),
                Certificate.not_after > not_expired_at,
            )
            .order_by(Certificate.revoked_at, Certificate.serial)
        ).all()
        return [(r.serial, r.revoked_at, r.reason) for r in rows]
