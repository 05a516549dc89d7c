"""The audit slice on SQLite and PostgreSQL: listing with filters and keyset paging, chain
verification that names the first edited entry, and ``trace UID`` from a device's certificate
through its enrollment quote, batch and issuance root to the ceremony record and its quorum.

Real pieces: a fleetworld (a 2-of-3 ceremony with custodians alice, bob, carol; a batch; cards);
the enrollment is simulated by inserting the Enrollment and Certificate rows an enrollment writes,
with a real quote from the card and a real certificate from the fleet's issuing CA.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import text

from iotid.fleet.audit import AuditService
from iotid.fleet.db import Database
from iotid.fleet.devices.service import DeviceService
from iotid.fleet.enrollment.quote import decode_quote, x5chain
from iotid.fleet.errors import InvalidInput, NotFound
from iotid.fleet.issuing import certificate_sha256, serial_hex, spki_sha256
from iotid.fleet.models import AuditLog, Certificate, Device, DeviceState, Enrollment
from iotid.spec.ceremony_record import parse_record
from support.fleetworld import FleetWorld, build_world

ADMIN = "token:1"


@dataclass(frozen=True)
class World:
    world: FleetWorld
    uid: str
    quote: bytes

    @property
    def record(self) -> Path:
        return self.world.ceremony_dir / "ceremony.jsonl"


@pytest.fixture(scope="module")
def aw(tmp_path_factory: pytest.TempPathFactory) -> World:
    world = build_world(tmp_path_factory.mktemp("audit-world"), {"aud": ("p256", 2)})
    card = world.batches["aud"].cards[0]
    se = card.se()
    try:
        quote = se.attestation.attest(secrets.token_bytes(32))
    finally:
        se.close()
    return World(world, card.uid_hex, quote)


def _allow_audit_edits(db: Database) -> None:
    """What a privileged attacker does first: switch the append-only triggers off."""
    with db.connection() as conn:
        if db.dialect == "postgresql":
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER audit_log_no_update"))
            conn.execute(text("DROP TRIGGER audit_log_no_delete"))


def _import(db: Database, aw: World) -> None:
    batch = aw.world.batches["aud"]
    DeviceService(db, aw.world.root).import_manifest(
        batch.manifest_bytes, batch.signature, actor=ADMIN
    )


def _enroll(db: Database, aw: World, *, batch_ca_sha256: str | None = None) -> str:
    """Write what an accepted enrollment writes: the certificate, the evidence, the state."""
    now = dt.datetime.now(dt.UTC)
    attestation, batch_ca = x5chain(decode_quote(aw.quote))
    with db.transaction() as session:
        device = session.query(Device).filter_by(uid=aw.uid).one()
        assert device.identity_spki is not None
        cert = aw.world.keys.issuing.issue_client(device.identity_spki, aw.uid, now=now)
        serial = serial_hex(cert.serial_number)
        session.add(
            Certificate(
                serial=serial,
                device_id=device.id,
                der=cert.public_bytes(Encoding.DER),
                key_epoch=1,
                spki_sha256=spki_sha256(device.identity_spki),
                issuer_sha256=aw.world.keys.issuing.sha256,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
            )
        )
        session.add(
            Enrollment(
                device_id=device.id,
                quote=aw.quote,
                attestation_cert_sha256=certificate_sha256(attestation),
                batch_ca_sha256=batch_ca_sha256 or certificate_sha256(batch_ca),
                key_epoch=1,
                spki_sha256=spki_sha256(device.identity_spki),
                certificate_serial=serial,
                created_at=now,
            )
        )
        device.state, device.key_epoch, device.enrolled_at = DeviceState.ENROLLED, 1, now
        log = AuditLog(session)
        log.append(actor="iotid", action="enrollment.accepted", subject=f"device:{aw.uid}")
        log.append(
            actor="iotid",
            action="certificate.issued",
            subject=f"device:{aw.uid}",
            details={"serial": serial},
        )
    return serial


# -- log, paging, verification --------------------------------------------------------------------
def test_entries_filter_and_page(fleet_db: Database, aw: World) -> None:
    service = AuditService(fleet_db, aw.world.keys)
    for i in range(5):
        service.log(actor=ADMIN, action="test.event", subject=f"thing:{i % 2}", details={"i": i})
    service.log(actor=ADMIN, action="other.event", subject="thing:0")
    page = service.entries(limit=4)
    assert [e.seq for e in page.items] == [1, 2, 3, 4] and page.next_after_seq == 4
    rest = service.entries(after_seq=page.next_after_seq, limit=4)
    assert [e.seq for e in rest.items] == [5, 6] and rest.next_after_seq is None
    zero = service.entries(subject="thing:0")
    assert [e.details.get("i") for e in zero.items] == [0, 2, 4, None]
    assert [e.seq for e in service.entries(subject="thing:0", action="other.event").items] == [6]
    for bad in ({"limit": 0}, {"after_seq": -1}, {"action": "Not An Action"}):
        with pytest.raises(InvalidInput):
            service.entries(**bad)  # type: ignore[arg-type]


def test_verify_reports_the_edited_entry(fleet_db: Database, aw: World) -> None:
    service = AuditService(fleet_db, aw.world.keys)
    empty = service.verify()
    assert (empty.ok, empty.head_seq, empty.head_hash) == (True, 0, "0" * 64)
    for i in range(5):
        service.log(actor=ADMIN, action="test.event", subject="thing:1", details={"i": i})
    good = service.verify()
    assert good.ok and good.head_seq == 5 and good.head_hash == service.entries().items[-1].hash
    _allow_audit_edits(fleet_db)
    with fleet_db.connection() as conn:
        edited = conn.execute(text("UPDATE audit_log SET actor = 'token:666' WHERE seq = 3"))
        assert edited.rowcount == 1
    bad = service.verify()
    assert (bad.ok, bad.seq) == (False, 3)
    assert bad.reason is not None and "edited" in bad.reason
    with fleet_db.connection() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq = 3"))
    missing = service.verify()
    assert (missing.ok, missing.seq) == (False, 3) and "missing" in (missing.reason or "")


# -- trace ----------------------------------------------------------------------------------------
def test_trace_reaches_the_ceremony_quorum(fleet_db: Database, aw: World) -> None:
    _import(fleet_db, aw)
    serial = _enroll(fleet_db, aw)
    service = AuditService(fleet_db, aw.world.keys, ceremony_record=aw.record)
    trace = service.trace(aw.uid.lower())
    assert trace.complete, dataclasses.asdict(trace)
    assert (trace.uid, trace.state, trace.key_epoch) == (aw.uid, "enrolled", 1)
    (cert,) = trace.certificates
    assert cert.ok and cert.serial == serial and cert.revoked_at is None
    (evidence,) = trace.enrollments
    attestation, batch_ca = x5chain(decode_quote(aw.quote))
    assert evidence.ok and evidence.certificate_serial == serial
    assert evidence.attestation_subject == attestation.subject.rfc4514_string()
    assert evidence.attestation_serial == serial_hex(attestation.serial_number)
    assert evidence.batch_ca_sha256 == certificate_sha256(batch_ca) == trace.batch.batch_ca_sha256
    assert trace.batch.ok and trace.batch.name == "aud" and trace.batch.revoked_at is None
    assert trace.root.ok and trace.root.sha256 == certificate_sha256(aw.world.root)
    ceremony = trace.ceremony
    assert ceremony.verified and ceremony.ok
    assert ceremony.reference == trace.root.ceremony_reference
    assert ceremony.entry_action == "root.key.generated"
    assert (ceremony.threshold, ceremony.count) == (2, 3)
    assert ceremony.custodians == ("alice", "bob", "carol")
    assert ceremony.custodians_present == ("alice", "bob", "carol")
    entries = parse_record(aw.record.read_bytes())
    assert ceremony.entries == len(entries) and ceremony.record_head == entries[-1].hash
    assert [a.action for a in trace.audit] == ["enrollment.accepted", "certificate.issued"]
    # Without a copy of the record, the reference is reported but not checked.
    plain = AuditService(fleet_db, aw.world.keys).trace(aw.uid)
    assert plain.ok and not plain.complete and not plain.ceremony.verified
    assert plain.ceremony.reference == ceremony.reference
    with pytest.raises(NotFound):
        service.trace("00FF")


def test_trace_shows_the_broken_links(fleet_db: Database, aw: World, tmp_path: Path) -> None:
    _import(fleet_db, aw)
    _enroll(fleet_db, aw, batch_ca_sha256="ab" * 32)
    lines = aw.record.read_bytes().splitlines(keepends=True)
    edited = tmp_path / "edited.jsonl"
    at = next(i for i, line in enumerate(lines) if i and b"alice" in line)
    edited.write_bytes(
        b"".join([*lines[:at], lines[at].replace(b"alice", b"mallory"), *lines[at + 1 :]])
    )
    key_at = next(i for i, line in enumerate(lines) if b'"root.key.generated"' in line)
    before, after = tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    before.write_bytes(b"".join(lines[:key_at]))  # the newest entries removed
    after.write_bytes(b"".join(lines[: key_at + 1]))
    service = AuditService(fleet_db, aw.world.keys)
    trace = service.trace(aw.uid, ceremony_record=edited)
    assert not trace.ok
    (evidence,) = trace.enrollments
    assert not evidence.ok and "batch_ca_sha256" in (evidence.problem or "")
    assert all(c.ok for c in trace.certificates) and trace.batch.ok and trace.root.ok
    assert not trace.ceremony.ok and f"line {at + 1}:" in (trace.ceremony.problem or "")
    cut = service.trace(aw.uid, ceremony_record=before).ceremony
    assert not cut.ok and "not in this ceremony record" in (cut.problem or "")
    cut = service.trace(aw.uid, ceremony_record=after).ceremony
    assert not cut.ok and "issuance after its key" in (cut.problem or "")
    # A batch whose stored manifest was edited after import.
    _allow_audit_edits(fleet_db)
    with fleet_db.connection() as conn:
        conn.execute(text("UPDATE batches SET manifest_json = manifest_json || ' '"))
    batch = service.trace(aw.uid).batch
    assert not batch.ok and "manifest_sha256" in (batch.problem or "")
