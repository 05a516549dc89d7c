"""Refusals of the fleet's rotation slice with real cards, on SQLite and PostgreSQL.

Scope: the negative matrix: a proof by the wrong key or over another nonce, epoch skipping, a
reused, foreign, unknown or expired nonce, a quote without a pending-key claim or naming another
key (a compromised host forging a valid proof with SIGN DIGEST: only the quote stops it), another
card's or a tampered quote, a revoked device or batch, a manufactured device, malformed input.
Each refusal leaves the registry (devices, rotations, certificates, nonces, revocation events)
unchanged and, for a known device, is audited as ``rotation.refused``.

Not covered: the accepted path and crash safety (test_rotation_service.py, whose fixtures and
helpers this module reuses).
"""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import update
from test_rotation_service import (  # the module-scoped world is built again for this module
    T0,
    Fleet,
    Request,
    _sign,
    card_request,
    fleet,
    refused,
    spki,
    world,
)

from iotid.fleet.errors import DomainError
from iotid.fleet.models import Batch, Device, DeviceState
from iotid.spec.rotation import rotation_tbs

__all__ = ["fleet", "world"]  # fixtures, re-registered for this module


# -- the negative matrix --------------------------------------------------------------------------
def test_proof_by_the_wrong_key(fleet: Fleet) -> None:
    card = fleet.card()
    request = card_request(fleet, card, card.se())
    uid, nonce, epoch, new, _proof, quote = request.args(card.uid_hex)
    rogue = ec.generate_private_key(ec.SECP256R1())
    forged = _sign(rogue, rotation_tbs(card.uid, epoch, new, nonce))
    refused(fleet, "rotation.bad_proof", uid, nonce, epoch, new, forged, quote)
    assert fleet.actions(card.uid_hex)[-1] == "rotation.refused"


def test_proof_over_another_nonce(fleet: Fleet) -> None:
    card = fleet.card()
    se = card.se()
    n1 = fleet.service.new_nonce(card.uid_hex)
    n2 = fleet.service.new_nonce(card.uid_hex)
    proof = se.rotation.rotate(n2)
    quote = se.attestation.attest(n1)
    refused(
        fleet,
        "rotation.bad_proof",
        card.uid_hex,
        n1,
        2,
        proof.public_key_der,
        proof.signature,
        quote,
    )


def test_epoch_skipping(fleet: Fleet) -> None:
    card = fleet.card()
    request = card_request(fleet, card, card.se())
    uid, nonce, _epoch, new, proof, quote = request.args(card.uid_hex)
    refused(fleet, "rotation.bad_epoch", uid, nonce, 3, new, proof, quote)
    refused(fleet, "rotation.bad_epoch", uid, nonce, 1, new, proof, quote)


def test_reused_nonce(fleet: Fleet) -> None:
    card = fleet.card()
    se = card.se()
    request = card_request(fleet, card, se)
    fleet.service.prepare(*request.args(card.uid_hex))
    assert fleet.service.abort(card.uid_hex, actor="operator:alice") == 2
    assert fleet.device(card.uid_hex).state == DeviceState.ACTIVE
    # The card starts again, but with the nonce already used.
    proof = se.rotation.rotate(request.nonce)
    again = Request(request.nonce, proof, se.attestation.attest(request.nonce))
    refused(fleet, "rotation.nonce_reused", *again.args(card.uid_hex))


def test_nonce_of_another_device_unknown_or_expired(fleet: Fleet) -> None:
    card, other = fleet.card(index=0), fleet.card(index=1)
    se = card.se()
    foreign = fleet.service.new_nonce(other.uid_hex)
    proof = se.rotation.rotate(foreign)
    request = Request(foreign, proof, se.attestation.attest(foreign))
    refused(fleet, "rotation.nonce_wrong_device", *request.args(card.uid_hex))
    unknown = bytes(32)
    proof = se.rotation.rotate(unknown)
    request = Request(unknown, proof, se.attestation.attest(unknown))
    refused(fleet, "rotation.nonce_unknown", *request.args(card.uid_hex))
    request = card_request(fleet, card, se)
    fleet.clock.now += dt.timedelta(seconds=301)
    refused(fleet, "rotation.nonce_expired", *request.args(card.uid_hex))


def test_quote_without_pending_claim(fleet: Fleet) -> None:
    card = fleet.card()
    se = card.se()
    nonce = fleet.service.new_nonce(card.uid_hex)
    quote = se.attestation.attest(nonce)  # before ROTATE: no pending key
    proof = se.rotation.rotate(nonce)
    refused(
        fleet, "rotation.quote_no_pending_key", *Request(nonce, proof, quote).args(card.uid_hex)
    )


