"""The fleet's rotation slice with real cards, on SQLite and PostgreSQL.

Scope: the whole two-phase rotation (nonce -> card ROTATE -> card ATTEST with the pending-key
claim -> prepare -> card COMMIT with the acknowledgement -> the card's new key is the
certificate's -> complete -> registry at epoch 2, older certificates revoked as superseded),
then DECRYPT on the card of data encrypted to the retired key and to the new current key; for
P-256, P-384 and RSA-2048. Crash safety (prepare retried after a
crash, COMMIT on the card without ``complete``: ``complete`` later, the enrollment path's
``complete_from_quote`` and the gateway's per-connection hook all converge), a restarted
rotation superseding the pending one, operator abort, and the gateway handlers.

The fixtures and helpers here are imported by test_rotation_refusals.py (the negative matrix).
Not covered: the gateway's TLS server (its own tests), the card's rotation applet alone
(tests/unit/se/test_rotation_applet.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from iotid.crypto.ecies import encrypt_for
from iotid.fleet.db import Database
from iotid.fleet.devices import DeviceService
from iotid.fleet.devices.repository import DeviceRepository
from iotid.fleet.errors import DomainError
from iotid.fleet.gateway.routing import DeviceContext, GatewayRequest, Routes
from iotid.fleet.issuing.ca import certificate_sha256, serial_hex, spki_sha256
from iotid.fleet.models import (
    AuditEntry,
    AuditLog,
    Certificate,
    Device,
    DeviceState,
    Nonce,
    RevocationEvent,
    Rotation,
)
from iotid.fleet.rotation import PrepareResult, RotationService
from iotid.fleet.rotation.gateway import connection_hook, on_new_certificate, register
from iotid.fleet.rotation.service import complete_pending_in, pending_key_in
from iotid.host.rotation import RotationProof
from iotid.host.secureelement import SecureElement
from support.fleetworld import FleetWorld, WorldCard, build_world

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)  # revocation times


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)  # the world's certificates are fresh

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FleetWorld:
    return build_world(
        tmp_path_factory.mktemp("rotation-world"),
        {"p256-r": ("p256", 3), "p384-r": ("p384", 1), "rsa-r": ("rsa2048", 1)},
    )


def spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@dataclass
class Fleet:
    db: Database
    world: FleetWorld
    clock: Clock
    service: RotationService
    tmp: Path

    def card(self, batch: str = "p256-r", index: int = 0) -> WorldCard:
        """A private copy of a card, registered as an enrolled, active device at epoch 1 with
        one epoch-1 certificate (what the enrollment slice leaves behind)."""
        original = self.world.batches[batch].cards[index]
        card = original.copy(self.tmp / f"{batch}-{index}")
        se = card.se()
        identity = spki(se.mtls.public_key())
        devices = DeviceService(self.db, self.world.root, clock=self.clock)
        devices.transition(card.uid, [DeviceState.MANUFACTURED], DeviceState.ENROLLED, actor="t")
        devices.transition(card.uid, [DeviceState.ENROLLED], DeviceState.ACTIVE, actor="t")
        cert = self.world.keys.issuing.issue_client(identity, card.uid_hex, now=self.clock())
        with self.db.transaction() as session:
            device = session.execute(select(Device).where(Device.uid == card.uid_hex)).scalar_one()
            device.key_epoch = 1
            device.identity_spki = identity
            device.enrolled_at = self.clock()
            session.add(
                Certificate(
                    serial=serial_hex(cert.serial_number),
                    device_id=device.id,
                    der=cert.public_bytes(serialization.Encoding.DER),
                    key_epoch=1,
                    spki_sha256=spki_sha256(identity),
                    issuer_sha256=certificate_sha256(self.world.keys.issuing.certificate),
                    not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc,
                )
            )
        return card

    def snapshot(self) -> tuple[Any, ...]:
        """The registry tables a refusal must leave alone."""
        with self.db.transaction(write=False) as s:
            return (
                [
                    (d.uid, d.state, d.key_epoch, d.identity_spki, d.updated_at)
                    for d in s.execute(select(Device).order_by(Device.id)).scalars()
                ],
                [
                    (r.to_epoch, r.state, r.nonce, r.new_spki, r.ack)
                    for r in s.execute(select(Rotation).order_by(Rotation.id)).scalars()
                ],
                [
                    (c.serial, c.revoked_at, c.reason)
                    for c in s.execute(select(Certificate).order_by(Certificate.id)).scalars()
                ],
                [
                    (n.value, n.consumed_at)
                    for n in s.execute(select(Nonce).order_by(Nonce.id)).scalars()
                ],
                s.execute(select(RevocationEvent.id)).scalars().all(),
            )

    def actions(self, uid: str) -> list[str]:
        with self.db.transaction(write=False) as s:
            return list(
                s.execute(
                    select(AuditEntry.action)
                    .where(AuditEntry.subject == f"device:{uid}")
                    .order_by(AuditEntry.seq)
                ).scalars()
            )

    def device(self, uid: str) -> Device:
        with self.db.transaction(write=False) as s:
            return s.execute(select(Device).where(Device.uid == uid)).scalar_one()

    def certificates(self, uid: str) -> list[Certificate]:
        with self.db.transaction(write=False) as s:
            device_id = s.execute(select(Device.id).where(Device.uid == uid)).scalar_one()
            return list(
                s.execute(
                    select(Certificate)
                    .where(Certificate.device_id == device_id)
                    .order_by(Certificate.id)
                ).scalars()
            )

    def rotations(self, uid: str) -> list[Rotation]:
        with self.db.transaction(write=False) as s:
            device_id = s.execute(select(Device.id).where(Device.uid == uid)).scalar_one()
            return list(
                s.execute(select(Rotation).where(Rotation.device_id == device_id)).scalars()
            )


@pytest.fixture
def fleet(fleet_db: Database, world: FleetWorld, tmp_path: Path) -> Iterator[Fleet]:
    clock = Clock()
    devices = DeviceService(fleet_db, world.root, clock=clock)
    for batch in world.batches.values():
        devices.import_manifest(batch.manifest_bytes, batch.signature, actor="test")
    yield Fleet(
        fleet_db, world, clock, RotationService(fleet_db, world.keys, clock=clock), tmp_path
    )


@dataclass
class Request:
    """What a device sends to prepare: the card's ROTATE and ATTEST answers over one nonce."""

    nonce: bytes
    proof: RotationProof
    quote: bytes

    def args(self, uid: str) -> tuple[str, bytes, int, bytes, bytes, bytes]:
        p = self.proof
        return (uid, self.nonce, p.epoch, p.public_key_der, p.signature, self.quote)


