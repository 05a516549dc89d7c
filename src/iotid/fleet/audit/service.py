"""The audit slice's rules: reading the log, verifying its chain, tracing a device.

Scope: :class:`AuditService`

- :meth:`~AuditService.log`: one entry in a transaction of its own (for events that change no
  row; a slice that changes rows appends with ``AuditLog`` inside its own transaction);
- :meth:`~AuditService.entries`: entries filtered by exact subject / action, keyset-paged on
  ``seq`` (``after_seq``; the page says where the next one starts);
- :meth:`~AuditService.verify`: the whole chain (``AuditLog.verify``) as an
  :class:`AuditVerification`: ok with the head, or the first bad ``seq`` and the reason;
- :meth:`~AuditService.trace`: the :class:`~iotid.fleet.audit.trace.Trace` of a device, from its
  certificates back to the ceremony record (``trace``), plus the device's own audit entries in
  order. The ceremony record is read from a copy of the file when one is configured or passed.

Results are frozen dataclasses detached from the session. Not in scope: SQL (``repository``),
HTTP (``api``), the checks of each link (``trace``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotid.fleet.audit.repository import AuditRepository
from iotid.fleet.audit.trace import (
    AuditItem,
    Trace,
    batch_link,
    ceremony_link,
    certificate_link,
    enrollment_link,
    root_link,
)
from iotid.fleet.db import Database
from iotid.fleet.devices.service import normalize_uid
from iotid.fleet.errors import InvalidInput, NotFound, Unavailable
from iotid.fleet.issuing import FleetKeys
from iotid.fleet.models import GENESIS_PREV, AuditChainError, AuditEntry, AuditLog, utcnow

__all__ = ["MAX_PAGE", "AuditEntryView", "AuditPage", "AuditService", "AuditVerification"]

MAX_PAGE = 1000
#: Longest ceremony record read (a record grows by a few hundred bytes per factory step).
MAX_RECORD_BYTES = 64 * 1024 * 1024
_ACTION = re.compile(r"[a-z0-9][a-z0-9_]*(?:\.[a-z0-9][a-z0-9_]*)*")

#: An audit entry as the API shows it (the same shape the trace lists).
AuditEntryView = AuditItem


@dataclass(frozen=True)
class AuditPage:
    items: tuple[AuditEntryView, ...]
    #: Pass as ``after_seq`` for the next page; None on the last page.
    next_after_seq: int | None


@dataclass(frozen=True)
class AuditVerification:
    """``ok`` with the head (``head_seq`` 0 and 64 zeros for an empty log), or the first bad
    entry's ``seq`` and the ``reason``."""

    ok: bool
    head_seq: int | None = None
    head_hash: str | None = None
    seq: int | None = None
    reason: str | None = None


def _view(entry: AuditEntry) -> AuditEntryView:
    return AuditItem(
        seq=entry.seq,
        time=entry.time,
        actor=entry.actor,
        action=entry.action,
        subject=entry.subject,
        details=dict(entry.details),
        hash=entry.hash,
    )


