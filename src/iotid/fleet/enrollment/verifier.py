"""The enrollment quote verifier: an attestation quote in, a typed Verdict out.

Scope: pure logic, python-tuf style: no I/O, no database. What it needs from the world comes in
as callables: the issuance root certificate, a manifest lookup by UID, a revocation predicate on
certificates, a :class:`~iotid.fleet.enrollment.nonces.NonceStore` and a clock. The quote is
the attestation applet's tagged COSE_Sign1 EAT (``iotid.spec.attestation``). The checks run in
this order, the cheap and unauthenticated first, anything that asks a store last, and the nonce
is consumed only for a quote a card of the root's hierarchy signed (so garbage cannot burn a
device's nonce); each failure is a :class:`~iotid.fleet.enrollment.verdict.Reason`:

1. structure and 2. headers (``iotid.fleet.enrollment.quote``): one tagged COSE_Sign1 in
   deterministic encoding, an empty unprotected header (x5chain there is refused even when it
   is also protected), alg and x5chain from the PROTECTED header only;
3. chain: leaf -> batch CA -> the configured root (RFC 5280 §6.1): issuer names and signatures
   (``verify_directly_issued_by``), SHA-2 and RSA >= 2048 only, validity dates at ``clock()``
   (the root's too), basicConstraints (cA on both CAs, pathLenConstraint respected, the leaf
   not a CA), keyUsage present (keyCertSign on CAs, digitalSignature on the leaf), no unknown
   critical extension, then ``revoked`` asked about EVERY certificate, the root included;
4. the COSE signature with the leaf key under the protected algorithm (RFC 9052 §4.4);
5. claims: the profile, the claim set's shape, the nonce equal to the one given, then consumed;
6. the manifest (deny by default): the UID listed, the leaf being the very certificate the
   factory recorded for that UID, the identity algorithm and (EC batches) the identity public
   key equal to the manifest's, the card provisioned. RSA batches have no predicted key: the
   quote is accepted and the verdict says so (``identity_key_predicted`` False);
7. the registry, when the lookup answers a :class:`RegistryCard` (the fleet's record rather than
   the bare manifest entry): the identity key compared in 6 is the registry's CURRENT key (the
   manifest's prediction until a rotation replaced it; for an RSA batch the key recorded at the
   first enrollment, none before), the quote's key epoch must equal the registry's once the
   device has enrolled (``key_epoch`` > 0), and a revoked device or a device of a revoked batch
   is refused (``device_revoked``, ``batch_revoked``).

``verify`` never raises on bad input. Exceptions raised by the injected callables (a database
outage) propagate: an outage is not a verdict about the device.

Not covered: issuing the client certificate, the registry and its state machine, rotation proofs
(later), OCSP/CRL fetching (``revoked`` is the caller's), which key is current after a rotation (the
lookup decides which key is current: a :class:`RegistryCard` carries it), the lifecycle states
other than revoked (the enrollment service decides about retired and rotating devices).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

from iotid.crypto import cose
from iotid.fleet.enrollment.nonces import NonceState, NonceStore
from iotid.fleet.enrollment.quote import (
    CERT_PARSE_ERRORS,
    QuoteClaims,
    decode_quote,
    parse_claims,
    protected_alg,
    x5chain,
)
from iotid.fleet.enrollment.verdict import QuoteRefusedError, Reason, Verdict
from iotid.spec.manifest import ManifestCard

__all__ = ["QuoteVerifier", "RegistryCard"]

_SHA2 = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_MIN_RSA_BITS = 2048
#: RFC 5280 §6.1.4 (o): the critical extensions this walk processes.
_UNDERSTOOD = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})
_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_NONCE_REASONS = {
    NonceState.UNKNOWN: Reason.NONCE_UNKNOWN,
    NonceState.REUSED: Reason.NONCE_REUSED,
    NonceState.EXPIRED: Reason.NONCE_EXPIRED,
}


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class RegistryCard(ManifestCard):
    """The fleet registry's record of a card: the manifest entry with the CURRENT identity key
    (``identity_public_key``: the manifest's prediction, the rotated key after a rotation, for
    RSA the key recorded at enrollment or None before), the registry's key epoch (0: never
    enrolled, any epoch is taken; then the quote must claim exactly this one) and whether the
    device or its batch is revoked."""

    key_epoch: int = 0
    device_revoked: bool = False
    batch_revoked: bool = False


class QuoteVerifier:
    """Verifies enrollment quotes against one issuance root (see the module docstring)."""

    def __init__(
        self,
        root: x509.Certificate,
        manifest_lookup: Callable[[bytes], ManifestCard | None],
        revoked: Callable[[x509.Certificate], bool],
        nonces: NonceStore,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self._root = root
        self._lookup = manifest_lookup
        self._revoked = revoked
        self._nonces = nonces
        self._clock = clock

    def verify(self, quote: bytes, nonce: bytes) -> Verdict:
        """Check ``quote`` answering ``nonce`` (issued by the nonce store); consumes the nonce
        once the quote is known to come from a card of the root's hierarchy."""
        now = _aware(self._clock())
        chain: tuple[x509.Certificate, ...] = ()
        uid: bytes | None = None
        try:
            message = decode_quote(quote)
            alg = protected_alg(message)
            leaf, ca = x5chain(message)
            chain = self._walk(leaf, ca, now)
            _check_signature(message, alg, leaf)
            claims = parse_claims(message.payload)
            uid = claims.uid
            self._consume(claims, nonce, now)
            predicted = self._match_manifest(claims, leaf)
        except QuoteRefusedError as refusal:
            authenticated = uid is not None
            return Verdict(
                refusal.reason, refusal.detail, uid=uid, chain=chain if authenticated else ()
            )
        return _accepted(claims, predicted, chain)

    # -- 3. the chain (RFC 5280 §6.1) ----------------------------------------------------------
    def _walk(
        self, leaf: x509.Certificate, ca: x509.Certificate, now: dt.datetime
    ) -> tuple[x509.Certificate, ...]:
        path = (
            (leaf, "attestation certificate", Reason.REVOKED_ATTESTATION_CERT),
            (ca, "batch CA certificate", Reason.REVOKED_BATCH_CA),
            (self._root, "issuance root certificate", Reason.REVOKED_ROOT),
        )
        for (child, child_role, _), (issuer, issuer_role, _) in itertools.pairwise(path):
            _check_algorithms(child, child_role)
            try:  # §6.1.3 (a)(1) signature, (a)(4) issuer name
                child.verify_directly_issued_by(issuer)
            except (*CERT_PARSE_ERRORS, InvalidSignature):
                raise QuoteRefusedError(
                    Reason.CHAIN_UNTRUSTED, f"the {child_role} was not issued by the {issuer_role}"
                ) from None
        for cert, role, _ in path:  # §6.1.3 (a)(2)
            if now < cert.not_valid_before_utc:
                raise QuoteRefusedError(
                    Reason.CERT_NOT_YET_VALID,
                    f"the {role} is valid from {cert.not_valid_before_utc.isoformat()}",
                )
            if now > cert.not_valid_after_utc:
                raise QuoteRefusedError(
                    Reason.CERT_EXPIRED,
                    f"the {role} expired at {cert.not_valid_after_utc.isoformat()}",
                )
        for depth, (cert, role, _) in enumerate(path):
            # Non-self-issued intermediate CAs between this certificate and the leaf (§6.1.4 (l)).
            below = sum(1 for c, _, _ in path[1:depth] if c.subject != c.issuer)
            _check_profile(cert, role, is_ca=depth > 0, below=below)
        for cert, role, reason in path:  # §6.1.3 (a)(3): every certificate, the root included
            if self._revoked(cert):
                raise QuoteRefusedError(reason, f"the {role} is revoked")
        return leaf, ca, self._root

    # -- 5. nonce -------------------------------------------------------------------------------
    def _consume(self, claims: QuoteClaims, nonce: bytes, now: dt.datetime) -> None:
        if not isinstance(nonce, bytes) or not hmac.compare_digest(claims.nonce, nonce):
            raise QuoteRefusedError(Reason.NONCE_MISMATCH, "the quote answers another nonce")
        state = self._nonces.consume(nonce, now)
        if state is not NonceState.OK:
            reason = _NONCE_REASONS.get(state, Reason.NONCE_UNKNOWN)
            raise QuoteRefusedError(reason, f"the nonce is {state.value}")

    # -- 6. the manifest (deny by default) ------------------------------------------------------
    def _match_manifest(self, claims: QuoteClaims, leaf: x509.Certificate) -> bool:
        """True when the identity key was predicted (EC), False for an RSA batch."""
        uid_hex = claims.uid.hex().upper()
        card = self._lookup(claims.uid)
        if card is None or card.uid != claims.uid:
            raise QuoteRefusedError(Reason.UID_NOT_IN_MANIFEST, f"card {uid_hex} is in no manifest")
        fingerprint = hashlib.sha256(leaf.public_bytes(_DER)).hexdigest()
        if not hmac.compare_digest(fingerprint, card.attestation_cert_sha256):
            raise QuoteRefusedError(
                Reason.ATTESTATION_CERT_MISMATCH,
                f"card {uid_hex}: the attestation certificate is not the one the factory issued",
            )
        if card.algorithm is not claims.identity_alg:
            raise QuoteRefusedError(
                Reason.IDENTITY_KEY_MISMATCH,
                f"card {uid_hex}: identity algorithm {claims.identity_alg.name}, "
                f"the manifest says {card.algorithm.name}",
            )
        expected = card.identity_public_key
        if expected is None and not card.algorithm.is_rsa:
            raise QuoteRefusedError(
                Reason.IDENTITY_KEY_MISMATCH, f"card {uid_hex}: the manifest predicts no key"
            )
        if expected is not None and not hmac.compare_digest(
            expected.public_bytes(_DER, _SPKI), claims.identity_key.public_bytes(_DER, _SPKI)
        ):
            whose = "registry's current one" if isinstance(card, RegistryCard) else "manifest's"
            raise QuoteRefusedError(
                Reason.IDENTITY_KEY_MISMATCH,
                f"card {uid_hex}: the identity key (epoch {claims.key_epoch}) is not the {whose}",
            )
        if not claims.provisioned:
            raise QuoteRefusedError(Reason.NOT_PROVISIONED, f"card {uid_hex} is not provisioned")
        if isinstance(card, RegistryCard):
            _match_registry(card, claims, uid_hex)
        return expected is not None