def card_request(fleet: Fleet, card: WorldCard, se: SecureElement) -> Request:
    nonce = fleet.service.new_nonce(card.uid_hex)
    proof = se.rotation.rotate(nonce)
    return Request(nonce, proof, se.attestation.attest(nonce))


def refused(fleet: Fleet, code: str, *args: Any) -> DomainError:
    before = fleet.snapshot()
    with pytest.raises(DomainError) as err:
        fleet.service.prepare(*args)
    assert err.value.code == code, err.value
    assert fleet.snapshot() == before, "a refusal changed the registry"
    return err.value


# -- the whole rotation ---------------------------------------------------------------------------
@pytest.mark.parametrize("batch", ["p256-r", "p384-r", "rsa-r"])
def test_whole_rotation_with_a_real_card(fleet: Fleet, batch: str) -> None:
    card = fleet.card(batch)
    se = card.se()
    old_key = se.mtls.public_key()
    old_serials = [c.serial for c in fleet.certificates(card.uid_hex)]
    historical = encrypt_for(old_key, b"telemetry of epoch 1")

    request = card_request(fleet, card, se)
    assert request.proof.epoch == 2
    result = fleet.service.prepare(*request.args(card.uid_hex))
    assert isinstance(result, PrepareResult) and not result.replayed
    assert result.epoch == 2 and result.chain == (fleet.world.keys.issuing.certificate,)
    assert spki(result.certificate.public_key()) == request.proof.public_key_der
    result.certificate.verify_directly_issued_by(fleet.world.keys.issuing.certificate)
    device = fleet.device(card.uid_hex)
    assert (device.state, device.key_epoch) == (DeviceState.ROTATING, 1)
    assert device.identity_spki == spki(old_key)  # the old key stays current until complete

    assert se.rotation.commit(result.ack) == 2
    assert spki(se.mtls.public_key()) == spki(result.certificate.public_key())
    assert fleet.service.complete(card.uid_hex, result.serial) == 2

    device = fleet.device(card.uid_hex)
    assert (device.state, device.key_epoch) == (DeviceState.ACTIVE, 2)
    assert device.identity_spki == request.proof.public_key_der
    (rotation,) = fleet.rotations(card.uid_hex)
    assert (rotation.state, rotation.from_epoch, rotation.to_epoch) == ("committed", 1, 2)
    assert rotation.proof == request.proof.signature and rotation.quote == request.quote
    certs = {c.serial: c for c in fleet.certificates(card.uid_hex)}
    for serial in old_serials:
        assert certs[serial].revoked_at is not None and certs[serial].reason == "superseded"
    assert certs[result.serial].revoked_at is None and certs[result.serial].key_epoch == 2
    actions = fleet.actions(card.uid_hex)
    for action in ("rotation.prepared", "certificate.issued", "rotation.completed"):
        assert actions.count(action) == 1, actions
    with fleet.db.transaction(write=False) as s:
        assert AuditLog(s).verify() is not None

    # Forensic retention: the retired key still decrypts; the new current key decrypts too.
    assert se.rotation.decrypt(1, historical) == b"telemetry of epoch 1"
    command = encrypt_for(result.certificate.public_key(), b"command for epoch 2")
    assert se.rotation.decrypt(2, command) == b"command for epoch 2"
    # Completing again is harmless.
    assert fleet.service.complete(card.uid_hex, result.serial) == 2
    assert on_new_certificate(fleet.service, _ctx(card.uid_hex, result)) is None


