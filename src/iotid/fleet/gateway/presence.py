"""The gateway's view of a connected device: activation on first contact, ``last_seen_at``, whoami.

Scope: :class:`PresenceService`. :meth:`PresenceService.seen` runs for every authenticated
gateway request: the first time a device is seen it moves ``enrolled -> active``
(``transition_device``, audited, under the row lock) and ``last_seen_at`` is written; after that
the registry is written at most once per ``interval`` per device and process (a cached state is
returned in between, so a state change made elsewhere is seen within ``interval``; revocation
does not wait for it: the gateway checks the revocation index on every request).
:meth:`PresenceService.whoami` answers ``GET /v1/device/whoami`` (with ``rotation_due``: the
operator scheduled a rotation of this device, ``iotid.fleet.rotation.schedule``).

Not in scope: TLS and the revocation check (``server``), SQL (``repository``), other transitions.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iotid.fleet.db import Database
from iotid.fleet.devices.service import transition_device
from iotid.fleet.gateway.repository import DeviceSnapshot, PresenceRepository
from iotid.fleet.gateway.routing import DeviceContext
from iotid.fleet.models import DeviceState, utcnow
from iotid.fleet.rotation.schedule import rotation_due

__all__ = ["ACTOR", "CONNECTABLE_STATES", "PresenceService"]

#: Audit actor of transitions the gateway makes.
ACTOR = "gateway"
#: States in which a device may use the gateway at all.
CONNECTABLE_STATES = frozenset({DeviceState.ENROLLED, DeviceState.ACTIVE, DeviceState.ROTATING})
_CACHE_LIMIT = 100_000


@dataclass(frozen=True)
class _Seen:
    at: float  # time.monotonic()
    snapshot: DeviceSnapshot


class PresenceService:
    """Activation and last-seen bookkeeping of one gateway process (thread-safe)."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        interval: float = 60.0,
    ) -> None:
        self._db = db
        self._clock = clock
        self._interval = interval
        self._lock = threading.Lock()
        self._cache: dict[str, _Seen] = {}

    def seen(self, uid: str) -> DeviceSnapshot | None:
        """Record that ``uid`` made an authenticated request; its state (None: not registered).

        ``enrolled`` becomes ``active`` here (the first successful request).
        """
        monotonic = time.monotonic()
        with self._lock:
            cached = self._cache.get(uid)
        if cached is not None and monotonic - cached.at < self._interval:
            return cached.snapshot
        now = self._clock()
        with self._db.transaction() as session:
            repo = PresenceRepository(session)
            snapshot = repo.lock_snapshot(uid)
            if snapshot is None:
                return None
            if snapshot.state is DeviceState.ENROLLED:
                transition_device(
                    session,
                    uid,
                    {DeviceState.ENROLLED},
                    DeviceState.ACTIVE,
                    actor=ACTOR,
                    details={"reason": "first_gateway_request"},
                    now=now,
                )
                snapshot = DeviceSnapshot(uid, DeviceState.ACTIVE, snapshot.key_epoch)
            repo.touch(uid, now)
        with self._lock:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[uid] = _Seen(monotonic, snapshot)
        return snapshot

    def forget(self, uid: str) -> None:
        """Drop the cached state of ``uid`` (the next request reads the registry again)."""
        with self._lock:
            self._cache.pop(uid, None)

    def whoami(self, ctx: DeviceContext) -> dict[str, Any]:
        """The body of ``GET /v1/device/whoami`` (fresh from the registry)."""
        with self._db.transaction(write=False) as session:
            snapshot = PresenceRepository(session).snapshot(ctx.uid)
            due = rotation_due(session, ctx.uid, self._clock())
        return {
            "uid": ctx.uid,
            "state": None if snapshot is None else snapshot.state.value,
            "epoch": None if snapshot is None else snapshot.key_epoch,
            "certificate_not_after": ctx.certificate.not_valid_after_utc.isoformat(),
            "rotation_due": due,
        }