def _match_registry(card: RegistryCard, claims: QuoteClaims, uid_hex: str) -> None:
    """7. the registry's epoch and revocation state (the key itself was compared in 6)."""
    if card.batch_revoked:
        raise QuoteRefusedError(Reason.BATCH_REVOKED, f"card {uid_hex}: its batch is revoked")
    if card.device_revoked:
        raise QuoteRefusedError(Reason.DEVICE_REVOKED, f"device {uid_hex} is revoked")
    if card.key_epoch > 0 and claims.key_epoch != card.key_epoch:
        raise QuoteRefusedError(
            Reason.KEY_EPOCH_MISMATCH,
            f"card {uid_hex}: key epoch {claims.key_epoch}, the registry's is {card.key_epoch}",
        )


# -- 3. certificate checks -----------------------------------------------------------------------
def _check_algorithms(cert: x509.Certificate, role: str) -> None:
    try:
        digest = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        digest = None
    key = cert.public_key()
    if not isinstance(digest, _SHA2) or (
        isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS
    ):
        raise QuoteRefusedError(
            Reason.CHAIN_UNTRUSTED, f"the {role} uses a weak or unknown algorithm"
        )


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _check_profile(cert: x509.Certificate, role: str, *, is_ca: bool, below: int) -> None:
    constraints = _extension(cert, x509.BasicConstraints)
    if is_ca:  # §6.1.4 (k), (l)
        if constraints is None or not constraints.ca:
            raise QuoteRefusedError(
                Reason.CA_CONSTRAINTS, f"the {role} is not a CA (basicConstraints)"
            )
        if constraints.path_length is not None and constraints.path_length < below:
            raise QuoteRefusedError(
                Reason.CA_CONSTRAINTS,
                f"the {role} allows {constraints.path_length} intermediate CAs, the path has "
                f"{below}",
            )
    elif constraints is not None and constraints.ca:
        raise QuoteRefusedError(Reason.CA_CONSTRAINTS, f"the {role} is a CA certificate")
    usage = _extension(cert, x509.KeyUsage)  # §6.1.4 (n), RFC 5280 §4.2.1.3
    if usage is None:
        raise QuoteRefusedError(Reason.KEY_USAGE, f"the {role} has no keyUsage")
    if is_ca and not usage.key_cert_sign:
        raise QuoteRefusedError(Reason.KEY_USAGE, f"the {role} may not sign certificates")
    if not is_ca and not usage.digital_signature:
        raise QuoteRefusedError(Reason.KEY_USAGE, f"the {role} may not make signatures")
    for ext in cert.extensions:  # §6.1.4 (o)
        if ext.critical and ext.oid not in _UNDERSTOOD:
            raise QuoteRefusedError(
                Reason.CRITICAL_EXTENSION,
                f"the {role} has an unsupported critical extension {ext.oid.dotted_string}",
            )


