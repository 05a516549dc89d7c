"""Enrollment and renewal nonces in the fleet database, shared by every fleet process.

Scope: :class:`DbNonceStore`, a :class:`~iotid.fleet.enrollment.nonces.NonceStore` over the
``nonces`` table for one ``purpose`` (``enroll``, ``renew``; a nonce of one purpose is unknown
to the others). A nonce is 32 random bytes from :mod:`secrets`, stored as lower-case hex with
its purpose, the device it was issued to when known, and its expiry (five minutes by default).
``consume`` locks the row (``SELECT ... FOR UPDATE``; SQLite: the write transaction's lock),
refuses an unknown, consumed or expired nonce and sets ``consumed_at``: single use, also across
processes. :meth:`DbNonceStore.bound` gives a store whose ``consume`` runs inside the caller's
session, so the nonce is consumed in the same transaction as what it authorises (an enrollment
that rolls back leaves its nonce unconsumed); a bound store can also insist the nonce was issued
to one device (renewal over the gateway). Rows expired for more than one time to live are
purged when a nonce of the same purpose is issued (until then a replay is reported as such).

Not covered: rate limiting nonce issue (the operator API's enrollment nonce needs no token: put
a limit in front of it), other purposes' rules (rotation has its own).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable

from sqlalchemy.orm import Session

from iotid.fleet.db import Database
from iotid.fleet.enrollment.nonces import DEFAULT_NONCE_LEN, NonceState
from iotid.fleet.enrollment.repository import NonceRepository
from iotid.fleet.models import utcnow
from iotid.spec.attestation import NONCE_MAX, NONCE_MIN

__all__ = ["DB_NONCE_TTL", "BoundNonceStore", "DbNonceStore", "consume_in"]

#: How long a database nonce may wait for its quote (the fleet's setting; DESIGN.md section 9).
DB_NONCE_TTL = dt.timedelta(seconds=300)
_PURPOSE_MAX = 32  # Nonce.purpose is String(32)


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def consume_in(
    session: Session, purpose: str, nonce: bytes, now: dt.datetime, device_uid: str | None = None
) -> NonceState:
    """Consume ``nonce`` of ``purpose`` inside ``session`` (a write transaction).

    With ``device_uid``, a nonce issued to another device (or to none) is unknown.
    """
    if not isinstance(nonce, bytes) or not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        return NonceState.UNKNOWN
    row = NonceRepository(session).lock_nonce(nonce.hex(), purpose)
    if row is None or (device_uid is not None and row.device_uid != device_uid):
        return NonceState.UNKNOWN
    if row.consumed_at is not None:
        return NonceState.REUSED
    if _aware(now) > row.expires_at:
        return NonceState.EXPIRED
    row.consumed_at = _aware(now)
    session.flush()
    return NonceState.OK


class BoundNonceStore:
    """A :class:`DbNonceStore` seen through the caller's session: ``consume`` joins its
    transaction (and rolls back with it). ``issue`` is not offered here: nonces are issued in
    their own transaction, before the quote exists."""

    def __init__(self, session: Session, purpose: str, device_uid: str | None = None) -> None:
        self._session = session
        self._purpose = purpose
        self._device_uid = device_uid

    def __repr__(self) -> str:
        return f"BoundNonceStore(purpose={self._purpose!r})"

    def issue(self, device_hint: str | None = None) -> bytes:
        raise NotImplementedError("issue nonces with DbNonceStore.issue")

    def consume(self, nonce: bytes, now: dt.datetime) -> NonceState:
        return consume_in(self._session, self._purpose, nonce, now, self._device_uid)


class DbNonceStore:
    """Single-use, short-lived nonces of one ``purpose`` in the fleet database (thread safe:
    every call uses its own session)."""

    def __init__(
        self,
        db: Database,
        purpose: str,
        *,
        ttl: dt.timedelta = DB_NONCE_TTL,
        clock: Callable[[], dt.datetime] = utcnow,
        nonce_len: int = DEFAULT_NONCE_LEN,
    ) -> None:
        if not purpose or len(purpose) > _PURPOSE_MAX:
            raise ValueError(f"a nonce purpose is 1 to {_PURPOSE_MAX} characters")
        if ttl <= dt.timedelta(0):
            raise ValueError("the time to live must be positive")
        if not NONCE_MIN <= nonce_len <= NONCE_MAX:
            raise ValueError(f"nonces are {NONCE_MIN} to {NONCE_MAX} bytes (RFC 9711 §4.1)")
        self._db = db
        self._purpose = purpose
        self._ttl = ttl
        self._clock = clock
        self._nonce_len = nonce_len

    def __repr__(self) -> str:
        return f"DbNonceStore(purpose={self._purpose!r}, ttl={self._ttl})"

    @property
    def purpose(self) -> str:
        return self._purpose

    @property
    def ttl(self) -> dt.timedelta:
        return self._ttl

    def issue(self, device_hint: str | None = None) -> bytes:
        return self.issue_with_expiry(device_hint)[0]

    def issue_with_expiry(self, device_uid: str | None = None) -> tuple[bytes, dt.datetime]:
        """A fresh nonce and the moment it expires; ``device_uid`` (upper-case hex) binds it to
        one device for :meth:`bound` stores that ask for that device."""
        now = _aware(self._clock())
        expires_at = now + self._ttl
        nonce = secrets.token_bytes(self._nonce_len)
        with self._db.transaction() as session:
            repo = NonceRepository(session)
            repo.purge(self._purpose, now - self._ttl)
            repo.add(
                value=nonce.hex(),
                purpose=self._purpose,
                device_uid=device_uid,
                created_at=now,
                expires_at=expires_at,
            )
        return nonce, expires_at

    def consume(self, nonce: bytes, now: dt.datetime) -> NonceState:
        """Consume in a transaction of its own."""
        with self._db.transaction() as session:
            return consume_in(session, self._purpose, nonce, now)

    def bound(self, session: Session, *, device_uid: str | None = None) -> BoundNonceStore:
        """This store's ``consume`` inside ``session`` (see :class:`BoundNonceStore`)."""
        return BoundNonceStore(session, self._purpose, device_uid)
