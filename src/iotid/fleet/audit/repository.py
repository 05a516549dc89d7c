"""SQL of the audit slice: reading the audit log and the rows a device trace walks.

Scope: every query the audit service runs, over a session the caller holds inside a
(read) transaction: audit entries filtered by subject / action with keyset paging on ``seq``,
one device with its batch, its certificates and its enrollment evidence. Appending and chain
verification stay with the table (``iotid.fleet.models.audit.AuditLog``), so that every slice
writes entries the same way in its own transaction.

Not in scope: rules and the trace's checks (``service``, ``trace``), committing.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from iotid.fleet.models import AuditEntry, Certificate, Device, Enrollment

__all__ = ["AuditRepository"]


class AuditRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    # -- the log --------------------------------------------------------------------------------
    def entries(
        self,
        *,
        subject: str | None = None,
        action: str | None = None,
        after_seq: int | None = None,
        limit: int,
    ) -> list[AuditEntry]:
        """Entries in ``seq`` order after ``after_seq`` (keyset paging), filtered exactly."""
        query = select(AuditEntry).order_by(AuditEntry.seq).limit(limit)
        if subject is not None:
            query = query.where(AuditEntry.subject == subject)
        if action is not None:
            query = query.where(AuditEntry.action == action)
        if after_seq is not None:
            query = query.where(AuditEntry.seq > after_seq)
        return list(self._session.execute(query).scalars())

    # -- what a trace walks ---------------------------------------------------------------------
    def device(self, uid: str) -> Device | None:
        """The device (normalised UID) with its batch loaded, or None."""
        return self._session.execute(
            select(Device)
            .options(joinedload(Device.batch, innerjoin=True))
            .where(Device.uid == uid)
        ).scalar_one_or_none()

    def certificates(self, device_id: int) -> list[Certificate]:
        """The device's certificates, oldest first."""
        return list(
            self._session.execute(
                select(Certificate)
                .where(Certificate.device_id == device_id)
                .order_by(Certificate.not_before, Certificate.id)
            ).scalars()
        )

    def enrollments(self, device_id: int) -> list[Enrollment]:
        """The device's accepted quotes, oldest first."""
        return list(
            self._session.execute(
                select(Enrollment)
                .where(Enrollment.device_id == device_id)
                .order_by(Enrollment.created_at, Enrollment.id)
            ).scalars()
        )
