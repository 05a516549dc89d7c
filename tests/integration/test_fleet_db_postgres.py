"""The fleet registry on the machine's PostgreSQL, where several fleet processes share one database:
row locks that really block, concurrent imports, concurrent audit appends, concurrent migrations.

Each ``Database`` object below stands for one fleet process (its own engine and connection pool).
Skipped only when the server is unreachable (the reason is printed in the ``-ra`` summary);
``IOTID_REQUIRE_POSTGRES=1`` makes that a failure. Server: ``IOTID_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``); every test works in a fresh schema.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import TypeVar

import psycopg
import pytest
from cryptography import x509
from sqlalchemy import select, text
from sqlalchemy.engine import URL, make_url

from iotid.fleet.db import Database
from iotid.fleet.devices import DeviceService, DeviceView, ImportResult, transition_device
from iotid.fleet.errors import Conflict, DomainError
from iotid.fleet.models import AuditEntry, AuditLog, DeviceState
from support.manifests import Manifests

S = DeviceState
ACTOR = "token:it"
T = TypeVar("T")
Pki = tuple[x509.Certificate, Callable[[str, list[bytes]], tuple[bytes, bytes]]]
SERVER = make_url(
    os.environ.get("IOTID_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
)


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=SERVER.host or "127.0.0.1",
        port=SERVER.port or 5432,
        user=SERVER.username or "postgres",
        password=SERVER.password,
        dbname=SERVER.database or "postgres",
        connect_timeout=5,
        autocommit=True,
    )


@pytest.fixture(scope="module")
def _server() -> None:
    try:
        with _admin() as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        reason = (
            f"PostgreSQL unreachable at {SERVER.host}:{SERVER.port}: {' '.join(str(exc).split())}"
        )
        if os.environ.get("IOTID_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason} (IOTID_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)


@pytest.fixture
def schema_url(_server: None) -> Iterator[URL]:
    name = f"iotid_it_{os.getpid()}_{secrets.token_hex(4)}"
    with _admin() as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield SERVER.update_query_dict({"options": f"-csearch_path={name}"})
    finally:
        with _admin() as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def processes(schema_url: URL) -> Iterator[tuple[Database, Database]]:
    """Two fleet 'processes' on one migrated schema, told apart by their application_name."""
    tag = secrets.token_hex(4)
    one = Database(schema_url, application_name=f"iotid-it-one-{tag}")
    two = Database(schema_url, application_name=f"iotid-it-two-{tag}")
    one.upgrade()
    try:
        yield one, two
    finally:
        one.dispose()
        two.dispose()


# -- a signed manifest ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki() -> Pki:
    manifests = Manifests()
    return manifests.root, manifests.make


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


def _run_all(jobs: list[Callable[[], T]]) -> list[T | DomainError]:
    """Run every job in its own thread, released together; collect results or domain errors."""
    barrier = threading.Barrier(len(jobs))
    results: list[T | DomainError] = []
    lock = threading.Lock()

    def run(job: Callable[[], T]) -> None:
        barrier.wait()
        try:
            outcome: T | DomainError = job()
        except DomainError as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# -- tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("holder_commits", [True, False], ids=["holder-commits", "holder-aborts"])
def test_row_lock_blocks_the_second_process(
    processes: tuple[Database, Database],
    pki: Pki,
    holder_commits: bool,
) -> None:
    """Process one holds the device's row lock; process two's transition really waits on it
    (seen in pg_stat_activity), then sees the committed state: Conflict, or a win after a
    rollback."""
    one, two = processes
    root, make = pki
    uid = b"\x42" * 8
    DeviceService(one, root).import_manifest(*make("b-1", [uid]), actor=ACTOR)
    locked, release = threading.Event(), threading.Event()
    outcome: list[DeviceView | DomainError] = []

    class AbortError(Exception):
        pass

    def holder() -> None:
        try:
            with one.transaction() as session:
                transition_device(
                    session, uid.hex().upper(), {S.MANUFACTURED}, S.ENROLLED, actor="one"
                )
                locked.set()
                release.wait(60)
                if not holder_commits:
                    raise AbortError
        except AbortError:
            pass

    def contender() -> None:
        try:
            outcome.append(
                DeviceService(two, root).transition(uid, {S.MANUFACTURED}, S.ENROLLED, actor="two")
            )
        except DomainError as exc:
            outcome.append(exc)

    first = threading.Thread(target=holder)
    first.start()
    assert locked.wait(30)
    second = threading.Thread(target=contender)
    second.start()
    name = _application_name(two)

    def two_is_waiting_on_a_lock() -> bool:
        with _admin() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = %s AND wait_event_type = 'Lock'",
                (name,),
            ).fetchone()
        return row is not None and row[0] == 1

    _wait_until(two_is_waiting_on_a_lock, "process two to block on the row lock")
    assert outcome == []  # still blocked
    release.set()
    first.join()
    second.join()
    (result,) = outcome
    final = DeviceService(one, root).get_device(uid)
    if holder_commits:
        assert isinstance(result, Conflict) and result.code == "device.wrong_state"
        assert "enrolled" in result.message
    else:
        assert isinstance(result, DeviceView) and result.state is S.ENROLLED
    assert final.state is S.ENROLLED
    with one.transaction(write=False) as session:
        actors = list(
            session.execute(
                select(AuditEntry.actor).where(AuditEntry.action == "device.state_changed")
            ).scalars()
        )
        assert actors == (["one"] if holder_commits else ["two"])
        assert AuditLog(session).verify() is not None


def _application_name(db: Database) -> str:
    with db.connection(write=False) as conn:
        value = conn.execute(text("SHOW application_name")).scalar_one()
    assert isinstance(value, str)
    return value


def test_audit_chain_lock_is_taken_last(processes: tuple[Database, Database], pki: Pki) -> None:
    """Process one changes X, then Y, in one transaction; process two changes Y in between and
    commits while one waits for Y. Both succeed: the chain's lock is only taken at commit, so it
    never sits between two row locks (where one would hold it while waiting for Y, and two would
    wait for it while holding Y: a deadlock)."""
    one, two = processes
    root, make = pki
    x, y = b"\x51" * 8, b"\x52" * 8
    DeviceService(one, root).import_manifest(*make("b-1", [x, y]), actor=ACTOR)
    one_holds_x, two_holds_y = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with one.transaction() as session:
                transition_device(
                    session, x.hex().upper(), {S.MANUFACTURED}, S.ENROLLED, actor="one"
                )
                one_holds_x.set()
                assert two_holds_y.wait(30)
                transition_device(session, y.hex().upper(), {S.ENROLLED}, S.ACTIVE, actor="one")
        except BaseException as exc:  # reported below
            errors.append(exc)

    def second() -> None:
        try:
            assert one_holds_x.wait(30)
            with two.transaction() as session:
                transition_device(
                    session, y.hex().upper(), {S.MANUFACTURED}, S.ENROLLED, actor="two"
                )
                two_holds_y.set()
                _wait_until(lambda: _waiting(one) == 1, "process one to block on Y")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    svc = DeviceService(two, root)
    assert (svc.get_device(x).state, svc.get_device(y).state) == (S.ENROLLED, S.ACTIVE)
    with one.transaction(write=False) as session:
        head = AuditLog(session).verify()
    assert head is not None and head.seq == 4


def _waiting(db: Database) -> int:
    """How many of ``db``'s connections wait on a lock."""
    with _admin() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = %s AND wait_event_type = 'Lock'",
            (_application_name(db),),
        ).fetchone()
    return 0 if row is None else int(str(row[0]))