def _sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    return key.sign(message, ec.ECDSA(hashes.SHA256()))


# -- crash safety ---------------------------------------------------------------------------------
def test_prepare_retried_after_a_crash_returns_the_stored_answer(fleet: Fleet) -> None:
    card = fleet.card()
    se = card.se()
    request = card_request(fleet, card, se)
    first = fleet.service.prepare(*request.args(card.uid_hex))
    # The response was lost: the device sends the very same request again.
    second = fleet.service.prepare(*request.args(card.uid_hex))
    assert second.replayed
    assert (second.ack, second.serial, second.epoch) == (first.ack, first.serial, first.epoch)
    assert second.certificate == first.certificate
    assert len(fleet.rotations(card.uid_hex)) == 1
    assert len(fleet.certificates(card.uid_hex)) == 2  # epoch 1 + the one new certificate
    # A retry with another (bad) proof is not served the stored answer.
    uid, nonce, epoch, new, _proof, quote = request.args(card.uid_hex)
    forged = _sign(ec.generate_private_key(ec.SECP256R1()), b"x")
    refused(fleet, "rotation.bad_proof", uid, nonce, epoch, new, forged, quote)
    assert se.rotation.commit(second.ack) == 2
    assert fleet.service.complete(card.uid_hex, second.serial) == 2
    # Even after completion the retry gets the same stored answer (nothing is issued again).
    third = fleet.service.prepare(*request.args(card.uid_hex))
    assert third.replayed and third.serial == first.serial
    assert len(fleet.certificates(card.uid_hex)) == 2


