"""The fleet audit log: an append-only, hash-chained table, and the code that writes and checks it.

Scope: the :class:`AuditEntry` table, the chain rule, and :class:`AuditLog` (append, head,
verify) over a session. The rule is the ceremony record's (``iotid.factory.record``), whose
canonical JSON helper is reused so both logs hash identically:

- ``seq``: 1, 2, 3, ... without gaps;
- ``time``: UTC, hashed as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``;
- ``actor`` (who: ``token:ID``, ``device:UID``, ``iotid``), ``action`` (dotted, lower case),
  ``subject`` (what: ``batch:NAME``, ``device:UID``, ...), ``details`` (a JSON object of public
  facts: never key material, tokens or nonces);
- ``prev``: the previous entry's ``hash`` (64 zeros for seq 1);
- ``hash``: SHA-256 (hex) of the canonical JSON of every field above.

An entry is written in the same transaction as the change it records, so both commit or neither
does. Entries are chained when that transaction commits (a ``before_commit`` hook), serialised
by a transaction-scoped advisory lock on PostgreSQL and by the write transaction's
``BEGIN IMMEDIATE`` on SQLite, so the chain never forks and its lock is always taken last.
(Entries queued inside a SAVEPOINT that rolls back are not withdrawn: do not audit there.)
The migration adds triggers that refuse UPDATE, DELETE (and TRUNCATE on PostgreSQL) on the
table; the chain is what still catches a privileged editor. What a chain alone cannot show is
the removal of the newest entries: anchor :meth:`AuditLog.head` outside the database for that.

This module holds the audit table's only SQL until an ``audit/`` slice (trace, API) takes it
over. Not in scope: reading the log for operators (filters, paging, trace).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, BigInteger, String, event, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from iotid.fleet.models.base import WRITE_SESSION, Base, UTCDateTime, utcnow
from iotid.spec.canonical import CanonicalJsonError, canonical_json

__all__ = [
    "GENESIS_PREV",
    "AuditChainError",
    "AuditEntry",
    "AuditHead",
    "AuditLog",
    "entry_hash",
    "format_time",
]

GENESIS_PREV = "0" * 64
_ACTION = re.compile(r"[a-z0-9][a-z0-9_]*(?:\.[a-z0-9][a-z0-9_]*)*")
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: pg_advisory_xact_lock key serialising appends ("iotidaud" as a big-endian int64).
_PG_LOCK_KEY = int.from_bytes(b"iotidaud", "big")
_PENDING = "iotid_audit_pending"
_HOOKED = "iotid_audit_hooked"


class AuditEntry(Base):
    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(256), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)

    def body(self) -> dict[str, Any]:
        """Every field but ``hash``: what ``hash`` is computed over."""
        return _body(
            self.seq, self.time, self.actor, self.action, self.subject, self.details, self.prev
        )

    def __repr__(self) -> str:
        return f"AuditEntry(seq={self.seq}, action={self.action!r}, subject={self.subject!r})"


class AuditChainError(Exception):
    """The audit log was tampered with; ``seq`` names the first bad entry."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"audit entry {seq}: {reason}")
        self.seq = seq
        self.reason = reason


@dataclass(frozen=True)
class AuditHead:
    """The newest entry: anchor ``(seq, hash)`` elsewhere to detect truncation."""

    seq: int
    hash: str


def format_time(time: dt.datetime) -> str:
    if time.tzinfo is None:
        raise ValueError("naive datetime in the audit log")
    return time.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _body(
    seq: int,
    time: dt.datetime,
    actor: str,
    action: str,
    subject: str,
    details: Any,
    prev: str,
) -> dict[str, Any]:
    return {
        "seq": seq,
        "time": format_time(time),
        "actor": actor,
        "action": action,
        "subject": subject,
        "details": details,
        "prev": prev,
    }


def entry_hash(body: Mapping[str, Any]) -> str:
    try:
        encoded = canonical_json(dict(body))
    except CanonicalJsonError as exc:
        raise ValueError(str(exc)) from None
    return hashlib.sha256(encoded).hexdigest()


def _plain_details(details: Mapping[str, Any]) -> dict[str, Any]:
    """Round-trip through canonical JSON: the row holds exactly what the hash covers."""
    try:
        plain = json.loads(canonical_json(dict(details)))
    except CanonicalJsonError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(plain, dict):
        raise ValueError("audit details must be a JSON object")
    return plain


