"""The fleet registry on SQLite and PostgreSQL: migrations, manifest import, listing, transitions
under row locks, deny-by-default lookup, and the hash-chained audit log."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from collections.abc import Callable
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import inspect, select, text, update
from sqlalchemy.exc import DBAPIError

from iotid.crypto.identity_kdf import derive_identity_key
from iotid.fleet.db import Database, alembic_config, normalize_url, upgrade
from iotid.fleet.devices import DeviceService, DeviceView, normalize_uid, transition_device
from iotid.fleet.errors import Conflict, DomainError, InvalidInput, NotFound
from iotid.fleet.models import (
    AuditChainError,
    AuditEntry,
    AuditLog,
    Base,
    Batch,
    Device,
    DeviceState,
    entry_hash,
)
from iotid.spec.algorithms import KeyAlg

S = DeviceState
ACTOR = "token:test"
TABLES = {
    "alembic_version",
    "api_tokens",
    "audit_log",
    "commands",
    "enrollments",
    "firmware_assignments",
    "firmware_releases",
    "revocation_events",
    "rotations",
    "telemetry",
    "batches",
    "certificates",
    "devices",
    "nonces",
}
HEAD = "0004"


def _service(db: Database, manifests: Any) -> DeviceService:
    return DeviceService(db, manifests.root)


def _audit(db: Database) -> list[AuditEntry]:
    with db.transaction(write=False) as session:
        return list(session.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars())


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _allow_audit_edits(db: Database) -> None:
    """What a privileged attacker does first: switch the append-only triggers off."""
    with db.connection() as conn:
        if db.dialect == "postgresql":
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER audit_log_no_update"))
            conn.execute(text("DROP TRIGGER audit_log_no_delete"))


# -- migrations -----------------------------------------------------------------------------------
def test_migrations_apply_from_empty(empty_fleet_db: Database) -> None:
    db = empty_fleet_db
    assert db.current_revision() is None
    db.upgrade()
    assert db.current_revision() == HEAD
    with db.engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) == TABLES
        # The migration creates exactly what the models describe.
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    db.upgrade()  # idempotent
    assert db.current_revision() == HEAD


def test_alembic_command_line_path(fleet_db_url: Any) -> None:
    """Alembic's own commands (no connection handed over) reach the same schema via the URL."""
    command.upgrade(alembic_config(url=fleet_db_url), "head")
    db = Database(fleet_db_url)
    try:
        assert db.current_revision() == HEAD
        command.downgrade(alembic_config(url=fleet_db_url), "base")
        assert db.current_revision() is None
        upgrade(fleet_db_url)  # the module-level helper
        assert db.current_revision() == HEAD
    finally:
        db.dispose()


def test_sqlite_engine_options(tmp_path: Any) -> None:
    db = Database(f"sqlite:///{tmp_path}/x.sqlite3")
    try:
        with db.connection() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        db.dispose()


def test_urls() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///f.db").drivername == "sqlite"
    with pytest.raises(ValueError, match="unsupported"):
        normalize_url("mysql://u@h/db")
    db = Database("postgresql://user:secret@127.0.0.1/db")
    assert "secret" not in repr(db)
    db.dispose()


# -- import ---------------------------------------------------------------------------------------
def test_import_then_list(fleet_db: Database, manifests: Any) -> None:
    svc = _service(fleet_db, manifests)
    uids = manifests.uids(0x10, 3)
    data, sig = manifests.make("b-1", uids)
    result = svc.import_manifest(data, sig, actor=ACTOR)
    assert (result.batch, result.devices, result.created) == ("b-1", 3, True)

    page = svc.list_devices()
    assert [d.uid for d in page.items] == [u.hex().upper() for u in uids]
    assert page.next_cursor is None
    first = page.items[0]
    assert first.state is S.MANUFACTURED
    assert (first.batch, first.algorithm, first.key_epoch) == ("b-1", "p256", 0)
    expected = derive_identity_key(manifests.MASTER, uids[0], KeyAlg.EC_P256).public_key()
    assert first.identity_spki == _spki(expected)
    assert first.created_at.tzinfo is not None
    assert svc.get_device(uids[0]) == first
    assert svc.get_device(uids[0].hex().lower()) == first

    (entry,) = _audit(fleet_db)
    assert (entry.action, entry.subject, entry.actor) == ("batch.imported", "batch:b-1", ACTOR)
    assert entry.details["devices"] == 3
    assert entry.details["manifest_sha256"] == result.manifest_sha256
    with fleet_db.transaction(write=False) as session:
        batch = session.execute(select(Batch)).scalar_one()
        assert batch.manifest_json.encode() == data  # kept verbatim, re-verifiable
        assert batch.manifest_signature == sig


