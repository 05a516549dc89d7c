"""Revocation propagation on SQLite and PostgreSQL: the in-memory index, a follower on another
Database object, a follower in another PROCESS, reconnection after a dropped connection, and
clean stops. Waits are generous (5 s); no timing is asserted."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import URL

from iotid.fleet.db import Database
from iotid.fleet.issuing import FleetKeys
from iotid.fleet.revocation import (
    RevocationFollower,
    RevocationIndex,
    RevocationService,
    RevokedEvent,
    postgres_dsn,
)
from support.manifests import Manifests
from support.revocation import ACTOR, make_fleet_keys, seed_batch

CHILD = Path(__file__).with_name("revocation_follower_child.py")
WAIT_S = 5.0


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory, manifests: Manifests) -> FleetKeys:
    return make_fleet_keys(tmp_path_factory.mktemp("keys") / "fleet", manifests)


def _wait_for(condition: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


class Collector:
    def __init__(self) -> None:
        self.events: list[RevokedEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: RevokedEvent) -> None:
        with self._lock:
            self.events.append(event)

    def ids(self) -> list[int]:
        with self._lock:
            return [e.id for e in self.events]


@pytest.fixture
def other_db(fleet_db: Database, fleet_db_url: URL) -> Iterator[Database]:
    """A second Database object (its own engine and pool) on the same database."""
    db = Database(fleet_db_url)
    try:
        yield db
    finally:
        db.dispose()


def test_index_load_apply_and_lookup(
    fleet_db: Database, manifests: Manifests, keys: FleetKeys
) -> None:
    seeded = seed_batch(fleet_db, manifests, keys, "b1", 0x100, 3)
    service = RevocationService(fleet_db, keys)
    first = service.revoke_device(seeded.uids[0], "key_compromise", actor=ACTOR)
    index = RevocationIndex()
    assert not index.is_revoked(uid=seeded.uids[0])
    index.load(fleet_db)
    assert index.loaded and index.last_event_id == first.event_id
    assert index.is_revoked(uid=seeded.uids[0].lower())
    assert index.is_revoked(serial=seeded.serials(seeded.uids[0])[0].upper())
    assert not index.is_revoked(uid=seeded.uids[1], serial=seeded.serials(seeded.uids[1])[0])
    assert not index.is_revoked()
    event = RevokedEvent(
        id=99,
        kind="batch",
        subject="b1",
        uids=frozenset(seeded.uids),
        serials=frozenset(),
        created_at=dt.datetime.now(dt.UTC),
    )
    index.apply(event)
    index.apply(event)  # idempotent
    assert index.last_event_id == 99 and index.is_batch_revoked("b1")
    assert all(index.is_revoked(uid=u) for u in seeded.uids)
    assert "RevocationIndex(" in repr(index)


def test_follower_on_another_database_object_sees_revocations(
    fleet_db: Database, other_db: Database, manifests: Manifests, keys: FleetKeys
) -> None:
    seeded = seed_batch(fleet_db, manifests, keys, "b1", 0x200, 4)
    service = RevocationService(fleet_db, keys)
    before = service.revoke_device(seeded.uids[0], "superseded", actor=ACTOR)
    seen = Collector()
    follower = RevocationFollower(other_db, on_event=seen)
    follower.start()
    try:
        assert follower.ready.wait(WAIT_S)
        assert follower.index.is_revoked(uid=seeded.uids[0])  # loaded at start
        assert before.event_id not in seen.ids()  # history is loaded, not replayed
        result = service.revoke_device(seeded.uids[1], "key_compromise", actor=ACTOR)
        assert _wait_for(lambda: result.event_id in seen.ids())
        assert follower.index.is_revoked(uid=seeded.uids[1])
        assert follower.index.is_revoked(serial=seeded.serials(seeded.uids[1])[0])
        batch = service.revoke_batch("b1", "ca_compromise", actor=ACTOR)
        assert _wait_for(lambda: batch.event_id in seen.ids())
        assert all(follower.index.is_revoked(uid=u) for u in seeded.uids)
        assert follower.index.is_batch_revoked("b1")
        assert seen.ids() == sorted(seen.ids())
    finally:
        follower.stop()
    assert not follower.alive


def test_a_failing_consumer_does_not_stop_the_follower(
    fleet_db: Database, other_db: Database, manifests: Manifests, keys: FleetKeys
) -> None:
    seeded = seed_batch(fleet_db, manifests, keys, "b1", 0x300, 2)
    seen = Collector()

    def flaky(event: RevokedEvent) -> None:
        seen(event)
        raise RuntimeError("consumer bug")

    follower = RevocationFollower(other_db, RevocationIndex(), flaky)
    follower.start()
    try:
        assert follower.ready.wait(WAIT_S)
        service = RevocationService(fleet_db, keys)
        ids = [service.revoke_device(u, "unspecified", actor=ACTOR).event_id for u in seeded.uids]
        assert _wait_for(lambda: seen.ids() == ids)
    finally:
        follower.stop()


def test_stop_is_prompt_and_restart_is_refused(other_db: Database) -> None:
    follower = RevocationFollower(other_db)
    follower.start()
    assert follower.ready.wait(WAIT_S)
    with pytest.raises(RuntimeError):
        follower.start()
    follower.stop(timeout=WAIT_S)
    assert not follower.alive


def test_follower_reconnects_after_its_connection_is_killed(
    fleet_db: Database, other_db: Database, manifests: Manifests, keys: FleetKeys
) -> None:
    if fleet_db.dialect != "postgresql":
        pytest.skip("the LISTEN connection is PostgreSQL's")
    seeded = seed_batch(fleet_db, manifests, keys, "b1", 0x400, 1)
    seen = Collector()
    name = "iotid-test-follower-" + str(id(seen))
    follower = RevocationFollower(other_db, on_event=seen, application_name=name)
    follower.start()
    try:
        assert follower.ready.wait(WAIT_S)
        with psycopg.connect(postgres_dsn(fleet_db), autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (name,),
            ).fetchall()
        assert killed == [(True,)]
        result = RevocationService(fleet_db, keys).revoke_device(
            seeded.uids[0], "key_compromise", actor=ACTOR
        )
        assert _wait_for(lambda: result.event_id in seen.ids())
        assert _wait_for(lambda: follower.connections >= 2)
    finally:
        follower.stop()


def test_a_follower_in_another_process_sees_the_revocation(
    fleet_db: Database, fleet_db_url: URL, manifests: Manifests, keys: FleetKeys
) -> None:
    seeded = seed_batch(fleet_db, manifests, keys, "b1", 0x500, 2)
    url = fleet_db_url.render_as_string(hide_password=False)
    child = subprocess.Popen(
        [sys.executable, str(CHILD), url, "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        ready = json.loads(child.stdout.readline())
        assert ready.get("ready") is True, ready
        result = RevocationService(fleet_db, keys).revoke_device(
            seeded.uids[1], "key_compromise", actor=ACTOR
        )
        timer = threading.Timer(WAIT_S * 2, child.kill)
        timer.start()
        try:
            line = child.stdout.readline()
        finally:
            timer.cancel()
        assert line, child.stderr.read() if child.stderr else "child died"
        seen = json.loads(line)
        assert seen["event"] == result.event_id and seen["uids"] == [seeded.uids[1]]
        assert child.wait(timeout=WAIT_S) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
