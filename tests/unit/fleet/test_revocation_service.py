"""Revocation rules on SQLite and PostgreSQL: one device, a whole batch, idempotence, reasons,
certificates, events, the audit chain, and the NOTIFY delivered at commit (PostgreSQL)."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select

from iotid.fleet.db import Database
from iotid.fleet.devices import transition_device
from iotid.fleet.errors import InvalidInput, NotFound
from iotid.fleet.issuing import FleetKeys
from iotid.fleet.models import (
    AuditEntry,
    AuditLog,
    Batch,
    Certificate,
    Device,
    DeviceState,
    RevocationEvent,
)
from iotid.fleet.revocation import CHANNEL, RevocationService, postgres_dsn
from support.manifests import Manifests
from support.revocation import ACTOR, make_fleet_keys, seed_batch

S = DeviceState


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory, manifests: Manifests) -> FleetKeys:
    return make_fleet_keys(tmp_path_factory.mktemp("keys") / "fleet", manifests)


def _device(db: Database, uid: str) -> Device:
    with db.transaction(write=False) as session:
        return session.execute(select(Device).where(Device.uid == uid)).scalar_one()


def _certs(db: Database, uid: str) -> list[Certificate]:
    with db.transaction(write=False) as session:
        return list(
            session.execute(
                select(Certificate).join(Device).where(Device.uid == uid).order_by(Certificate.id)
            ).scalars()
        )


def _events(db: Database) -> list[RevocationEvent]:
    with db.transaction(write=False) as session:
        return list(session.execute(select(RevocationEvent).order_by(RevocationEvent.id)).scalars())


def _audit(db: Database) -> list[AuditEntry]:
    with db.transaction(write=False) as session:
        assert AuditLog(session).verify() is not None
        return list(session.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars())


def test_revoke_device_revokes_state_certificates_event_and_audit(
    fleet_db: Database, manifests: Manifests, keys: FleetKeys
) -> None:
    seeded = seed_batch(fleet_db, manifests, keys, "b1", 0x100, 3, certs_per_device=2)
    uid, other = seeded.uids[0], seeded.uids[1]
    service = RevocationService(fleet_db, keys)
    result = service.revoke_device(uid.lower(), "key_compromise", actor=ACTOR)
    assert result.created and result.event_id is not None
    assert (result.kind, result.subject, result.devices, result.certificates) == (
        "device",
        uid,
        1,
        2,
    )
    device = _device(fleet_db, uid)
    assert device.state is S.REVOKED and device.revoked_at == result.revoked_at
    certs = _certs(fleet_db, uid)
    assert all(c.revoked_at == result.revoked_at and c.reason == "keyCompromise" for c in certs)
    assert _device(fleet_db, other).state is S.ACTIVE
    assert all(c.revoked_at is None for c in _certs(fleet_db, other))
    (event,) = _events(fleet_db)
    assert (event.id, event.kind, event.subject, event.uids) == (
        result.event_id,
        "device",
        uid,
        [uid],
    )
    assert sorted(event.serials) == sorted(seeded.serials(uid))
    assert (event.reason, event.created_by) == ("keyCompromise", ACTOR)
    entries = [(e.action, e.subject) for e in _audit(fleet_db)]
    assert entries[-2:] == [
        ("device.state_changed", f"device:{uid}"),
        ("device.revoked", f"device:{uid}"),
    ]
    revoked = _audit(fleet_db)[-1].details
    assert revoked["event_id"] == result.event_id and revoked["from"] == "active"


def test_revoking_twice_is_idempotent(
    fleet_db: Database, manifests: Manifests, keys: FleetKeys
) -> None:
    seeded = seed_batch(fleet_db, manifests, keys, "b1", 0x200, 1)
    service = RevocationService(fleet_db, keys)
    first = service.revoke_device(seeded.uids[0], "superseded", actor=ACTOR)
    audit_before = len(_audit(fleet_db))
    again = service.revoke_device(seeded.uids[0], "key_compromise", actor=ACTOR)
    assert not again.created
    assert (again.event_id, again.revoked_at, again.devices, again.certificates) == (
        first.event_id,
        first.revoked_at,
        0,
        0,
    )
    assert len(_events(fleet_db)) == 1 and len(_audit(fleet_db)) == audit_before
    assert _certs(fleet_db, seeded.uids[0])[0].reason == "superseded"  # the first reason stays


@pytest.mark.parametrize("state", [S.MANUFACTURED, S.ENROLLED, S.ROTATING])
def test_every_live_state_can_be_revoked(
    fleet_db: Database, manifests: Manifests, keys: FleetKeys, state: DeviceState
) -> None:
    seeded = seed_batch(fleet_db, manifests, keys, "b1", 0x300, 1, state=state)
    result = RevocationService(fleet_db, keys).revoke_device(
        seeded.uids[0], "unspecified", actor=ACTOR
    )
    assert result.created and _device(fleet_db, seeded.uids[0]).state is S.REVOKED


def test_retired_device_keeps_its_state_but_loses_live_certificates(
    fleet_db: Database, manifests: Manifests, keys: FleetKeys
) -> None:
    seeded = seed_batch(fleet_db, manifests, keys, "b1", 0x400, 1)
    uid = seeded.uids[0]
    with fleet_db.transaction() as session:
        transition_device(session, uid, {S.ACTIVE}, S.RETIRED, actor=ACTOR)
    service = RevocationService(fleet_db, keys)
    result = service.revoke_device(uid, "cessation_of_operation", actor=ACTOR)
    assert result.created and (result.devices, result.certificates) == (0, 1)
    device = _device(fleet_db, uid)
    assert device.state is S.RETIRED and device.revoked_at is not None
    assert not service.revoke_device(uid, "cessation_of_operation", actor=ACTOR).created


@pytest.mark.parametrize(
    "reason", ["ca_compromise", "cACompromise", "remove_from_crl", "KEY_COMPROMISE", "", "x" * 40]
)
def test_device_reasons_are_checked(
    fleet_db: Database, manifests: Manifests, keys: FleetKeys, reason: str
) -> None:
    seeded = seed_batch(fleet_db, manifests, keys, "b1", 0x500, 1)
    with pytest.raises(InvalidInput) as caught:
        RevocationService(fleet_db, keys).revoke_device(seeded.uids[0], reason, actor=ACTOR)
    assert caught.value.code == "revocation.bad_reason"
    assert _device(fleet_db, seeded.uids[0]).state is S.ACTIVE and not _events(fleet_db)


def test_unknown_device_and_batch_are_not_found(fleet_db: Database, keys: FleetKeys) -> None:
    service = RevocationService(fleet_db, keys)
    with pytest.raises(NotFound):
        service.revoke_device("00112233", "key_compromise", actor=ACTOR)
    with pytest.raises(NotFound):
        service.revoke_batch("nope", "ca_compromise", actor=ACTOR)
    with pytest.raises(InvalidInput):
        service.revoke_device("not-hex", "key_compromise", actor=ACTOR)


def test_revoke_batch_revokes_every_device_and_certificate(
    fleet_db: Database, manifests: Manifests, keys: FleetKeys
) -> None:
    seeded = seed_batch(fleet_db, manifests, keys, "bad-batch", 0x600, 5)
    bystander = seed_batch(fleet_db, manifests, keys, "good-batch", 0x700, 2)
    service = RevocationService(fleet_db, keys)
    service.revoke_device(seeded.uids[0], "superseded", actor=ACTOR)  # one already revoked
    result = service.revoke_batch("bad-batch", "key_compromise", actor=ACTOR)
    assert result.created and (result.devices, result.certificates) == (4, 4)
    with fleet_db.transaction(write=False) as session:
        batch = session.execute(select(Batch).where(Batch.name == "bad-batch")).scalar_one()
        assert batch.revoked_at == result.revoked_at and batch.revocation_reason == "keyCompromise"
    for uid in seeded.uids:
        device = _device(fleet_db, uid)
        assert device.state is S.REVOKED and device.revoked_at is not None
        (cert,) = _certs(fleet_db, uid)
        assert cert.revoked_at is not None
        assert cert.reason == ("superseded" if uid == seeded.uids[0] else "cACompromise")
    for uid in bystander.uids:
        assert _device(fleet_db, uid).state is S.ACTIVE
    event = _events(fleet_db)[-1]
    assert (event.kind, event.subject, sorted(event.uids)) == ("batch", "bad-batch", seeded.uids)
    assert len(event.serials) == 4
    last = _audit(fleet_db)[-1]
    assert (last.action, last.subject) == ("batch.revoked", "batch:bad-batch")
    assert last.details["devices"] == 4 and last.details["certificates"] == 4
    again = service.revoke_batch("bad-batch", "ca_compromise", actor=ACTOR)
    assert not again.created and again.event_id == result.event_id


def test_batch_reason_for_certificates_follows_the_batch_reason(
    fleet_db: Database, manifests: Manifests, keys: FleetKeys
) -> None:
    seeded = seed_batch(fleet_db, manifests, keys, "retiring", 0x800, 2)
    RevocationService(fleet_db, keys).revoke_batch(
        "retiring", "cessation_of_operation", actor=ACTOR
    )
    assert {_certs(fleet_db, u)[0].reason for u in seeded.uids} == {"cessationOfOperation"}
    with pytest.raises(InvalidInput):
        RevocationService(fleet_db, keys).revoke_batch("retiring", "remove_from_crl", actor=ACTOR)


def test_large_batch_is_revoked_in_bulk(
    fleet_db: Database, manifests: Manifests, keys: FleetKeys
) -> None:
    seeded = seed_batch(fleet_db, manifests, keys, "big", 0x10000, 1500, certs_per_device=0)
    result = RevocationService(fleet_db, keys).revoke_batch("big", "ca_compromise", actor=ACTOR)
    assert result.devices == 1500 and result.certificates == 0
    with fleet_db.transaction(write=False) as session:
        states = set(
            session.execute(select(Device.state).where(Device.uid.in_(seeded.uids[:500]))).scalars()
        )
    assert states == {S.REVOKED}
    assert len(_events(fleet_db)[-1].uids) == 1500


def test_concurrent_revocations_each_commit_once(
    fleet_db: Database, manifests: Manifests, keys: FleetKeys
) -> None:
    seeded = seed_batch(fleet_db, manifests, keys, "b1", 0x900, 6)
    service = RevocationService(fleet_db, keys)
    results = []
    errors: list[BaseException] = []

    def revoke(uid: str) -> None:
        try:
            results.append(service.revoke_device(uid, "key_compromise", actor=ACTOR))
        except BaseException as exc:  # pragma: no cover (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=revoke, args=(u,)) for u in seeded.uids * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sum(r.created for r in results) == 6
    events = _events(fleet_db)
    assert sorted(e.subject for e in events) == seeded.uids
    _audit(fleet_db)  # the chain verifies


def test_notify_is_delivered_at_commit(
    fleet_db: Database, manifests: Manifests, keys: FleetKeys, tmp_path: Path
) -> None:
    if fleet_db.dialect != "postgresql":
        pytest.skip("NOTIFY is PostgreSQL's; SQLite followers poll")
    seeded = seed_batch(fleet_db, manifests, keys, "b1", 0xA00, 1)
    with psycopg.connect(postgres_dsn(fleet_db), autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        result = RevocationService(fleet_db, keys).revoke_device(
            seeded.uids[0], "key_compromise", actor=ACTOR
        )
        payloads = set()
        for notify in conn.notifies(timeout=5, stop_after=50):
            payloads.add(notify.payload)
            if str(result.event_id) in payloads:
                break
    assert str(result.event_id) in payloads
