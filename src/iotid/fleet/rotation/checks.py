"""The cryptographic checks of a rotation request: the proof of continuity and the quote.

Scope: pure functions, no database:

- :func:`verify_rule`: the signature rule of ``iotid.spec.rotation`` (ECDSA with the curve's hash,
  DER; RSA-PSS SHA-256, MGF1-SHA-256, 32-byte salt);
- :func:`load_spki`: an identity public key from SubjectPublicKeyInfo DER (EC P-256/P-384 or RSA);
- :func:`check_proof`: the proof verifies under the registry's CURRENT identity key over
  ``rotation_tbs(uid, epoch, new SPKI, nonce)``;
- :func:`check_quote`: the attestation quote verified by the enrollment
  :class:`~iotid.fleet.enrollment.verifier.QuoteVerifier` (chain to the issuance root, COSE
  signature by the card's attestation key, the attestation certificate the factory recorded),
  with two adaptations: its lookup answers a ``RegistryCard`` with the registry's CURRENT key
  and epoch (not the manifest's prediction, which a rotation has left behind), and its nonce
  store only compares (the service
  consumes the rotation nonce in its own transaction). Then: the quote's UID is the device's,
  its nonce the rotation nonce, its key epoch the registry's, and its pending-key claim
  (-70006) names exactly the new SPKI.

Why the quote: the mTLS applet's SIGN DIGEST lets a compromised host have the identity key sign
any digest, a forged proof of continuity over a key the attacker made included. Only the
attestation key (which signs nothing but quotes) can say that the new key lives in this card.

Each failure is a :class:`~iotid.fleet.errors.DomainError` with a stable ``rotation.*`` code.
Not in scope: nonces, the registry, issuing anything (``iotid.fleet.rotation.service``).
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotid.crypto import identity_rule
from iotid.fleet.enrollment.nonces import NonceState
from iotid.fleet.enrollment.verdict import Verdict
from iotid.fleet.enrollment.verifier import QuoteVerifier, RegistryCard
from iotid.fleet.errors import Forbidden, InvalidInput
from iotid.spec import rotation as spec
from iotid.spec.algorithms import KeyAlg
from iotid.spec.manifest import ManifestCard

__all__ = [
    "DeviceFacts",
    "PublicKey",
    "check_proof",
    "check_quote",
    "load_spki",
    "spki_of",
    "verify_rule",
]

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class DeviceFacts:
    """What the checks need of the registry's device row (read in the caller's transaction)."""

    uid: str  # upper-case hex
    algorithm: str  # the manifest's spelling: p256, p384, rsa2048, rsa3072
    key_epoch: int
    identity_spki: bytes
    attestation_cert_sha256: str
    batch_ca_sha256: str
    batch_revoked: bool


def spki_of(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_spki(der: bytes) -> PublicKey:
    """An EC (P-256/P-384) or RSA public key; InvalidInput ``rotation.bad_key`` otherwise."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidInput("rotation.bad_key", "new_spki is not a SubjectPublicKeyInfo") from None
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in spec.EC_HASH_BY_CURVE:
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return key
    raise InvalidInput("rotation.bad_key", "new_spki is neither EC P-256/P-384 nor RSA >= 2048")


def verify_rule(key: PublicKey, signature: bytes, message: bytes) -> bool:
    """The signature rule of ``iotid.spec.rotation`` (``iotid.crypto.identity_rule``)."""
    return identity_rule.verify(key, signature, message)


def check_proof(
    current: PublicKey, uid: bytes, epoch: int, new_spki: bytes, nonce: bytes, proof: bytes
) -> None:
    """Forbidden ``rotation.bad_proof`` unless the current key signed this key, epoch, nonce."""
    if not verify_rule(current, proof, spec.rotation_tbs(uid, epoch, new_spki, nonce)):
        raise Forbidden(
            "rotation.bad_proof",
            f"device {uid.hex().upper()}: the proof of continuity does not verify under the "
            "registry's current identity key",
        )


class _CompareOnly:
    """A NonceStore for :class:`QuoteVerifier` that consumes nothing: the verifier has already
    compared the quote's nonce with the one it was given; the service consumes it later."""

    def issue(self, device_hint: str | None = None) -> bytes:  # pragma: no cover - unused
        raise NotImplementedError("rotation nonces are issued by the rotation service")

    def consume(self, nonce: bytes, now: dt.datetime) -> NonceState:
        return NonceState.OK


def check_quote(
    root: x509.Certificate,
    device: DeviceFacts,
    quote: bytes,
    nonce: bytes,
    new_spki: bytes,
    clock: Callable[[], dt.datetime],
) -> Verdict:
    """The accepted verdict, or Forbidden with a ``rotation.quote_*`` code (see module doc)."""
    uid = bytes.fromhex(device.uid)
    current = load_spki(device.identity_spki)
    card = RegistryCard(
        uid=uid,
        identity_public_key=current,
        attestation_cert_sha256=device.attestation_cert_sha256,
        algorithm=KeyAlg.from_name(device.algorithm),
        key_epoch=device.key_epoch,
        batch_revoked=device.batch_revoked,
    )

    def lookup(claimed: bytes) -> ManifestCard | None:
        return card if claimed == uid else None

    def revoked(cert: x509.Certificate) -> bool:
        digest = hashes.Hash(hashes.SHA256())
        digest.update(cert.public_bytes(serialization.Encoding.DER))
        return device.batch_revoked and digest.finalize().hex() == device.batch_ca_sha256

    verdict = QuoteVerifier(root, lookup, revoked, _CompareOnly(), clock).verify(quote, nonce)
    who = f"device {device.uid}"
    if not verdict.ok:
        raise Forbidden("rotation.quote_refused", f"{who}: quote refused ({verdict.reason.value})")
    if verdict.uid != uid:  # the lookup already refuses another UID; belt and braces
        raise Forbidden("rotation.quote_refused", f"{who}: the quote is another card's")
    if verdict.key_epoch != device.key_epoch:
        raise Forbidden(
            "rotation.quote_epoch",
            f"{who}: the quote says epoch {verdict.key_epoch}, the registry {device.key_epoch}",
        )
    pending = verdict.pending_identity_key
    if pending is None:
        raise Forbidden("rotation.quote_no_pending_key", f"{who}: the quote names no pending key")
    if not hmac.compare_digest(spki_of(pending), new_spki):
        raise Forbidden(
            "rotation.quote_pending_mismatch",
            f"{who}: the quote's pending key is not the key to be certified",
        )
    return verdict