@pytest.mark.parametrize("recovery", ["complete", "quote", "in_session", "hook"])
def test_crash_after_card_commit_converges(fleet: Fleet, recovery: str) -> None:
    card = fleet.card()
    se = card.se()
    request = card_request(fleet, card, se)
    result = fleet.service.prepare(*request.args(card.uid_hex))
    assert se.rotation.commit(result.ack) == 2
    # ... the device crashes before telling the fleet. Later:
    if recovery == "complete":
        assert fleet.service.complete(card.uid_hex, result.serial) == 2
    elif recovery == "quote":  # the enrollment path sees a verified quote at epoch 2
        quote_key = se.mtls.public_key()
        assert fleet.service.complete_from_quote(card.uid_hex, 2, spki(quote_key)) == 2
        assert fleet.service.complete_from_quote(card.uid_hex, 2, spki(quote_key)) == 2
        assert fleet.service.complete_from_quote(card.uid_hex, 3, spki(quote_key)) is None
    elif recovery == "in_session":  # the enrollment slice, holding the device lock itself
        new_key = spki(se.mtls.public_key())
        with fleet.db.transaction() as session:
            device = DeviceRepository(session).lock_device(card.uid_hex)
            assert device is not None
            assert pending_key_in(session, device) == (2, new_key)
            assert not complete_pending_in(session, device, 3, new_key, now=fleet.clock(), via="t")
            assert complete_pending_in(session, device, 2, new_key, now=fleet.clock(), via="t")
            assert pending_key_in(session, device) is None
    else:  # the gateway sees the new certificate on a new connection
        connection_hook(fleet.service)(_ctx(card.uid_hex, result))
    state = fleet.snapshot()
    for _ in range(2):  # every other path now agrees and changes nothing
        assert fleet.service.complete(card.uid_hex, result.serial) == 2
        assert fleet.service.complete_from_quote(card.uid_hex, 2, spki(se.mtls.public_key())) == 2
        assert on_new_certificate(fleet.service, _ctx(card.uid_hex, result)) is None
    assert fleet.snapshot()[:3] == state[:3]
    device = fleet.device(card.uid_hex)
    assert (device.state, device.key_epoch) == (DeviceState.ACTIVE, 2)
    assert device.identity_spki == spki(se.mtls.public_key())
    (rotation,) = fleet.rotations(card.uid_hex)
    assert rotation.state == "committed"
    live = [c for c in fleet.certificates(card.uid_hex) if c.revoked_at is None]
    assert [c.serial for c in live] == [result.serial]
    assert fleet.actions(card.uid_hex).count("rotation.completed") == 1


def test_complete_refuses_what_is_not_the_pending_rotation(fleet: Fleet) -> None:
    card, other = fleet.card(index=0), fleet.card(index=1)
    (old,) = fleet.certificates(card.uid_hex)
    (foreign,) = fleet.certificates(other.uid_hex)
    before = fleet.snapshot()
    with pytest.raises(DomainError) as err:
        fleet.service.complete(card.uid_hex, foreign.serial)
    assert err.value.code == "rotation.certificate_unknown"
    # The current certificate: nothing pending, nothing to do.
    assert fleet.service.complete(card.uid_hex, old.serial) == 1
    assert fleet.snapshot() == before


def test_a_restarted_rotation_supersedes_the_pending_one(fleet: Fleet) -> None:
    card = fleet.card()
    se = card.se()
    first = fleet.service.prepare(*card_request(fleet, card, se).args(card.uid_hex))
    # The device lost the answer and its state; it starts over (ROTATE replaces the pending key).
    request = card_request(fleet, card, se)
    second = fleet.service.prepare(*request.args(card.uid_hex))
    assert second.serial != first.serial and not second.replayed
    certs = {c.serial: c for c in fleet.certificates(card.uid_hex)}
    assert certs[first.serial].revoked_at is not None
    (rotation,) = fleet.rotations(card.uid_hex)
    assert rotation.state == "pending" and rotation.new_spki == request.proof.public_key_der
    # The first acknowledgement is useless on the card; the second commits.
    with pytest.raises(Exception):  # noqa: B017 - AuthorisationRejectedError
        se.rotation.commit(first.ack)
    assert se.rotation.commit(second.ack) == 2
    assert fleet.service.complete(card.uid_hex, second.serial) == 2
    with pytest.raises(DomainError) as err:
        fleet.service.complete(card.uid_hex, first.serial)
    assert err.value.code == "rotation.certificate_revoked"
    assert "rotation.aborted" in fleet.actions(card.uid_hex)


