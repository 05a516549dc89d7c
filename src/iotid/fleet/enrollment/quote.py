"""Parsing an attestation quote for the fleet: structure, headers, x5chain and claims.

Scope: the shape checks of the quote format (``iotid.spec.attestation``), each failure a
:class:`~iotid.fleet.enrollment.verdict.QuoteRefusedError` with its
:class:`~iotid.fleet.enrollment.verdict.Reason`:

- :func:`decode_quote`: one tagged COSE_Sign1 (RFC 9052 §4.2) at most :data:`MAX_QUOTE_LEN`
  bytes, in deterministic encoding (RFC 8949 §4.2.1: the card writes it so, and then a quote
  has exactly one byte string), an empty unprotected header (x5chain there is refused even when
  the protected header has it too: it is not signed, RFC 9360 §2; any other unprotected
  parameter is refused as well, nothing unauthenticated rides along in our profile);
- :func:`protected_alg` and :func:`x5chain`: no ``crit``, the algorithm and
  ``[attestation certificate, batch CA certificate]`` from the PROTECTED header only, both
  certificates parsed;
- :func:`parse_claims`: the EAT claims (after the signature has verified): the profile first,
  then types, lengths, the UEID derived from the UID (RFC 9711 §4.2.1), the cnf COSE_Key (RFC
  8747 §3.1) of the claimed identity algorithm, the pending key of a rotation if any.

Nothing here decides trust: no signature, chain, nonce or manifest check
(``iotid.fleet.enrollment.verifier``). Must not import ``iotid.host`` (the device's decoder).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa

from iotid.crypto import cose
from iotid.fleet.enrollment.verdict import PublicKey, QuoteRefusedError, Reason
from iotid.spec import attestation as spec
from iotid.spec.algorithms import KeyAlg
from iotid.spec.attestation import Claim
from iotid.spec.manifest import IDENTITY_ALG_NAMES

__all__ = [
    "CERT_PARSE_ERRORS",
    "MAX_QUOTE_LEN",
    "QuoteClaims",
    "decode_quote",
    "parse_claims",
    "protected_alg",
    "x5chain",
]

#: Two certificates at the applet's limit plus claims, headers and an RSA-3072 signature.
MAX_QUOTE_LEN = 2 * spec.CERT_MAX_LEN + 4096
#: What ``cryptography`` raises on a certificate that does not parse (not all are ValueErrors).
CERT_PARSE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)
_MAX_UID_LEN = 32  # the manifest's UID pattern: 1 to 32 bytes


@dataclass(frozen=True)
class QuoteClaims:
    """The claims of a quote, typed (``iotid.spec.attestation.Claim``)."""

    nonce: bytes
    uid: bytes
    identity_key: PublicKey
    identity_alg: KeyAlg
    provisioned: bool
    key_epoch: int
    firmware_floor: int
    pending_identity_key: PublicKey | None


def _refuse(reason: Reason, detail: str) -> QuoteRefusedError:
    return QuoteRefusedError(reason, detail)


# -- structure and headers ----------------------------------------------------------------------
def decode_quote(quote: bytes) -> cose.Sign1:
    """The COSE_Sign1 of a quote (structure and unprotected header only)."""
    if not isinstance(quote, bytes):
        raise _refuse(Reason.MALFORMED, "the quote is not a byte string")
    if len(quote) > MAX_QUOTE_LEN:
        raise _refuse(Reason.MALFORMED, f"the quote is longer than {MAX_QUOTE_LEN} bytes")
    try:
        message = cose.decode_sign1(quote, require_tag=True)
    except cose.CoseError as exc:
        if _x5chain_unprotected(quote):  # decode_sign1 refuses a label in both headers
            raise _refuse(Reason.X5CHAIN_UNPROTECTED, "x5chain in the unprotected header") from None
        raise _refuse(Reason.MALFORMED, f"not a tagged COSE_Sign1: {exc}") from None
    if cose.HeaderLabel.X5CHAIN in message.unprotected:
        raise _refuse(Reason.X5CHAIN_UNPROTECTED, "x5chain in the unprotected header")
    if message.unprotected:
        raise _refuse(
            Reason.UNPROTECTED_HEADER,
            f"{len(message.unprotected)} parameter(s) in the unprotected header",
        )
    body = [message.protected_bytes, {}, message.payload, message.signature]
    if cbor2.dumps(cbor2.CBORTag(cose.SIGN1_TAG, body), canonical=True) != quote:
        raise _refuse(Reason.MALFORMED, "not in deterministic encoding (RFC 8949 §4.2.1)")
    return message


def _x5chain_unprotected(quote: bytes) -> bool:
    try:
        item = cose.decode_cbor(quote)
    except cose.CoseError:
        return False
    if getattr(item, "tag", cose.SIGN1_TAG) != cose.SIGN1_TAG:
        return False
    value = getattr(item, "value", item)
    return (
        isinstance(value, list)
        and len(value) == 4
        and isinstance(value[1], Mapping)
        and cose.HeaderLabel.X5CHAIN in value[1]
    )


def protected_alg(message: cose.Sign1) -> cose.CoseAlg:
    """The signature algorithm, from the protected header (RFC 9052 §3.1); no ``crit``."""
    if cose.HeaderLabel.CRIT in message.protected:
        raise _refuse(Reason.CRIT_UNSUPPORTED, "critical header parameters are not supported")
    value = message.protected.get(cose.HeaderLabel.ALG)
    if value is None:
        raise _refuse(Reason.ALG_MISSING, "no algorithm in the protected header")
    try:
        return message.alg
    except cose.CoseError:
        raise _refuse(
            Reason.ALG_UNSUPPORTED, "the algorithm is not ES256, ES384 or PS256"
        ) from None


def x5chain(message: cose.Sign1) -> tuple[x509.Certificate, x509.Certificate]:
    """(attestation certificate, batch CA certificate) from the protected x5chain (RFC 9360)."""
    value = message.protected.get(cose.HeaderLabel.X5CHAIN)
    if value is None:
        raise _refuse(Reason.X5CHAIN_MISSING, "no x5chain in the protected header")
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, bytes) for v in value)
    ):
        raise _refuse(
            Reason.X5CHAIN_MALFORMED, "x5chain is not [attestation certificate, batch CA]"
        )
    certs: list[x509.Certificate] = []
    for der, role in zip(value, ("attestation certificate", "batch CA certificate"), strict=True):
        try:
            cert = x509.load_der_x509_certificate(der)
            _ = cert.extensions, cert.public_key()  # parse now: malformed is malformed
        except CERT_PARSE_ERRORS:
            raise _refuse(Reason.X5CHAIN_MALFORMED, f"the {role} does not parse") from None
        certs.append(cert)
    return certs[0], certs[1]


# -- claims ---------------------------------------------------------------------------------------
def parse_claims(payload: bytes) -> QuoteClaims:
    """The typed claims; PROFILE_UNKNOWN or CLAIMS_MALFORMED otherwise."""
    try:
        claims = cose.decode_cbor(payload)
    except cose.CoseError:
        raise _refuse(Reason.CLAIMS_MALFORMED, "the payload is not CBOR") from None
    if not isinstance(claims, Mapping):
        raise _refuse(Reason.CLAIMS_MALFORMED, "the payload is not a claims map")
    profile = claims.get(Claim.PROFILE)  # RFC 9711 §4.3.2: what the other claims mean
    if not isinstance(profile, str) or profile != spec.PROFILE:
        raise _refuse(Reason.PROFILE_UNKNOWN, "not an eat_profile this verifier knows")
    nonce = _typed(claims, Claim.NONCE, bytes)
    uid = _typed(claims, Claim.UID, bytes)
    if not spec.NONCE_MIN <= len(nonce) <= spec.NONCE_MAX or not 1 <= len(uid) <= _MAX_UID_LEN:
        raise _refuse(Reason.CLAIMS_MALFORMED, "nonce or UID of a wrong length")
    if _typed(claims, Claim.UEID, bytes) != spec.ueid_for_uid(uid):
        raise _refuse(Reason.CLAIMS_MALFORMED, "the UEID is not the UID's (RFC 9711 §4.2.1)")
    code = _unsigned(claims, Claim.IDENTITY_ALG)
    identity_alg = next((alg for alg in IDENTITY_ALG_NAMES if alg == code), None)
    if identity_alg is None:
        raise _refuse(Reason.CLAIMS_MALFORMED, "unknown identity algorithm")
    cnf = _typed(claims, Claim.CNF, Mapping)
    pending = claims.get(Claim.PENDING_IDENTITY_KEY)
    return QuoteClaims(
        nonce=nonce,
        uid=uid,
        identity_key=_cose_key(cnf.get(spec.CNF_COSE_KEY), identity_alg),
        identity_alg=identity_alg,
        provisioned=_typed(claims, Claim.PROVISIONED, bool),
        key_epoch=_unsigned(claims, Claim.KEY_EPOCH),
        firmware_floor=_unsigned(claims, Claim.FIRMWARE_FLOOR),
        pending_identity_key=None if pending is None else _cose_key(pending, identity_alg),
    )


def _typed(claims: Mapping[Any, Any], key: Claim, kind: type) -> Any:
    value = claims.get(key)
    if not isinstance(value, kind):
        raise _refuse(Reason.CLAIMS_MALFORMED, f"claim {key.name.lower()} missing or mistyped")
    return value


def _unsigned(claims: Mapping[Any, Any], key: Claim) -> int:
    value = _typed(claims, key, int)
    if isinstance(value, bool) or value < 0 or value.bit_length() > 64:
        raise _refuse(Reason.CLAIMS_MALFORMED, f"claim {key.name.lower()} is not a uint")
    return int(value)


def _cose_key(value: Any, alg: KeyAlg) -> PublicKey:
    """A COSE_Key of the identity algorithm (its curve, or its modulus size)."""
    try:
        if not isinstance(value, Mapping):
            raise cose.CoseError("not a map")
        key = cose.public_key_from_cose_key(value)
    except cose.CoseError:
        raise _refuse(Reason.CLAIMS_MALFORMED, "cnf does not hold a valid COSE_Key") from None
    if isinstance(key, rsa.RSAPublicKey) != alg.is_rsa or key.key_size != alg.size_bits:
        raise _refuse(Reason.CLAIMS_MALFORMED, f"the identity key is not {alg.name}")
    return key
