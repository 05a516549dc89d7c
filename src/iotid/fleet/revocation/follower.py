"""Revocation propagation: a background thread that follows ``revocation_events``.

Scope: :class:`RevocationFollower`. On start it loads the :class:`RevocationIndex` (unless it is
already loaded), then applies every event with an id above the index's ``last_event_id`` and
calls ``on_event`` for each, in id order:

- PostgreSQL: a dedicated psycopg 3 autocommit connection runs ``LISTEN iotid_revocation``;
  each notification (and, as a safety net, every ``safety_interval`` seconds) triggers a
  catch-up read. The payload is not trusted: it only wakes the reader.
- SQLite: polls ``max(id)`` every ``poll_interval`` seconds (processes share the file).

A dropped connection (server restart, ``pg_terminate_backend``) is retried with exponential
backoff (0.1 s doubling to 2 s); the catch-up after reconnecting covers notifications missed
meanwhile. :meth:`RevocationFollower.stop` returns within about a second. ``on_event`` runs in
the follower's thread; an exception there is logged and does not stop the follower.

Not in scope: what the gateway does with an event (closing connections), revoking.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from iotid.fleet.db import Database
from iotid.fleet.revocation.index import RevocationIndex, RevokedEvent
from iotid.fleet.revocation.repository import CHANNEL, RevocationRepository

__all__ = ["RevocationFollower"]

_log = logging.getLogger(__name__)
#: How long one wait for notifications lasts: bounds how late ``stop`` is noticed.
_SLICE_S = 0.2
_BACKOFF_MIN_S = 0.1
_BACKOFF_MAX_S = 2.0


def postgres_dsn(db: Database) -> str:
    """A libpq URI for ``db`` (psycopg wants ``postgresql://``, not the SQLAlchemy driver)."""
    rendered = db.url.render_as_string(hide_password=False)
    return "postgresql" + rendered[len(db.url.drivername) :]


class RevocationFollower:
    """Follows revocation events of ``db`` into ``index`` and ``on_event``."""

    def __init__(
        self,
        db: Database,
        index: RevocationIndex | None = None,
        on_event: Callable[[RevokedEvent], None] | None = None,
        *,
        poll_interval: float = 0.1,
        safety_interval: float = 1.0,
        application_name: str = "iotid-revocation-follower",
    ) -> None:
        self._db = db
        self.index = index if index is not None else RevocationIndex()
        self._on_event = on_event
        self._poll = poll_interval
        self._safety = safety_interval
        self._application_name = application_name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set once the follower listens (PostgreSQL) / polls (SQLite) and has caught up.
        self.ready = threading.Event()
        #: How many times the follower (re)connected; for tests and metrics.
        self.connections = 0

    def __repr__(self) -> str:
        return f"RevocationFollower({self._db!r}, last_event_id={self.index.last_event_id})"

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the follower was already started")
        self._thread = threading.Thread(
            target=self._run, name="iotid-revocation-follower", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = _BACKOFF_MIN_S
        while not self._stop.is_set():
            try:
                if not self.index.loaded:
                    self.index.load(self._db)
                if self._db.dialect == "postgresql":
                    self._listen()
                else:
                    self._poll_loop()
                backoff = _BACKOFF_MIN_S
            except Exception as exc:  # the follower must outlive any failure
                _log.warning(
                    "revocation follower: %s; retrying in %.1f s", type(exc).__name__, backoff
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _listen(self) -> None:
        with psycopg.connect(
            postgres_dsn(self._db),
            autocommit=True,
            connect_timeout=5,
            application_name=self._application_name,
        ) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self.connections += 1
            self.catch_up()  # events committed before LISTEN took effect
            self.ready.set()
            last_check = time.monotonic()
            while not self._stop.is_set():
                woken = False
                for _notify in conn.notifies(timeout=_SLICE_S, stop_after=1):
                    woken = True
                now = time.monotonic()
                if woken or now - last_check >= self._safety:
                    self.catch_up()
                    last_check = now

    def _poll_loop(self) -> None:
        self.connections += 1
        self.catch_up()
        self.ready.set()
        while not self._stop.wait(self._poll):
            with self._db.transaction(write=False) as session:
                newest = RevocationRepository(session).max_event_id()
            if newest > self.index.last_event_id:
                self.catch_up()

    def catch_up(self) -> int:
        """Apply every event after the index's last one; how many were applied."""
        applied = 0
        while True:
            with self._db.transaction(write=False) as session:
                rows = RevocationRepository(session).events_after(self.index.last_event_id)
                events = [RevokedEvent.of(row) for row in rows]
            if not events:
                return applied
            for event in events:
                self.index.apply(event)
                applied += 1
                if self._on_event is not None:
                    try:
                        self._on_event(event)
                    except Exception:  # a consumer's bug must not stop revocation
                        _log.exception("revocation follower: on_event failed for %d", event.id)
