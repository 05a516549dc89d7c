"""Enrollment nonces: single use, short lived (DESIGN.md section 9; RFC 9711 §4.1 eat_nonce).

Scope: the :class:`NonceStore` protocol the quote verifier talks to (``issue`` a fresh nonce,
``consume`` it once) with the answer :class:`NonceState`, and :class:`InMemoryNonceStore`, a
store for one process: random nonces from :mod:`secrets`, a time to live (60 s by default), a
nonce consumed at most once. ``consume`` says why a nonce is refused: never issued (or forgotten
long ago), already consumed, or issued too long ago. Consumed and expired nonces are remembered
for one more time to live, so a replay soon after is reported as such; after that they are
forgotten (then: unknown, still refused). The store is bounded (``capacity``): when it is full
of live nonces, :meth:`InMemoryNonceStore.issue` raises :class:`NonceCapacityError` rather than
evicting a nonce a device is still using.

Not covered: the database-backed store several fleet processes share (a later repository with
the same protocol), binding a nonce to a device (``device_hint`` is recorded, never checked: the
quote's UID is what counts), rate limiting.
"""

from __future__ import annotations

import collections
import datetime as dt
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum, unique
from typing import Protocol, runtime_checkable

from iotid.spec.attestation import NONCE_MAX, NONCE_MIN

__all__ = [
    "DEFAULT_NONCE_LEN",
    "DEFAULT_TTL",
    "InMemoryNonceStore",
    "NonceCapacityError",
    "NonceState",
    "NonceStore",
]

#: How long a nonce may wait for its quote.
DEFAULT_TTL = dt.timedelta(seconds=60)
#: 256 bits: RFC 9711 §4.1 allows 8 to 64 bytes; 32 leaves no room for guessing.
DEFAULT_NONCE_LEN = 32


@unique
class NonceState(StrEnum):
    """What :meth:`NonceStore.consume` found (stable strings)."""

    OK = "ok"  # issued, within its time to live, not consumed before: consumed now
    UNKNOWN = "unknown"  # never issued by this store (or forgotten long ago)
    REUSED = "reused"  # consumed already
    EXPIRED = "expired"  # issued more than the time to live ago


@runtime_checkable
class NonceStore(Protocol):
    """Where enrollment nonces live. Implementations must make ``consume`` atomic: of two
    concurrent calls with the same nonce, at most one answers :attr:`NonceState.OK`."""

    def issue(self, device_hint: str | None = None) -> bytes:
        """A fresh random nonce, valid from now for the store's time to live."""
        ...

    def consume(self, nonce: bytes, now: dt.datetime) -> NonceState:
        """Use ``nonce`` up at ``now``; :attr:`NonceState.OK` at most once per nonce."""
        ...


class NonceCapacityError(RuntimeError):
    """The store holds ``capacity`` live nonces already; try again later."""


@dataclass
class _Entry:
    issued_at: dt.datetime
    expires_at: dt.datetime
    device_hint: str | None
    consumed: bool = False
    expired: bool = False  # seen expired once: stays so, even if a clock goes back


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(moment: dt.datetime) -> dt.datetime:
    """Naive datetimes are taken as UTC (the fleet's clocks are UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


class InMemoryNonceStore:
    """A :class:`NonceStore` inside one process (thread safe). Several fleet processes behind a
    load balancer need the shared, database-backed store instead: a nonce issued by one
    process is unknown to the others."""

    def __init__(
        self,
        clock: Callable[[], dt.datetime] = _utc_now,
        *,
        ttl: dt.timedelta = DEFAULT_TTL,
        nonce_len: int = DEFAULT_NONCE_LEN,
        capacity: int = 100_000,
    ) -> None:
        if ttl <= dt.timedelta(0):
            raise ValueError("the time to live must be positive")
        if not NONCE_MIN <= nonce_len <= NONCE_MAX:
            raise ValueError(f"nonces are {NONCE_MIN} to {NONCE_MAX} bytes (RFC 9711 §4.1)")
        if capacity < 1:
            raise ValueError("the capacity must be at least one nonce")
        self._clock = clock
        self._ttl = ttl
        self._nonce_len = nonce_len
        self._capacity = capacity
        self._entries: dict[bytes, _Entry] = {}
        self._order: collections.deque[bytes] = collections.deque()  # issue order
        self._lock = threading.Lock()

    @property
    def ttl(self) -> dt.timedelta:
        return self._ttl

    def __len__(self) -> int:
        """Nonces remembered (live, consumed or expired but not yet forgotten)."""
        return len(self._entries)

    def __repr__(self) -> str:  # nonces are not secrets, but a repr has no use for them
        return f"InMemoryNonceStore(ttl={self._ttl}, remembered={len(self._entries)})"

    def issue(self, device_hint: str | None = None) -> bytes:
        now = _aware(self._clock())
        with self._lock:
            self._forget(now)
            if len(self._entries) >= self._capacity:
                raise NonceCapacityError(f"{self._capacity} nonces outstanding")
            nonce = secrets.token_bytes(self._nonce_len)
            while nonce in self._entries:  # pragma: no cover - 2**-256
                nonce = secrets.token_bytes(self._nonce_len)
            self._entries[nonce] = _Entry(now, now + self._ttl, device_hint)
            self._order.append(nonce)
        return nonce

    def consume(self, nonce: bytes, now: dt.datetime) -> NonceState:
        if not isinstance(nonce, bytes):
            return NonceState.UNKNOWN
        now = _aware(now)
        with self._lock:
            self._forget(now)
            entry = self._entries.get(nonce)
            if entry is None:
                return NonceState.UNKNOWN
            if entry.consumed:
                return NonceState.REUSED
            if entry.expired or now > entry.expires_at:
                entry.expired = True
                return NonceState.EXPIRED
            entry.consumed = True
            return NonceState.OK

    def _forget(self, now: dt.datetime) -> None:
        """Drop entries one time to live past their expiry (issue order; the lock is held)."""
        while self._order:
            entry = self._entries[self._order[0]]
            if entry.expires_at + self._ttl > now:
                break
            del self._entries[self._order.popleft()]
