"""Revocation latency as seen by THIS fleet process: from a revocation's commit to its application.

Scope: :class:`RevocationLatency`, a bounded, thread-safe, in-memory record of the most recent
revocation events this process's :class:`~iotid.fleet.revocation.follower.RevocationFollower`
applied (its ``on_event`` hook calls :meth:`RevocationLatency.observe` right after the event was
applied to the :class:`~iotid.fleet.revocation.index.RevocationIndex`, from which moment every new
connection and request of the revoked device is refused, and the gateway was told to abort its
live connections), each as an :class:`AppliedRevocation`: event id, kind, subject, how many UIDs
and serials, ``committed_at``, ``applied_at`` and their difference.

What "committed" means, honestly: the revocation event carries no commit timestamp of its own, so
``committed_at`` is the event row's ``created_at`` (:class:`RevokedEvent` copies it from the
:class:`~iotid.fleet.models.RevocationEvent` row), which the revoking service stamps inside its
transaction just before ``COMMIT``. The latency therefore includes the commit itself: it can only
over-state, never under-state, how long the revocation took to bite here. Both times are wall
clock (UTC); between hosts, clock skew adds to (or subtracts from) the figure, which is why a
negative value is kept as measured rather than clamped.

Only events applied while this process runs are recorded: revocations older than the process were
loaded with the index at start and have no latency here. Other processes keep their own record.

Not in scope: following the database (``follower``), what an event does at the gateway, any
persistence (a restart forgets the record), exporting metrics.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from iotid.fleet.models import utcnow
from iotid.fleet.revocation.index import RevokedEvent

__all__ = ["DEFAULT_CAPACITY", "AppliedRevocation", "LatencySummary", "RevocationLatency"]

#: How many recent events are kept (older ones fall off).
DEFAULT_CAPACITY = 1000


@dataclass(frozen=True)
class AppliedRevocation:
    """One revocation event as this process applied it."""

    event_id: int
    kind: str
    subject: str
    uids: int
    serials: int
    committed_at: dt.datetime
    applied_at: dt.datetime

    @property
    def latency_s(self) -> float:
        """Seconds from the event's commit stamp to its application here (wall clock)."""
        return (self.applied_at - self.committed_at).total_seconds()


@dataclass(frozen=True)
class LatencySummary:
    """Nearest-rank percentiles over the recorded events (None when there are none)."""

    count: int
    p50_s: float | None
    p95_s: float | None
    max_s: float | None


def _rank(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of a sorted, non-empty list."""
    index = math.ceil(fraction * len(ordered)) - 1
    return ordered[max(0, min(len(ordered) - 1, index))]


class RevocationLatency:
    """The recent revocations this process applied, newest last (see the module docstring)."""

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        if capacity < 1:
            raise ValueError("the capacity must be at least 1")
        self._clock = clock
        self._lock = threading.Lock()
        self._items: deque[AppliedRevocation] = deque(maxlen=capacity)

    def __repr__(self) -> str:
        with self._lock:
            return f"RevocationLatency(recorded={len(self._items)})"

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def observe(self, event: RevokedEvent) -> AppliedRevocation:
        """Record ``event`` as applied now (the follower's ``on_event`` hook calls this)."""
        applied = AppliedRevocation(
            event_id=event.id,
            kind=event.kind,
            subject=event.subject,
            uids=len(event.uids),
            serials=len(event.serials),
            committed_at=event.created_at,
            applied_at=self._clock(),
        )
        with self._lock:
            self._items.append(applied)
        return applied

    def recent(self, limit: int | None = None) -> list[AppliedRevocation]:
        """The recorded events, newest first (at most ``limit``)."""
        with self._lock:
            items = list(self._items)
        items.reverse()
        return items if limit is None else items[: max(0, limit)]

    def by_event(self) -> dict[int, AppliedRevocation]:
        """Event id -> its record (the newest record should an id be applied twice)."""
        with self._lock:
            return {item.event_id: item for item in self._items}

    def summary(self) -> LatencySummary:
        with self._lock:
            values = sorted(item.latency_s for item in self._items)
        if not values:
            return LatencySummary(0, None, None, None)
        return LatencySummary(len(values), _rank(values, 0.5), _rank(values, 0.95), values[-1])
