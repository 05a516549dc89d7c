"""The OCSP responder (RFC 6960) of the fleet's issuing CA.

Scope: :class:`OcspResponder.respond` turns DER request bytes into DER response bytes, asking the
registry at once (no status cache, so a revocation is visible to the next request):

- an undecodable request -> ``malformedRequest`` (§2.3), never an exception;
- a CertID whose issuerNameHash/issuerKeyHash (SHA-1, SHA-256, SHA-384 or SHA-512) are not the
  issuing CA's -> ``unauthorized`` (§2.3: we are not authoritative for that issuer);
- a serial the CA issued: ``good``, or ``revoked`` with its time and CRLReason (§4.2.1);
  a serial it never issued: ``unknown``;
- the response echoes the request's CertID, is signed by the issuing CA itself (§4.2.2.2, no
  delegated responder), thisUpdate now, nextUpdate now + 5 minutes, and echoes the nonce
  extension (§4.4.1) when the request has one.

cryptography parses one request per OCSPRequest (the common case; a multi-request message is
answered ``malformedRequest``). Not in scope: HTTP (``api``; RFC 6960 appendix A.1), CRLs.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp

from iotid.fleet.db import Database
from iotid.fleet.issuing import FleetKeys, serial_hex
from iotid.fleet.models import utcnow
from iotid.fleet.revocation.repository import RevocationRepository

__all__ = ["OCSP_NEXT_UPDATE", "OcspResponder"]

_log = logging.getLogger(__name__)
OCSP_NEXT_UPDATE = dt.timedelta(minutes=5)
#: Largest request body looked at (a single-certificate request is about 100 bytes).
MAX_REQUEST_BYTES = 16 * 1024
_HASHES: tuple[hashes.HashAlgorithm, ...] = (
    hashes.SHA1(),  # noqa: S303 (RFC 6960 CertID: SHA-1 is what most clients send)
    hashes.SHA256(),
    hashes.SHA384(),
    hashes.SHA512(),
)


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


class OcspResponder:
    def __init__(
        self, db: Database, keys: FleetKeys, *, clock: Callable[[], dt.datetime] = utcnow
    ) -> None:
        self._db = db
        self._issuing = keys.issuing
        self._clock = clock
        ca = keys.issuing.certificate
        # The CA's CertID hashes (RFC 6960 §4.1.1) for each hash a request may use.
        self._ids = {alg.name: _issuer_hashes(ca, alg) for alg in _HASHES}

    def respond(self, der: bytes) -> bytes:
        """DER OCSPResponse for DER OCSPRequest ``der`` (never raises for bad input)."""
        if not der or len(der) > MAX_REQUEST_BYTES:
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        try:
            request = ocsp.load_der_ocsp_request(der)
            algorithm = request.hash_algorithm
            serial = request.serial_number
            name_hash, key_hash = request.issuer_name_hash, request.issuer_key_hash
            nonce = self._nonce(request)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        expected = self._ids.get(algorithm.name)
        if expected is None or expected != (name_hash, key_hash):
            return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        now = self._clock()
        with self._db.transaction(write=False) as session:
            row = RevocationRepository(session).certificate(
                serial_hex(serial), self._issuing.sha256
            )
            status = ocsp.OCSPCertStatus.UNKNOWN
            revoked_at: dt.datetime | None = None
            reason: x509.ReasonFlags | None = None
            if row is not None and row.revoked_at is None:
                status = ocsp.OCSPCertStatus.GOOD
            elif row is not None:
                status = ocsp.OCSPCertStatus.REVOKED
                revoked_at = row.revoked_at
                reason = _reason_flag(row.reason)
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=name_hash,
            issuer_key_hash=key_hash,
            serial_number=serial,
            algorithm=algorithm,
            cert_status=status,
            this_update=now,
            next_update=now + OCSP_NEXT_UPDATE,
            revocation_time=revoked_at,
            revocation_reason=reason,
        )
        if nonce is not None:
            builder = builder.add_extension(nonce, critical=False)
        return self._issuing.sign_ocsp(builder).public_bytes(serialization.Encoding.DER)

    @staticmethod
    def _nonce(request: ocsp.OCSPRequest) -> x509.OCSPNonce | None:
        try:
            return request.extensions.get_extension_for_class(x509.OCSPNonce).value
        except x509.ExtensionNotFound:
            return None


def _issuer_hashes(ca: x509.Certificate, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
    """issuerNameHash (hash of the CA's subject DER) and issuerKeyHash (hash of the value of the
    BIT STRING subjectPublicKey, excluding tag, length and unused-bits octet)."""
    key = ca.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        key_bits = key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    elif isinstance(key, rsa.RSAPublicKey):
        key_bits = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    else:
        raise ValueError("the issuing CA key is EC or RSA")
    name = hashes.Hash(algorithm)
    name.update(ca.subject.public_bytes())
    bits = hashes.Hash(algorithm)
    bits.update(key_bits)
    return name.finalize(), bits.finalize()


def _reason_flag(reason: str | None) -> x509.ReasonFlags | None:
    """The CRLReason to state; None for unspecified (RFC 5280 §5.3.1: omit it)."""
    if reason is None:
        return None
    try:
        flag = x509.ReasonFlags(reason)
    except ValueError:
        _log.warning("certificate with an unknown revocation reason; stated as unspecified")
        return None
    return None if flag is x509.ReasonFlags.unspecified else flag