@pytest.mark.parametrize("rotated", [True, False])
def test_compromised_host_forges_a_proof_with_sign_digest(fleet: Fleet, rotated: bool) -> None:
    """SIGN DIGEST lets a compromised host make the identity key sign a valid proof for a key
    the attacker holds; the quote (attestation key) cannot be forged, and it names the card's
    real pending key (or none): refused."""
    card = fleet.card()
    se = card.se()
    nonce = fleet.service.new_nonce(card.uid_hex)
    if rotated:
        se.rotation.rotate(nonce)
    attacker = ec.generate_private_key(ec.SECP256R1())
    tbs = rotation_tbs(card.uid, 2, spki(attacker.public_key()), nonce)
    forged = se.mtls.sign_digest(hashlib.sha256(tbs).digest(), "sha256", "ecdsa")
    old_key = se.mtls.public_key()
    assert isinstance(old_key, ec.EllipticCurvePublicKey)
    old_key.verify(forged, tbs, ec.ECDSA(hashes.SHA256()))  # the forgery IS a valid proof
    quote = se.attestation.attest(nonce)
    code = "rotation.quote_pending_mismatch" if rotated else "rotation.quote_no_pending_key"
    refused(fleet, code, card.uid_hex, nonce, 2, spki(attacker.public_key()), forged, quote)


def test_quote_of_another_card_or_tampered(fleet: Fleet) -> None:
    card, other = fleet.card(index=0), fleet.card(index=1)
    se, other_se = card.se(), other.se()
    request = card_request(fleet, card, se)
    uid, nonce, epoch, new, proof, quote = request.args(card.uid_hex)
    other_se.rotation.rotate(nonce)
    foreign_quote = other_se.attestation.attest(nonce)
    refused(fleet, "rotation.quote_refused", uid, nonce, epoch, new, proof, foreign_quote)
    tampered = bytearray(quote)
    tampered[-5] ^= 1
    refused(fleet, "rotation.quote_refused", uid, nonce, epoch, new, proof, bytes(tampered))
    # The quote over another nonce.
    other_nonce = fleet.service.new_nonce(card.uid_hex)
    late = se.attestation.attest(other_nonce)
    refused(fleet, "rotation.quote_refused", uid, nonce, epoch, new, proof, late)


@pytest.mark.parametrize("what", ["device", "batch"])
def test_revoked_device_or_batch(fleet: Fleet, what: str) -> None:
    card = fleet.card()
    request = card_request(fleet, card, card.se())
    with fleet.db.transaction() as s:
        if what == "device":
            s.execute(
                update(Device)
                .where(Device.uid == card.uid_hex)
                .values(state=DeviceState.REVOKED, revoked_at=T0)
            )
        else:
            s.execute(update(Batch).where(Batch.name == card.batch).values(revoked_at=T0))
    refused(fleet, f"rotation.{what}_revoked", *request.args(card.uid_hex))
    with pytest.raises(DomainError) as err:
        fleet.service.new_nonce(card.uid_hex)
    assert err.value.code == f"rotation.{what}_revoked"


def test_unknown_device_and_malformed_requests(fleet: Fleet) -> None:
    card = fleet.card()
    request = card_request(fleet, card, card.se())
    uid, nonce, epoch, new, proof, quote = request.args(card.uid_hex)
    refused(fleet, "device.not_found", "00" * 10, nonce, epoch, new, proof, quote)
    refused(fleet, "rotation.bad_key", uid, nonce, epoch, b"not a key", proof, quote)
    refused(fleet, "rotation.bad_nonce", uid, b"short", epoch, new, proof, quote)
    refused(fleet, "rotation.bad_request", uid, nonce, epoch, new, b"", quote)
    refused(fleet, "rotation.quote_refused", uid, nonce, epoch, new, proof, b"\xa0")


def test_a_manufactured_device_cannot_rotate(fleet: Fleet) -> None:
    card = fleet.world.batches["p256-r"].cards[2].copy(fleet.tmp / "fresh")
    se = card.se()
    nonce = fleet.service.new_nonce(card.uid_hex)
    proof = se.rotation.rotate(nonce)
    request = Request(nonce, proof, se.attestation.attest(nonce))
    refused(fleet, "device.wrong_state", *request.args(card.uid_hex))