class AuditService:
    """The audit log and device traces of one fleet (``keys``: its root and issuing CA)."""

    def __init__(
        self,
        db: Database,
        keys: FleetKeys,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        ceremony_record: Path | None = None,
    ) -> None:
        self._db = db
        self._keys = keys
        self._clock = clock
        self._record = ceremony_record

    def __repr__(self) -> str:
        return f"AuditService({self._db!r})"

    # -- writing --------------------------------------------------------------------------------
    def log(
        self, *, actor: str, action: str, subject: str, details: Mapping[str, Any] | None = None
    ) -> None:
        """Append one entry in its own transaction (ValueError for a malformed action/subject)."""
        with self._db.transaction() as session:
            AuditLog(session).append(
                actor=actor, action=action, subject=subject, details=details, now=self._clock()
            )

    # -- reading --------------------------------------------------------------------------------
    def entries(
        self,
        *,
        subject: str | None = None,
        action: str | None = None,
        after_seq: int | None = None,
        limit: int = 100,
    ) -> AuditPage:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput("page.bad_limit", f"limit must be between 1 and {MAX_PAGE}")
        if after_seq is not None and after_seq < 0:
            raise InvalidInput("page.bad_cursor", "after_seq is a sequence number (>= 0)")
        if action is not None and (_ACTION.fullmatch(action) is None or len(action) > 64):
            raise InvalidInput("audit.bad_action", "an action is lower-case dotted words")
        if subject is not None and not (1 <= len(subject) <= 256 and subject.isprintable()):
            # isprintable: no NUL or other control character reaches the database (PostgreSQL
            # refuses NUL in text; no subject contains one).
            raise InvalidInput("audit.bad_subject", "a subject is 1 to 256 printable characters")
        with self._db.transaction(write=False) as session:
            rows = AuditRepository(session).entries(
                subject=subject, action=action, after_seq=after_seq, limit=limit + 1
            )
            items = tuple(_view(e) for e in rows[:limit])
        return AuditPage(items, items[-1].seq if len(rows) > limit else None)

    def verify(self) -> AuditVerification:
        """Walk the whole chain (a read transaction: writers are not blocked)."""
        with self._db.transaction(write=False) as session:
            try:
                head = AuditLog(session).verify()
            except AuditChainError as exc:
                return AuditVerification(ok=False, seq=exc.seq, reason=exc.reason)
        if head is None:
            return AuditVerification(ok=True, head_seq=0, head_hash=GENESIS_PREV)
        return AuditVerification(ok=True, head_seq=head.seq, head_hash=head.hash)

    # -- trace ----------------------------------------------------------------------------------
    def trace(self, uid: str | bytes, *, ceremony_record: Path | None = None) -> Trace:
        """The device's chain of evidence (see ``trace``); NotFound for an unknown UID.

        ``ceremony_record``: a copy of the factory's ``ceremony.jsonl`` (overrides the one the
        service was configured with); without any, the ceremony link is reported unverified.
        """
        key = normalize_uid(uid)
        record = self._read_record(ceremony_record or self._record)
        keys = self._keys
        with self._db.transaction(write=False) as session:
            repo = AuditRepository(session)
            device = repo.device(key)
            if device is None:
                raise NotFound("device.not_found", f"no device {key}")
            certificates = repo.certificates(device.id)
            serials = [c.serial for c in certificates]
            cert_links = tuple(certificate_link(c, key, keys) for c in certificates)
            enrollments = tuple(
                enrollment_link(e, device, device.batch, serials)
                for e in repo.enrollments(device.id)
            )
            batch = batch_link(device.batch, keys)
            audit: list[AuditItem] = []
            after: int | None = None
            while True:  # every entry of the device, in order, page by page
                rows = repo.entries(subject=f"device:{key}", after_seq=after, limit=MAX_PAGE)
                audit.extend(_view(e) for e in rows)
                if len(rows) < MAX_PAGE:
                    break
                after = rows[-1].seq
            state, epoch = str(device.state.value), device.key_epoch
        return Trace(
            uid=key,
            state=state,
            key_epoch=epoch,
            certificates=cert_links,
            enrollments=enrollments,
            batch=batch,
            root=root_link(keys),
            ceremony=ceremony_link(keys.root, record),
            audit=tuple(audit),
        )

    @staticmethod
    def _read_record(path: Path | None) -> bytes | None:
        if path is None:
            return None
        try:
            with Path(path).open("rb") as handle:
                data = handle.read(MAX_RECORD_BYTES + 1)
        except OSError as exc:
            raise Unavailable(
                "audit.ceremony_record_unreadable",
                f"the ceremony record copy cannot be read ({exc.strerror})",
            ) from None
        if len(data) > MAX_RECORD_BYTES:
            raise Unavailable("audit.ceremony_record_too_large", "the ceremony record is too large")
        return data