def test_operator_abort(fleet: Fleet) -> None:
    card = fleet.card()
    se = card.se()
    result = fleet.service.prepare(*card_request(fleet, card, se).args(card.uid_hex))
    assert fleet.service.abort(card.uid_hex, actor="operator:alice") == 2
    device = fleet.device(card.uid_hex)
    assert (device.state, device.key_epoch) == (DeviceState.ACTIVE, 1)
    certs = {c.serial: c for c in fleet.certificates(card.uid_hex)}
    assert certs[result.serial].revoked_at is not None
    with pytest.raises(DomainError) as err:
        fleet.service.abort(card.uid_hex, actor="operator:alice")
    assert err.value.code == "rotation.not_pending"
    # The card drops its pending key; a new rotation at the same epoch works.
    se.rotation.abort()
    again = fleet.service.prepare(*card_request(fleet, card, se).args(card.uid_hex))
    assert se.rotation.commit(again.ack) == 2
    assert fleet.service.complete(card.uid_hex, again.serial) == 2
    assert len(fleet.rotations(card.uid_hex)) == 1


# -- the gateway handlers -------------------------------------------------------------------------
def _ctx(
    uid: str, result: PrepareResult | None = None, cert: x509.Certificate | None = None
) -> Any:
    certificate = result.certificate if result is not None else cert
    assert certificate is not None
    return DeviceContext(uid, certificate, serial_hex(certificate.serial_number))


def _call(routes: Routes, ctx: DeviceContext, path: str, body: dict[str, Any] | None = None) -> Any:
    handler, params = routes.resolve("POST", path)
    raw = json.dumps(body or {}).encode()
    response = handler(ctx, GatewayRequest("POST", path, raw, params=params))
    assert response.status == 200
    return json.loads(response.body)


def test_gateway_endpoints(fleet: Fleet) -> None:
    card, other = fleet.card(index=0), fleet.card(index=1)
    se = card.se()
    routes = Routes()
    register(routes, fleet.service)
    (first,) = fleet.certificates(card.uid_hex)
    ctx = _ctx(card.uid_hex, cert=x509.load_der_x509_certificate(first.der))
    nonce = base64.b64decode(_call(routes, ctx, "/v1/device/rotation/nonce")["nonce"])
    proof = se.rotation.rotate(nonce)
    body = {
        "nonce": base64.b64encode(nonce).decode(),
        "epoch": proof.epoch,
        "new_spki": base64.b64encode(proof.public_key_der).decode(),
        "proof": base64.b64encode(proof.signature).decode(),
        "quote": base64.b64encode(se.attestation.attest(nonce)).decode(),
    }
    # Another device (its own mTLS identity) cannot use this card's rotation.
    (theirs,) = fleet.certificates(other.uid_hex)
    other_ctx = _ctx(other.uid_hex, cert=x509.load_der_x509_certificate(theirs.der))
    with pytest.raises(DomainError) as err:
        _call(routes, other_ctx, "/v1/device/rotation", body)
    assert err.value.code in ("rotation.nonce_wrong_device", "rotation.bad_proof")
    with pytest.raises(DomainError) as err:
        _call(routes, ctx, "/v1/device/rotation", {**body, "uid": other.uid_hex})
    assert err.value.code == "rotation.other_device"
    with pytest.raises(DomainError) as err:
        _call(routes, ctx, "/v1/device/rotation", {**body, "proof": "%%%"})
    assert err.value.code == "request.bad_field"

    answer = _call(routes, ctx, "/v1/device/rotation", body)
    assert answer == _call(routes, ctx, "/v1/device/rotation", body)  # idempotent
    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    chain = x509.load_pem_x509_certificates(answer["chain"].encode())
    assert chain == [fleet.world.keys.issuing.certificate] and answer["epoch"] == 2
    assert se.rotation.commit(base64.b64decode(answer["ack"])) == 2
    new_ctx = _ctx(card.uid_hex, cert=cert)
    assert _call(routes, new_ctx, "/v1/device/rotation/complete") == {"epoch": 2}
    assert fleet.device(card.uid_hex).key_epoch == 2
