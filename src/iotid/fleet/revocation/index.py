"""The in-memory revocation index every fleet process consults on each connection and request.

Scope: :class:`RevokedEvent` (an immutable copy of one ``revocation_events`` row) and
:class:`RevocationIndex`: thread-safe sets of revoked certificate serials (lower-case hex),
revoked device UIDs (upper-case hex) and revoked batch names, loaded from the registry
(:meth:`RevocationIndex.load`) and updated by :meth:`RevocationIndex.apply` (the follower calls
it for every new event). Applying an event twice is harmless.

Not in scope: following the database (``follower``), revoking (``service``), the gateway's use.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass

from iotid.fleet.db import Database
from iotid.fleet.models import RevocationEvent
from iotid.fleet.revocation.repository import RevocationRepository

__all__ = ["RevocationIndex", "RevokedEvent"]


@dataclass(frozen=True)
class RevokedEvent:
    """One revocation: ``kind`` is ``device`` (subject a UID) or ``batch`` (a batch name)."""

    id: int
    kind: str
    subject: str
    uids: frozenset[str]
    serials: frozenset[str]
    created_at: dt.datetime

    @classmethod
    def of(cls, row: RevocationEvent) -> RevokedEvent:
        return cls(
            id=row.id,
            kind=row.kind,
            subject=row.subject,
            uids=frozenset(u.upper() for u in row.uids),
            serials=frozenset(s.lower() for s in row.serials),
            created_at=row.created_at,
        )


class RevocationIndex:
    """Revoked serials, UIDs and batches in memory. Every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._serials: set[str] = set()
        self._uids: set[str] = set()
        self._batches: set[str] = set()
        self._last_event_id = 0
        self._loaded = False

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"RevocationIndex(serials={len(self._serials)}, uids={len(self._uids)}, "
                f"last_event_id={self._last_event_id})"
            )

    @property
    def last_event_id(self) -> int:
        with self._lock:
            return self._last_event_id

    @property
    def loaded(self) -> bool:
        with self._lock:
            return self._loaded

    def load(self, db: Database) -> None:
        """Replace the contents with the registry's current revocation state."""
        with db.transaction(write=False) as session:
            repo = RevocationRepository(session)
            # The id first: anything committed after it is applied again later (idempotent).
            last = repo.max_event_id()
            serials = {s.lower() for s in repo.revoked_serials()}
            uids = {u.upper() for u in repo.revoked_uids()}
            batches = set(repo.revoked_batches())
        with self._lock:
            self._serials, self._uids, self._batches = serials, uids, batches
            self._last_event_id = max(self._last_event_id, last)
            self._loaded = True

    def apply(self, event: RevokedEvent) -> None:
        with self._lock:
            self._serials.update(event.serials)
            self._uids.update(event.uids)
            if event.kind == "batch":
                self._batches.add(event.subject)
            self._last_event_id = max(self._last_event_id, event.id)

    def is_revoked(self, *, uid: str | None = None, serial: str | None = None) -> bool:
        """True when the device ``uid`` (hex) or the certificate ``serial`` (hex) is revoked.

        Keyword-only on purpose: a UID and a serial are both hex strings, and swapping them
        would silently answer False.
        """
        with self._lock:
            if uid is not None and uid.upper() in self._uids:
                return True
            return serial is not None and serial.lower().lstrip("0") in self._serials

    def is_batch_revoked(self, name: str) -> bool:
        with self._lock:
            return name in self._batches
