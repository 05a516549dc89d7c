"""The enrollment service and its database nonce store with real cards (tests/support/fleetworld:
a ceremony, the fleet's keys, a P-256 and an RSA-2048 batch, provisioned cards), on SQLite and
PostgreSQL: accepted enrollment (certificate chains to the issuing CA and the root, UID in the
SAN URI, the card's identity key), the one-transaction rule (a failure leaves nothing, the nonce
unconsumed), nonce refusals, deny by default, revoked / retired / rotating devices, a revoked
batch, re-enrollment, RSA key recording, the registry's current key and epoch, and renewal over
the gateway handlers (a device cannot renew for another).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import threading
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store
from sqlalchemy import func, select, update

from iotid.fleet.db import Database
from iotid.fleet.devices.service import DeviceService
from iotid.fleet.enrollment import gateway as enrollment_gateway
from iotid.fleet.enrollment.dbnonces import DbNonceStore
from iotid.fleet.enrollment.nonces import NonceState
from iotid.fleet.enrollment.repository import EnrollmentRepository
from iotid.fleet.enrollment.service import EnrollmentRefused, EnrollmentResult, EnrollmentService
from iotid.fleet.enrollment.verdict import Reason
from iotid.fleet.gateway.routing import DeviceContext, GatewayRequest, Routes
from iotid.fleet.issuing import device_uri, serial_hex, spki_der, uid_from_certificate
from iotid.fleet.models import (
    AuditEntry,
    AuditLog,
    Batch,
    Certificate,
    Device,
    DeviceState,
    Enrollment,
    Nonce,
)
from support.fleetworld import FleetWorld, WorldCard, build_world

S = DeviceState


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FleetWorld:
    return build_world(
        tmp_path_factory.mktemp("enroll-world"),
        {"p256-a": ("p256", 3), "rsa-a": ("rsa2048", 1)},
    )


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def __call__(self) -> dt.datetime:
        return self.now


def _import(db: Database, world: FleetWorld, *names: str) -> None:
    devices = DeviceService(db, world.root)
    for name in names:
        batch = world.batches[name]
        devices.import_manifest(batch.manifest_bytes, batch.signature, actor="test")


def _service(
    db: Database, world: FleetWorld, clock: Callable[[], dt.datetime] | None = None
) -> EnrollmentService:
    return EnrollmentService(db, world.keys, clock or Clock())


def _enroll(svc: EnrollmentService, card: WorldCard) -> EnrollmentResult:
    nonce, _ = svc.new_nonce()
    return svc.enroll(card.se().attestation.attest(nonce))


def _refused(call: Callable[[], Any], reason: Reason, status: int = 403) -> EnrollmentRefused:
    with pytest.raises(EnrollmentRefused) as info:
        call()
    assert (info.value.reason, info.value.status) == (reason, status), info.value.message
    assert info.value.extra == {"reason": reason.value}
    assert info.value.code == "enrollment.refused"
    return info.value


def _device(db: Database, uid: str) -> Device:
    with db.transaction(write=False) as session:
        device = session.execute(select(Device).where(Device.uid == uid)).scalar_one()
        session.expunge(device)
        return device


def _set_device(db: Database, uid: str, **values: Any) -> None:
    with db.transaction() as session:
        session.execute(update(Device).where(Device.uid == uid).values(**values))


def _actions(db: Database, subject: str | None = None) -> list[str]:
    with db.transaction(write=False) as session:
        query = select(AuditEntry.action).order_by(AuditEntry.seq)
        if subject is not None:
            query = query.where(AuditEntry.subject == subject)
        return list(session.execute(query).scalars())


def _count(db: Database, model: type[Any]) -> int:
    with db.transaction(write=False) as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def _verify_chain(world: FleetWorld, result: EnrollmentResult, now: dt.datetime) -> None:
    """RFC 5280 path validation with cryptography's verifier: client cert -> issuing CA -> root."""
    verifier = PolicyBuilder().store(Store([world.root])).time(now).build_client_verifier()
    verified = verifier.verify(result.certificate, list(result.chain))
    assert verified.chain[-1] == world.root
    assert verified.chain[1] == world.keys.issuing.certificate
    assert x509.UniformResourceIdentifier(device_uri(result.uid)) in (verified.subjects or [])
    result.certificate.verify_directly_issued_by(world.keys.issuing.certificate)