# -- 4. the signature ------------------------------------------------------------------------------
def _check_signature(message: cose.Sign1, alg: cose.CoseAlg, leaf: x509.Certificate) -> None:
    key = leaf.public_key()
    if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise QuoteRefusedError(
            Reason.ALG_KEY_MISMATCH, f"{alg.name} does not fit the attestation key"
        )
    try:
        valid = cose.verify_sign1(message, key)
    except cose.CoseError:
        raise QuoteRefusedError(
            Reason.ALG_KEY_MISMATCH, f"{alg.name} does not fit the attestation key"
        ) from None
    if not valid:
        raise QuoteRefusedError(Reason.BAD_SIGNATURE, "the quote's signature does not verify")


def _accepted(claims: QuoteClaims, predicted: bool, chain: tuple[x509.Certificate, ...]) -> Verdict:
    how = (
        "identity key equals the manifest's"
        if predicted
        else "RSA batch: the identity key is not predictable; trusted through the quote alone"
    )
    return Verdict(
        Reason.OK,
        f"card {claims.uid.hex().upper()} attested; {how}",
        uid=claims.uid,
        identity_public_key=claims.identity_key,
        identity_alg=claims.identity_alg,
        identity_key_predicted=predicted,
        key_epoch=claims.key_epoch,
        firmware_floor=claims.firmware_floor,
        pending_identity_key=claims.pending_identity_key,
        chain=chain,
    )