def test_tampered_manifest_refused(fleet_db: Database, manifests: Any) -> None:
    svc = _service(fleet_db, manifests)
    data, sig = manifests.make("b-1", manifests.uids(0, 2))
    tampered = data.replace(b'"b-1"', b'"b-2"')
    with pytest.raises(InvalidInput) as info:
        svc.import_manifest(tampered, sig, actor=ACTOR)
    assert (info.value.status, info.value.code) == (422, "manifest.invalid")
    assert "signature" in info.value.message
    bad_sig = sig[:-1] + bytes([sig[-1] ^ 1])
    with pytest.raises(InvalidInput, match=r"manifest\.invalid"):
        svc.import_manifest(data, bad_sig, actor=ACTOR)
    other_root = manifests.other_root()
    with pytest.raises(InvalidInput, match="another issuance root"):
        DeviceService(fleet_db, other_root).import_manifest(data, sig, actor=ACTOR)
    assert svc.list_devices().items == ()
    assert _audit(fleet_db) == []


def test_same_manifest_twice_is_idempotent(fleet_db: Database, manifests: Any) -> None:
    svc = _service(fleet_db, manifests)
    data, sig = manifests.make("b-1", manifests.uids(0, 4))
    first = svc.import_manifest(data, sig, actor=ACTOR)
    again = svc.import_manifest(data, sig, actor=ACTOR)
    resigned = svc.import_manifest(data, manifests.sign(data), actor=ACTOR)  # ECDSA: new sig
    assert first.created and not again.created and not resigned.created
    assert again.devices == resigned.devices == 4
    assert again.manifest_sha256 == first.manifest_sha256
    assert len(svc.list_devices().items) == 4
    assert [e.action for e in _audit(fleet_db)] == ["batch.imported"]


def test_conflicting_manifests(fleet_db: Database, manifests: Any) -> None:
    svc = _service(fleet_db, manifests)
    svc.import_manifest(*manifests.make("b-1", manifests.uids(0, 2)), actor=ACTOR)
    with pytest.raises(Conflict) as info:
        svc.import_manifest(*manifests.make("b-1", manifests.uids(5, 2)), actor=ACTOR)
    assert (info.value.status, info.value.code) == (409, "batch.conflict")
    with pytest.raises(Conflict, match=r"device\.uid_taken"):  # a UID of b-1 in another batch
        svc.import_manifest(*manifests.make("b-2", manifests.uids(1, 2)), actor=ACTOR)
    assert [d.uid for d in svc.list_devices().items] == [
        u.hex().upper() for u in manifests.uids(0, 2)
    ]
    assert len(_audit(fleet_db)) == 1


def test_rsa_batch_has_no_predicted_key(fleet_db: Database, manifests: Any) -> None:
    svc = _service(fleet_db, manifests)
    uid = manifests.uids(0x99, 1)[0]
    svc.import_manifest(*manifests.make("rsa-1", [uid], KeyAlg.RSA_2048), actor=ACTOR)
    record = svc.lookup_manifest_card(uid)
    assert record is not None
    assert (record.algorithm, record.identity_spki, record.batch) == ("rsa2048", None, "rsa-1")