def _chain_pending(session: Session) -> None:
    """before_commit: chain the transaction's queued entries after the newest stored one."""
    pending: list[AuditEntry] = session.info.pop(_PENDING, [])
    if not pending:
        return
    session.flush()  # the recorded changes first: a failing one aborts before the chain lock
    if session.get_bind().dialect.name == "postgresql":
        # Held until the commit completes: concurrent committers queue here, the chain never
        # forks. (SQLite: the write transaction already holds the database lock.)
        session.execute(select(func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
    head = AuditLog(session).head()
    seq, prev = (1, GENESIS_PREV) if head is None else (head.seq + 1, head.hash)
    for entry in pending:
        entry.seq, entry.prev = seq, prev
        entry.hash = entry_hash(entry.body())
        session.add(entry)
        seq, prev = seq + 1, entry.hash
    session.flush()


def _drop_pending(session: Session, _previous: Any) -> None:
    """after_soft_rollback: entries of a rolled-back transaction are never written."""
    if not session.in_transaction():
        session.info.pop(_PENDING, None)


class AuditLog:
    """The audit table seen through one session (inside the caller's transaction)."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def append(
        self,
        *,
        actor: str,
        action: str,
        subject: str,
        details: Mapping[str, Any] | None = None,
        now: dt.datetime | None = None,
    ) -> AuditEntry:
        """Queue one entry; it is chained and written when the caller's transaction commits.

        The returned entry gets its ``seq``, ``prev`` and ``hash`` at commit. Chaining at commit
        means the chain's lock is always the last one a transaction takes (row locks come
        first), so a transaction that locks several devices cannot deadlock against another
        one waiting for the chain; and a rolled-back transaction leaves no entry.
        """
        if _ACTION.fullmatch(action) is None or len(action) > 64:
            raise ValueError(f"audit action {action!r} must be lower-case dotted words")
        if not actor or len(actor) > 128 or not subject or len(subject) > 256:
            raise ValueError("audit actor and subject must be non-empty and short")
        session = self._session
        if not session.info.get(WRITE_SESSION, False):
            raise RuntimeError("audit entries are appended only inside a write transaction")
        time = now or utcnow()
        format_time(time)  # refuse a naive time now, not at commit
        entry = AuditEntry(
            time=time,
            actor=actor,
            action=action,
            subject=subject,
            details=_plain_details(details or {}),
        )
        pending: list[AuditEntry] = session.info.setdefault(_PENDING, [])
        pending.append(entry)
        if not session.info.get(_HOOKED, False):
            event.listen(session, "before_commit", _chain_pending)
            event.listen(session, "after_soft_rollback", _drop_pending)
            session.info[_HOOKED] = True
        return entry

    def head(self) -> AuditHead | None:
        row = self._session.execute(
            select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)
        ).first()
        return None if row is None else AuditHead(row.seq, row.hash)

    def verify(self, *, chunk: int = 1000) -> AuditHead | None:
        """Walk the whole chain; return its head, or raise :class:`AuditChainError`."""
        expected_seq, prev = 1, GENESIS_PREV
        rows = self._session.execute(
            select(AuditEntry).order_by(AuditEntry.seq).execution_options(yield_per=chunk)
        ).scalars()
        for entry in rows:
            if entry.seq != expected_seq:
                raise AuditChainError(
                    expected_seq, f"missing (found seq {entry.seq} next: entries deleted)"
                )
            if not isinstance(entry.hash, str) or _HEX64.fullmatch(entry.hash) is None:
                raise AuditChainError(entry.seq, "hash is not 64 lower-case hex digits")
            if entry.prev != prev:
                raise AuditChainError(entry.seq, "prev is not the previous entry's hash")
            try:
                digest = entry_hash(entry.body())
            except (ValueError, TypeError):
                raise AuditChainError(entry.seq, "entry is not representable") from None
            if digest != entry.hash:
                raise AuditChainError(entry.seq, "hash does not match the content (edited)")
            expected_seq, prev = entry.seq + 1, entry.hash
            self._session.expunge(entry)  # keep memory flat on long logs
        if expected_seq == 1:
            return None
        return AuditHead(expected_seq - 1, prev)