def test_many_processes_race_one_transition(processes: tuple[Database, Database], pki: Pki) -> None:
    one, two = processes
    root, make = pki
    uid = b"\x43" * 8
    DeviceService(one, root).import_manifest(*make("b-1", [uid]), actor=ACTOR)
    services = [DeviceService(db, root) for db in (one, two)]
    jobs: list[Callable[[], DeviceView]] = [
        partial(svc.transition, uid, {S.MANUFACTURED}, S.REVOKED, actor=ACTOR)
        for svc in services * 6
    ]
    results = _run_all(jobs)
    assert sum(isinstance(r, DeviceView) for r in results) == 1
    assert sum(isinstance(r, Conflict) for r in results) == len(jobs) - 1


def test_concurrent_imports_of_one_batch(processes: tuple[Database, Database], pki: Pki) -> None:
    """Both processes import the same manifest at once: one creates it, the others find it."""
    one, two = processes
    root, make = pki
    data, sig = make("b-1", [bytes([7, n]) * 4 for n in range(50)])
    services = [DeviceService(db, root) for db in (one, two)]
    jobs: list[Callable[[], ImportResult]] = [
        partial(svc.import_manifest, data, sig, actor=ACTOR) for svc in services * 3
    ]
    results = _run_all(jobs)
    assert all(isinstance(r, ImportResult) for r in results), results
    assert sorted(r.created for r in results if isinstance(r, ImportResult)) == [False] * 5 + [True]
    assert len(services[1].list_devices(limit=1000).items) == 50
    with two.transaction(write=False) as session:
        assert AuditLog(session).verify() == AuditLog(session).head()
        assert AuditLog(session).head() is not None


def test_concurrent_audit_appends_never_fork_the_chain(
    processes: tuple[Database, Database],
) -> None:
    one, two = processes

    def append(db: Database, n: int) -> int:
        with db.transaction() as session:
            log = AuditLog(session)
            entry = log.append(
                actor=ACTOR, action="test.append", subject=f"n:{n}", details={"n": n}
            )
        return entry.seq  # assigned when the transaction committed

    jobs: list[Callable[[], int]] = [partial(append, db, n) for n, db in enumerate([one, two] * 10)]
    results = _run_all(jobs)
    assert sorted(r for r in results if isinstance(r, int)) == list(range(1, 21))
    with one.transaction(write=False) as session:
        head = AuditLog(session).verify()
    assert head is not None and head.seq == 20


def test_concurrent_migrations(schema_url: URL) -> None:
    """Several fleet processes starting at once on an empty schema all come up migrated."""
    dbs = [Database(schema_url) for _ in range(3)]
    try:
        jobs: list[Callable[[], None]] = [db.upgrade for db in dbs]
        results = _run_all(jobs)
        assert results == [None, None, None]
        assert {db.current_revision() for db in dbs} == {"0004"}
        with dbs[0].connection(write=False) as conn:
            triggers = set(
                conn.execute(
                    text(
                        "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal "
                        "AND tgrelid = 'audit_log'::regclass"
                    )
                ).scalars()
            )
        assert triggers == {"audit_log_append_only", "audit_log_no_truncate"}
    finally:
        for db in dbs:
            db.dispose()


def test_truncate_is_refused(processes: tuple[Database, Database]) -> None:
    one, _ = processes
    with one.transaction() as session:
        AuditLog(session).append(actor=ACTOR, action="test.append", subject="x")
    with pytest.raises(Exception, match="append-only"), one.connection() as conn:
        conn.execute(text("TRUNCATE audit_log"))
    with one.transaction(write=False) as session:
        assert AuditLog(session).verify() is not None