# -- queries --------------------------------------------------------------------------------------
def test_list_filters_and_paging(fleet_db: Database, manifests: Any) -> None:
    svc = _service(fleet_db, manifests)
    a = manifests.uids(0xAB00, 5)
    b = manifests.uids(0xCD00, 3)
    svc.import_manifest(*manifests.make("a", a), actor=ACTOR)
    svc.import_manifest(*manifests.make("b", b), actor=ACTOR)
    svc.transition(b[0], {S.MANUFACTURED}, S.ENROLLED, actor=ACTOR)

    assert {d.uid for d in svc.list_devices(batch="b").items} == {u.hex().upper() for u in b}
    assert [d.uid for d in svc.list_devices(state="enrolled").items] == [b[0].hex().upper()]
    assert len(svc.list_devices(state=S.MANUFACTURED).items) == 7
    prefix = a[0].hex()[:-2]  # lower case accepted
    assert len(svc.list_devices(uid_prefix=prefix).items) == 5
    assert svc.list_devices(batch="nope").items == ()
    assert svc.list_devices(uid_prefix=prefix, state="enrolled").items == ()

    seen: list[str] = []
    cursor = None
    while True:
        page = svc.list_devices(limit=3, cursor=cursor)
        seen += [d.uid for d in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(u.hex().upper() for u in a + b)

    cases: list[tuple[dict[str, Any], str]] = [
        ({"state": "lost"}, "device.bad_state"),
        ({"limit": 0}, "page.bad_limit"),
        ({"limit": 1001}, "page.bad_limit"),
        ({"uid_prefix": "%"}, "device.bad_uid_prefix"),
        ({"cursor": "zz"}, "page.bad_cursor"),
    ]
    for kwargs, code in cases:
        with pytest.raises(InvalidInput) as info:
            svc.list_devices(**kwargs)
        assert info.value.code == code


def test_get_and_deny_by_default_lookup(fleet_db: Database, manifests: Any) -> None:
    svc = _service(fleet_db, manifests)
    uid = manifests.uids(7, 1)[0]
    svc.import_manifest(*manifests.make("b-1", [uid]), actor=ACTOR)
    record = svc.lookup_manifest_card(uid)
    assert record is not None
    assert record.uid == uid.hex().upper()
    assert record.batch_ca_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert record.state is S.MANUFACTURED
    card = manifests.cards([uid])[0]
    assert record.attestation_cert_sha256 == card.attestation_cert_sha256
    for unknown in (b"\x00" * 8, "0000000000000099", "not hex", "", b""):
        assert svc.lookup_manifest_card(unknown) is None
    with pytest.raises(NotFound) as info:
        svc.get_device("00" * 8)
    assert (info.value.status, info.value.code) == (404, "device.not_found")
    with pytest.raises(InvalidInput, match=r"device\.bad_uid"):
        svc.get_device("xyz")


# -- transitions ----------------------------------------------------------------------------------
def test_transitions_and_wrong_state(fleet_db: Database, manifests: Any) -> None:
    svc = _service(fleet_db, manifests)
    uid = manifests.uids(1, 1)[0]
    svc.import_manifest(*manifests.make("b-1", [uid]), actor=ACTOR)
    path = [S.ENROLLED, S.ACTIVE, S.ROTATING, S.ACTIVE, S.REVOKED, S.RETIRED]
    state = S.MANUFACTURED
    for target in path:
        view = svc.transition(uid, {state}, target, actor=ACTOR)
        assert view.state is target
        state = target
    with pytest.raises(Conflict) as info:
        svc.transition(uid, {S.ACTIVE, S.ROTATING}, S.REVOKED, actor=ACTOR)
    assert (info.value.status, info.value.code) == (409, "device.wrong_state")
    assert "retired" in info.value.message
    with pytest.raises(NotFound):
        svc.transition("AA" * 8, {S.MANUFACTURED}, S.ENROLLED, actor=ACTOR)
    with pytest.raises(ValueError, match="not a device transition"):
        svc.transition(uid, {S.REVOKED}, S.ACTIVE, actor=ACTOR)
    changes = [e for e in _audit(fleet_db) if e.action == "device.state_changed"]
    assert [(e.details["from"], e.details["to"]) for e in changes] == list(
        zip([s.value for s in [S.MANUFACTURED, *path[:-1]]], [s.value for s in path], strict=True)
    )
    assert all(e.subject == f"device:{uid.hex().upper()}" for e in changes)


def test_transition_rolls_back_with_the_callers_transaction(
    fleet_db: Database, manifests: Any
) -> None:
    svc = _service(fleet_db, manifests)
    uid = manifests.uids(2, 1)[0]
    svc.import_manifest(*manifests.make("b-1", [uid]), actor=ACTOR)

    class BoomError(Exception):
        pass

    with pytest.raises(BoomError), fleet_db.transaction() as session:
        transition_device(session, uid.hex().upper(), {S.MANUFACTURED}, S.ENROLLED, actor=ACTOR)
        raise BoomError
    assert svc.get_device(uid).state is S.MANUFACTURED
    assert len(_audit(fleet_db)) == 1  # only the import


def test_concurrent_transitions_exactly_one_wins(fleet_db: Database, manifests: Any) -> None:
    svc = _service(fleet_db, manifests)
    uid = manifests.uids(3, 1)[0]
    svc.import_manifest(*manifests.make("b-1", [uid]), actor=ACTOR)
    threads = 8
    barrier = threading.Barrier(threads)
    results: list[DeviceView | DomainError] = []
    lock = threading.Lock()

    def attempt() -> None:
        barrier.wait()
        try:
            outcome: DeviceView | DomainError = svc.transition(
                uid, {S.MANUFACTURED}, S.ENROLLED, actor=ACTOR
            )
        except DomainError as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    workers = [threading.Thread(target=attempt) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wins = [r for r in results if isinstance(r, DeviceView)]
    losses = [r for r in results if isinstance(r, Conflict) and r.code == "device.wrong_state"]
    assert len(wins) == 1 and len(losses) == threads - 1
    changes = [e for e in _audit(fleet_db) if e.action == "device.state_changed"]
    assert len(changes) == 1
    assert _verify_log(fleet_db) is not None


# -- audit ----------------------------------------------------------------------------------------
def _verify_log(db: Database) -> Any:
    with db.transaction(write=False) as session:
        return AuditLog(session).verify()


def _populate(db: Database, manifests: Any) -> DeviceService:
    svc = _service(db, manifests)
    uids = manifests.uids(0x40, 2)
    svc.import_manifest(*manifests.make("b-1", uids), actor=ACTOR)
    svc.transition(uids[0], {S.MANUFACTURED}, S.ENROLLED, actor=ACTOR, details={"n": 1.5})
    svc.transition(uids[0], {S.ENROLLED}, S.ACTIVE, actor=ACTOR, details={"note": "é ok"})
    svc.transition(uids[1], {S.MANUFACTURED}, S.REVOKED, actor=ACTOR)
    return svc


def test_audit_chain_verifies(fleet_db: Database, manifests: Any) -> None:
    assert _verify_log(fleet_db) is None  # empty log
    _populate(fleet_db, manifests)
    head = _verify_log(fleet_db)
    entries = _audit(fleet_db)
    assert [e.seq for e in entries] == [1, 2, 3, 4]
    assert entries[0].prev == "0" * 64
    assert all(b.prev == a.hash for a, b in itertools.pairwise(entries))
    assert (head.seq, head.hash) == (4, entries[-1].hash)
    with fleet_db.transaction(write=False) as session:
        assert AuditLog(session).head() == head


def test_audit_log_is_append_only(fleet_db: Database, manifests: Any) -> None:
    _populate(fleet_db, manifests)
    with pytest.raises(DBAPIError, match="append-only"), fleet_db.transaction() as session:
        session.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(actor="x"))
    with pytest.raises(DBAPIError, match="append-only"), fleet_db.transaction() as session:
        session.execute(text("DELETE FROM audit_log WHERE seq = 4"))
    assert _verify_log(fleet_db).seq == 4


@pytest.mark.parametrize(
    ("edit", "bad_seq", "reason"),
    [
        pytest.param(
            "UPDATE audit_log SET actor = 'token:evil' WHERE seq = 2", 2, "edited", id="actor"
        ),
        pytest.param(
            'UPDATE audit_log SET details = \'{"from":"manufactured"}\' WHERE seq = 3',
            3,
            "edited",
            id="details",
        ),
        pytest.param("DELETE FROM audit_log WHERE seq = 2", 2, "missing", id="deleted"),
        pytest.param("UPDATE audit_log SET prev = hash WHERE seq = 3", 3, "prev", id="relinked"),
    ],
)
def test_audit_chain_detects_tampering(
    fleet_db: Database, manifests: Any, edit: str, bad_seq: int, reason: str
) -> None:
    _populate(fleet_db, manifests)
    _allow_audit_edits(fleet_db)
    with fleet_db.connection() as conn:
        assert conn.execute(text(edit)).rowcount == 1
    with pytest.raises(AuditChainError) as info:
        _verify_log(fleet_db)
    assert info.value.seq == bad_seq
    assert reason in info.value.reason


def test_audit_rehashed_edit_breaks_the_next_link(fleet_db: Database, manifests: Any) -> None:
    """An editor who also recomputes the edited entry's hash is caught by the entry after it."""
    _populate(fleet_db, manifests)
    _allow_audit_edits(fleet_db)
    with fleet_db.transaction() as session:
        entry = session.get(AuditEntry, 2)
        assert entry is not None
        entry.actor = "token:evil"
        entry.hash = entry_hash(entry.body())
    with pytest.raises(AuditChainError) as info:
        _verify_log(fleet_db)
    assert (info.value.seq, info.value.reason) == (3, "prev is not the previous entry's hash")


def test_audit_append_rules(fleet_db: Database) -> None:
    with fleet_db.transaction() as session:
        log = AuditLog(session)
        with pytest.raises(ValueError, match="dotted"):
            log.append(actor=ACTOR, action="Bad Action", subject="x")
        with pytest.raises(ValueError, match="non-empty"):
            log.append(actor="", action="a.b", subject="x")
        with pytest.raises(ValueError, match="JSON"):
            log.append(actor=ACTOR, action="a.b", subject="x", details={"k": float("nan")})
        with pytest.raises(ValueError, match="naive"):
            log.append(actor=ACTOR, action="a.b", subject="x", now=dt.datetime(2025, 1, 1))
    with (
        pytest.raises(RuntimeError, match="write transaction"),
        fleet_db.transaction(write=False) as session,
    ):
        AuditLog(session).append(actor=ACTOR, action="a.b", subject="x")
    # Entries of a rolled-back transaction are never written; the next commit starts at seq 1.
    with pytest.raises(KeyError), fleet_db.transaction() as session:
        AuditLog(session).append(actor=ACTOR, action="a.b", subject="dropped")
        raise KeyError
    with fleet_db.session() as session:  # one session, two transactions
        with session.begin():
            AuditLog(session).append(actor=ACTOR, action="a.b", subject="dropped")
            session.rollback()
        with session.begin():
            entry = AuditLog(session).append(actor=ACTOR, action="a.b", subject="kept")
    assert (entry.seq, entry.prev) == (1, "0" * 64)
    assert [e.subject for e in _audit(fleet_db)] == ["kept"]


def test_times_are_aware_utc(fleet_db: Database, manifests: Any) -> None:
    fixed = dt.datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    clock: Callable[[], dt.datetime] = lambda: fixed  # noqa: E731
    svc = DeviceService(fleet_db, manifests.root, clock=clock)
    uid = manifests.uids(0x77, 1)[0]
    svc.import_manifest(*manifests.make("b-1", [uid]), actor=ACTOR)
    view = svc.get_device(uid)
    assert view.created_at == fixed and view.created_at.utcoffset() == dt.timedelta(0)
    (entry,) = _audit(fleet_db)
    assert entry.time == fixed
    with pytest.raises(Exception, match="naive"), fleet_db.transaction() as session:
        device = session.execute(select(Device)).scalar_one()
        device.updated_at = dt.datetime(2030, 1, 1)
        session.flush()


# -- errors ---------------------------------------------------------------------------------------
def test_domain_errors() -> None:
    err = Conflict("device.wrong_state", "device 01 is revoked")
    assert (err.status, err.code) == (409, "device.wrong_state")
    assert err.to_dict() == {
        "status": 409,
        "code": "device.wrong_state",
        "message": str(err.message),
    }
    assert str(err) == "device.wrong_state: device 01 is revoked"
    assert "revoked" not in repr(err)
    assert DomainError(418, "x.y", "teapot").status == 418
    with pytest.raises(ValueError):
        DomainError(200, "Not A Code", "m")
    with pytest.raises(ValueError):
        DomainError(999, "a.b", "m")
    assert normalize_uid(b"\x01\xab") == "01AB"
    assert normalize_uid(" 01ab ") == "01AB"
    for bad in ("1", "0g", "00" * 33, b""):
        with pytest.raises(InvalidInput):
            normalize_uid(bad)