# -- accepted -------------------------------------------------------------------------------------
def test_enrollment_accepted(fleet_db: Database, world: FleetWorld) -> None:
    _import(fleet_db, world, "p256-a")
    clock = Clock()
    svc = _service(fleet_db, world, clock)
    card = world.batches["p256-a"].cards[0]
    entry = world.batches["p256-a"].manifest.card(card.uid)
    assert entry is not None and entry.identity_public_key is not None
    nonce, expires_at = svc.new_nonce()
    assert len(nonce) == 32 and expires_at == clock.now + dt.timedelta(seconds=300)
    quote = card.se().attestation.attest(nonce)
    result = svc.enroll(quote)

    assert (result.uid, result.epoch) == (card.uid_hex, 1)
    assert result.serial == serial_hex(result.certificate.serial_number)
    assert result.not_after == clock.now + dt.timedelta(hours=24)
    assert uid_from_certificate(result.certificate) == card.uid_hex
    assert spki_der(result.certificate.public_key()) == spki_der(entry.identity_public_key)  # type: ignore[arg-type]
    _verify_chain(world, result, clock.now)
    assert result.gateway_ca_pem == world.keys.ca_bundle_pem

    device = _device(fleet_db, card.uid_hex)
    assert (device.state, device.key_epoch, device.enrolled_at) == (S.ENROLLED, 1, clock.now)
    with fleet_db.transaction(write=False) as session:
        (cert,) = session.execute(select(Certificate)).scalars()
        (enrollment,) = session.execute(select(Enrollment)).scalars()
        (row,) = session.execute(select(Nonce)).scalars()
        assert AuditLog(session).verify() is not None
    assert (cert.serial, cert.key_epoch, cert.device_id) == (result.serial, 1, device.id)
    assert cert.der == result.certificate.public_bytes(serialization.Encoding.DER)
    assert cert.issuer_sha256 == world.keys.issuing.sha256
    assert (enrollment.quote, enrollment.certificate_serial) == (quote, result.serial)
    assert enrollment.attestation_cert_sha256 == entry.attestation_cert_sha256
    assert enrollment.spki_sha256 == cert.spki_sha256
    assert row.consumed_at == clock.now
    assert _actions(fleet_db) == [
        "batch.imported",
        "device.state_changed",
        "enrollment.accepted",
        "certificate.issued",
    ]
    assert _actions(fleet_db, f"certificate:{result.serial}") == ["certificate.issued"]


def test_reenrollment_issues_a_fresh_certificate(fleet_db: Database, world: FleetWorld) -> None:
    _import(fleet_db, world, "p256-a")
    svc = _service(fleet_db, world)
    card = world.batches["p256-a"].cards[1]
    first = _enroll(svc, card)
    enrolled_at = _device(fleet_db, card.uid_hex).enrolled_at
    second = _enroll(svc, card)
    assert second.serial != first.serial
    assert _device(fleet_db, card.uid_hex).state is S.ENROLLED
    _set_device(fleet_db, card.uid_hex, state=S.ACTIVE)
    third = _enroll(svc, card)
    device = _device(fleet_db, card.uid_hex)
    assert (device.state, device.enrolled_at) == (S.ACTIVE, enrolled_at)
    assert len({first.serial, second.serial, third.serial}) == 3
    assert _count(fleet_db, Certificate) == 3 and _count(fleet_db, Enrollment) == 3
    assert _actions(fleet_db, f"device:{card.uid_hex}").count("device.state_changed") == 1


def test_rsa_batch_records_the_attested_key(fleet_db: Database, world: FleetWorld) -> None:
    _import(fleet_db, world, "rsa-a")
    (card,) = world.batches["rsa-a"].cards
    assert _device(fleet_db, card.uid_hex).identity_spki is None
    svc = _service(fleet_db, world)
    result = _enroll(svc, card)
    recorded = _device(fleet_db, card.uid_hex).identity_spki
    assert recorded == spki_der(result.certificate.public_key())  # type: ignore[arg-type]
    _verify_chain(world, result, dt.datetime.now(dt.UTC))
    again = _enroll(svc, card)  # now compared with the recorded key
    assert spki_der(again.certificate.public_key()) == recorded  # type: ignore[arg-type]
    # Another key recorded (as a rotation would): the card's key is no longer the current one.
    other = spki_der(ec.generate_private_key(ec.SECP256R1()).public_key())
    _set_device(fleet_db, card.uid_hex, identity_spki=other)
    _refused(lambda: _enroll(svc, card), Reason.IDENTITY_KEY_MISMATCH)


# -- refusals -------------------------------------------------------------------------------------
def test_nonce_refusals(fleet_db: Database, world: FleetWorld) -> None:
    _import(fleet_db, world, "p256-a")
    clock = Clock()
    svc = _service(fleet_db, world, clock)
    card = world.batches["p256-a"].cards[0]
    nonce, _ = svc.new_nonce()
    quote = card.se().attestation.attest(nonce)
    svc.enroll(quote)
    _refused(lambda: svc.enroll(quote), Reason.NONCE_REUSED)
    _refused(
        lambda: svc.enroll(card.se().attestation.attest(secrets.token_bytes(32))),
        Reason.NONCE_UNKNOWN,
    )
    late, _ = svc.new_nonce()
    late_quote = card.se().attestation.attest(late)
    clock.now += dt.timedelta(seconds=301)
    _refused(lambda: svc.enroll(late_quote), Reason.NONCE_EXPIRED)
    # A renewal nonce is not an enrollment nonce.
    renewal, _ = svc.new_renewal_nonce(card.uid_hex)
    _refused(lambda: svc.enroll(card.se().attestation.attest(renewal)), Reason.NONCE_UNKNOWN)
    refused = [a for a in _actions(fleet_db, f"device:{card.uid_hex}") if a == "enrollment.refused"]
    assert len(refused) == 4  # the quotes were the card's: every refusal is on record


def test_unknown_uid_and_malformed_quotes_leave_no_trace(
    fleet_db: Database, world: FleetWorld
) -> None:
    _import(fleet_db, world, "p256-a")  # the RSA batch is not imported
    svc = _service(fleet_db, world)
    (card,) = world.batches["rsa-a"].cards
    nonce, _ = svc.new_nonce()
    _refused(lambda: svc.enroll(card.se().attestation.attest(nonce)), Reason.UID_NOT_IN_MANIFEST)
    _refused(lambda: svc.enroll(b"\xd2garbage"), Reason.MALFORMED, 422)
    _refused(lambda: svc.enroll(b""), Reason.MALFORMED, 422)
    assert _actions(fleet_db) == ["batch.imported"]
    with fleet_db.transaction(write=False) as session:
        (row,) = session.execute(select(Nonce)).scalars()
    assert row.consumed_at is not None  # the card's genuine quote consumed it


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (S.REVOKED, Reason.DEVICE_REVOKED),
        (S.RETIRED, Reason.DEVICE_RETIRED),
        (S.ROTATING, Reason.DEVICE_ROTATING),
    ],
)
def test_device_states_that_refuse(
    fleet_db: Database, world: FleetWorld, state: DeviceState, reason: Reason
) -> None:
    _import(fleet_db, world, "p256-a")
    svc = _service(fleet_db, world)
    card, other = world.batches["p256-a"].cards[:2]
    _set_device(fleet_db, card.uid_hex, state=state)
    _refused(lambda: _enroll(svc, card), reason)
    device = _device(fleet_db, card.uid_hex)
    assert (device.state, device.key_epoch) == (state, 0)
    assert _actions(fleet_db, f"device:{card.uid_hex}") == ["enrollment.refused"]
    _enroll(svc, other)  # the rest of the batch is unaffected


def test_revoked_batch_refuses_every_device(fleet_db: Database, world: FleetWorld) -> None:
    _import(fleet_db, world, "p256-a", "rsa-a")
    svc = _service(fleet_db, world)
    now = dt.datetime.now(dt.UTC)
    with fleet_db.transaction() as session:
        session.execute(update(Batch).where(Batch.name == "p256-a").values(revoked_at=now))
    for card in world.batches["p256-a"].cards:
        _refused(lambda c=card: _enroll(svc, c), Reason.REVOKED_BATCH_CA)  # type: ignore[misc]
    _enroll(svc, world.batches["rsa-a"].cards[0])
    assert _count(fleet_db, Certificate) == 1


def test_registry_current_key_and_epoch(fleet_db: Database, world: FleetWorld) -> None:
    """After a rotation the registry's key and epoch are the reference, not the manifest's."""
    _import(fleet_db, world, "p256-a")
    svc = _service(fleet_db, world)
    card = world.batches["p256-a"].cards[2]
    _enroll(svc, card)
    manifest_key = _device(fleet_db, card.uid_hex).identity_spki
    _set_device(fleet_db, card.uid_hex, key_epoch=2)  # the registry is at epoch 2, the card at 1
    _refused(lambda: _enroll(svc, card), Reason.KEY_EPOCH_MISMATCH)
    rotated = spki_der(ec.generate_private_key(ec.SECP256R1()).public_key())
    _set_device(fleet_db, card.uid_hex, key_epoch=1, identity_spki=rotated)
    error = _refused(lambda: _enroll(svc, card), Reason.IDENTITY_KEY_MISMATCH)
    assert "registry's current" in error.message
    _set_device(fleet_db, card.uid_hex, identity_spki=manifest_key)
    assert _enroll(svc, card).epoch == 1


# -- one transaction ------------------------------------------------------------------------------
@pytest.mark.parametrize("failing", ["add_certificate", "add_enrollment"])
def test_enrollment_is_all_or_nothing(
    fleet_db: Database, world: FleetWorld, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    _import(fleet_db, world, "p256-a")
    svc = _service(fleet_db, world)
    card = world.batches["p256-a"].cards[0]
    nonce, _ = svc.new_nonce()
    quote = card.se().attestation.attest(nonce)

    def boom(*_args: Any) -> None:
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(EnrollmentRepository, failing, boom)
        with pytest.raises(RuntimeError, match="disk full"):
            svc.enroll(quote)
    device = _device(fleet_db, card.uid_hex)
    assert (device.state, device.key_epoch, device.enrolled_at) == (S.MANUFACTURED, 0, None)
    assert _count(fleet_db, Certificate) == 0 and _count(fleet_db, Enrollment) == 0
    assert _actions(fleet_db) == ["batch.imported"]
    with fleet_db.transaction(write=False) as session:
        (row,) = session.execute(select(Nonce)).scalars()
    assert row.consumed_at is None  # rolled back with the rest: the device may retry
    assert svc.enroll(quote).uid == card.uid_hex


# -- renewal over the gateway ---------------------------------------------------------------------
def _ctx(result: EnrollmentResult) -> DeviceContext:
    cert = result.certificate
    uid = uid_from_certificate(cert)
    assert uid is not None
    return DeviceContext(uid, cert, serial_hex(cert.serial_number))


def _post(routes: Routes, ctx: DeviceContext, path: str, body: dict[str, Any] | None = None) -> Any:
    handler, params = routes.resolve("POST", path)
    raw = json.dumps(body).encode() if body is not None else b""
    response = handler(ctx, GatewayRequest("POST", path, raw, params=params))
    assert response.status == 201
    return json.loads(response.body)


def test_renewal_over_the_gateway(fleet_db: Database, world: FleetWorld) -> None:
    _import(fleet_db, world, "p256-a")
    svc = _service(fleet_db, world)
    routes = Routes()
    enrollment_gateway.register(routes, svc)
    card_a, card_b = world.batches["p256-a"].cards[:2]
    ctx_a, ctx_b = _ctx(_enroll(svc, card_a)), _ctx(_enroll(svc, card_b))

    def quote_for(card: WorldCard, ctx: DeviceContext) -> str:
        nonce = base64.b64decode(_post(routes, ctx, "/v1/device/certificate/nonce")["nonce"])
        return base64.b64encode(card.se().attestation.attest(nonce)).decode()

    body = _post(routes, ctx_a, "/v1/device/certificate", {"quote": quote_for(card_a, ctx_a)})
    assert body["uid"] == card_a.uid_hex and body["epoch"] == 1
    renewed = x509.load_pem_x509_certificate(body["certificate"].encode())
    assert serial_hex(renewed.serial_number) == body["serial"] != ctx_a.serial
    assert renewed.public_key() == ctx_a.certificate.public_key()
    assert body["chain"].encode() == world.keys.issuing.certificate.public_bytes(
        serialization.Encoding.PEM
    )
    # B's connection presenting A's quote (answering B's nonce): refused, on B's record.
    handler, _ = routes.resolve("POST", "/v1/device/certificate")
    stolen = quote_for(card_a, ctx_b)
    _refused(
        lambda: handler(ctx_b, GatewayRequest("POST", "/", f'{{"quote": "{stolen}"}}'.encode())),
        Reason.UID_MISMATCH,
    )
    # A's renewal nonce used on B's connection with B's quote: the nonce was not issued to B.
    nonce_a = base64.b64decode(_post(routes, ctx_a, "/v1/device/certificate/nonce")["nonce"])
    quote_b = base64.b64encode(card_b.se().attestation.attest(nonce_a)).decode()
    _refused(
        lambda: handler(ctx_b, GatewayRequest("POST", "/", f'{{"quote": "{quote_b}"}}'.encode())),
        Reason.NONCE_UNKNOWN,
    )
    # An enrollment nonce is not a renewal nonce.
    enroll_nonce, _ = svc.new_nonce()
    quote_a = base64.b64encode(card_a.se().attestation.attest(enroll_nonce)).decode()
    _refused(
        lambda: handler(ctx_a, GatewayRequest("POST", "/", f'{{"quote": "{quote_a}"}}'.encode())),
        Reason.NONCE_UNKNOWN,
    )
    refusals = _actions(fleet_db, f"device:{card_b.uid_hex}").count("enrollment.refused")
    assert refusals == 2
    assert _count(fleet_db, Certificate) == 3


# -- the database nonce store ---------------------------------------------------------------------
def test_db_nonce_store(fleet_db: Database) -> None:
    clock = Clock()
    store = DbNonceStore(fleet_db, "enroll", ttl=dt.timedelta(seconds=60), clock=clock)
    other = DbNonceStore(fleet_db, "renew", clock=clock)
    nonce = store.issue()
    assert other.consume(nonce, clock.now) is NonceState.UNKNOWN
    assert store.consume(nonce, clock.now) is NonceState.OK
    assert store.consume(nonce, clock.now) is NonceState.REUSED
    assert store.consume(secrets.token_bytes(32), clock.now) is NonceState.UNKNOWN
    assert store.consume(b"short", clock.now) is NonceState.UNKNOWN
    late = store.issue()
    assert store.consume(late, clock.now + dt.timedelta(seconds=61)) is NonceState.EXPIRED
    bound_nonce, _ = store.issue_with_expiry("AABB")
    with fleet_db.transaction() as session:
        assert (
            store.bound(session, device_uid="CCDD").consume(bound_nonce, clock.now)
            is NonceState.UNKNOWN
        )
        assert (
            store.bound(session, device_uid="AABB").consume(bound_nonce, clock.now) is NonceState.OK
        )
    # Issuing two time-to-lives later purges the old rows of this purpose only.
    other.issue()
    clock.now += dt.timedelta(seconds=121)
    store.issue()
    with fleet_db.transaction(write=False) as session:
        purposes = sorted(session.execute(select(Nonce.purpose)).scalars())
    assert purposes == ["enroll", "renew"]
    assert store.consume(nonce, clock.now) is NonceState.UNKNOWN  # forgotten: still refused
    with pytest.raises(ValueError):
        DbNonceStore(fleet_db, "")
    with pytest.raises(ValueError):
        DbNonceStore(fleet_db, "x", ttl=dt.timedelta(0))


def test_db_nonce_consumed_once_under_concurrency(fleet_db: Database) -> None:
    store = DbNonceStore(fleet_db, "enroll")
    nonce = store.issue()
    now = dt.datetime.now(dt.UTC)
    results: list[NonceState] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        results.append(store.consume(nonce, now))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted([NonceState.OK] + [NonceState.REUSED] * 3)


def test_one_quote_enrolls_once_under_concurrency(fleet_db: Database, world: FleetWorld) -> None:
    _import(fleet_db, world, "p256-a")
    svc = _service(fleet_db, world)
    card = world.batches["p256-a"].cards[0]
    nonce, _ = svc.new_nonce()
    quote = card.se().attestation.attest(nonce)
    outcomes: list[object] = []
    barrier = threading.Barrier(3)

    def worker() -> None:
        barrier.wait()
        try:
            outcomes.append(svc.enroll(quote))
        except EnrollmentRefused as refusal:
            outcomes.append(refusal.reason)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(o, EnrollmentResult) for o in outcomes) == 1
    assert sorted(str(o) for o in outcomes if isinstance(o, Reason)) == ["nonce_reused"] * 2
    assert _count(fleet_db, Certificate) == 1
    with fleet_db.transaction(write=False) as session:
        assert AuditLog(session).verify() is not None
