"""Host session of the attestation applet, its personalisation DGIs, and the quote decoder.

Scope: :class:`AttestationSession` (SELECT, ATTEST, GET ATTESTATION KEY) over the shared
:class:`~iotid.host.protocol.SmartCardProtocol` (long quotes come back through 61xx / GET RESPONSE,
which the protocol collects), the typed errors for the status words it understands, the DGI
builders the personalisation routine sends (:func:`perso_dgis_generate`,
:func:`perso_dgis_certificates`), and :func:`decode_quote`, which turns a quote into Python
values for callers.

Not covered: *verification* of a quote (signature, chain to the issuance root, dates,
revocation, nonce freshness): that is the fleet's attestation verifier (issue 5), and
:func:`decode_quote` deliberately trusts nothing it returns. The card side lives in
``iotid.se.applets.attestation``, the vocabulary in ``iotid.spec.attestation``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotid.apdu import ApduError, CommandApdu
from iotid.crypto import cose
from iotid.host.errors import BadResponseError, HostError
from iotid.host.protocol import SmartCardProtocol
from iotid.spec import attestation as spec
from iotid.spec.algorithms import KeyAlg
from iotid.spec.attestation import Claim, Dgi, Ins
from iotid.spec.identity import CLA_IOTID
from iotid.spec.iso7816 import EXTENDED_MAX_LE, SHORT_MAX_DATA, SHORT_MAX_LE, SW

__all__ = [
    "AttestationError",
    "AttestationKeyUnavailableError",
    "AttestationSession",
    "AttestationUnavailableError",
    "InvalidNonceError",
    "PublicKey",
    "Quote",
    "QuoteFormatError",
    "decode_quote",
    "perso_dgis_certificates",
    "perso_dgis_generate",
]

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class AttestationError(HostError):
    """Base of the attestation session's typed errors."""


class AttestationUnavailableError(AttestationError):
    """ATTEST answered 6985: the applet is not personalised, or no identity key is active."""


class InvalidNonceError(AttestationError, ValueError):
    """ATTEST answered 6700: the nonce must be 8 to 64 bytes (RFC 9711 §4.1)."""


class AttestationKeyUnavailableError(AttestationError):
    """GET ATTESTATION KEY refused: already personalised (6985) or no key generated (6A88)."""


class QuoteFormatError(AttestationError, ValueError):
    """The bytes are not a quote of our profile (structure or claim types)."""


# -- personalisation DGIs ----------------------------------------------------------------------
def perso_dgis_generate(alg: KeyAlg) -> list[tuple[int, bytes]]:
    """Phase 1: DGI 0201, the card generates its attestation key pair (send without last block)."""
    if alg not in spec.ATTESTATION_ALGS:
        raise ValueError(f"{alg.name} is not an attestation key algorithm")
    return [(Dgi.KEY_ALG, bytes([alg]))]


def perso_dgis_certificates(att_cert_der: bytes, batch_ca_der: bytes) -> list[tuple[int, bytes]]:
    """Phase 2: DGI 0202 (attestation certificate) and 0203 (batch CA certificate), DER."""
    for der in (att_cert_der, batch_ca_der):
        if not der or len(der) > spec.CERT_MAX_LEN:
            raise ValueError(f"certificates are 1 to {spec.CERT_MAX_LEN} bytes of DER")
    return [(Dgi.ATTESTATION_CERT, att_cert_der), (Dgi.BATCH_CA_CERT, batch_ca_der)]


# -- the session -------------------------------------------------------------------------------
class AttestationSession:
    """The attestation applet, as seen from the host."""

    def __init__(self, protocol: SmartCardProtocol) -> None:
        self.protocol = protocol
        protocol.select(spec.AID)

    def __repr__(self) -> str:
        return "AttestationSession()"

    def _transmit(self, ins: Ins, data: bytes = b"") -> bytes:
        """CLA 80, P1 = P2 = 00, Le for the whole answer (quotes exceed 256 bytes: with short
        APDUs the card answers 61xx and the protocol collects with GET RESPONSE)."""
        extended = self.protocol.extended or len(data) > SHORT_MAX_DATA
        le = EXTENDED_MAX_LE if extended else SHORT_MAX_LE
        cmd = CommandApdu(
            CLA_IOTID, ins, spec.P1P2_NONE, spec.P1P2_NONE, data, le, extended=extended
        )
        resp = self.protocol.send(cmd)
        if resp.sw != SW.OK:
            raise ApduError(resp.sw, resp.data)
        return resp.data

    def attest(self, nonce: bytes) -> bytes:
        """ATTEST: the quote (a tagged COSE_Sign1 EAT) bound to ``nonce`` (see decode_quote)."""
        try:
            return self._transmit(Ins.ATTEST, nonce)
        except ApduError as exc:
            if exc.sw == SW.CONDITIONS_NOT_SATISFIED:
                raise AttestationUnavailableError(
                    "attestation applet not personalised or no active identity key"
                ) from exc
            if exc.sw == SW.WRONG_LENGTH:
                raise InvalidNonceError(
                    f"the nonce must be {spec.NONCE_MIN} to {spec.NONCE_MAX} bytes"
                ) from exc
            raise

    def attestation_public_key(self) -> PublicKey:
        """GET ATTESTATION KEY (personalisation time only): the on-card attestation public key."""
        try:
            der = self._transmit(Ins.GET_ATTESTATION_KEY)
        except ApduError as exc:
            if exc.sw == SW.CONDITIONS_NOT_SATISFIED:
                raise AttestationKeyUnavailableError(
                    "the applet is personalised: read the key from its certificate"
                ) from exc
            if exc.sw == SW.REFERENCED_DATA_NOT_FOUND:
                raise AttestationKeyUnavailableError("no attestation key generated yet") from exc
            raise
        try:
            key = serialization.load_der_public_key(der)
        except (ValueError, TypeError):
            raise BadResponseError("GET ATTESTATION KEY: not a SubjectPublicKeyInfo") from None
        if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
            raise BadResponseError("GET ATTESTATION KEY: unexpected key type")
        return key


# -- decoding a quote --------------------------------------------------------------------------
@dataclass(frozen=True)
class Quote:
    """A decoded, *unverified* quote: what the card claims, for the fleet to check."""

    alg: cose.CoseAlg
    nonce: bytes
    ueid: bytes
    uid: bytes
    profile: str
    identity_public_key: PublicKey
    identity_alg: KeyAlg
    provisioned: bool
    key_epoch: int
    firmware_floor: int
    #: x5chain from the protected header, leaf (attestation certificate) first.
    certificates: tuple[x509.Certificate, ...]
    #: The COSE structure itself (protected bytes, payload, signature) for the verifier.
    message: cose.Sign1 = field(repr=False)
    #: The whole claims map, private claims of later profiles included.
    claims: Mapping[int, Any] = field(repr=False)


def _claim(claims: Mapping[Any, Any], key: Claim, kind: type) -> Any:
    value = claims.get(int(key))
    if kind is int and isinstance(value, bool):
        value = None  # a CBOR bool is not an integer claim
    if not isinstance(value, kind):
        raise QuoteFormatError(f"claim {key.name} ({int(key)}) missing or not a {kind.__name__}")
    return value


def _unsigned(claims: Mapping[Any, Any], key: Claim) -> int:
    value: int = _claim(claims, key, int)
    if value < 0:
        raise QuoteFormatError(f"claim {key.name} ({int(key)}) is negative")
    return value


def _certificates(header: Any) -> tuple[x509.Certificate, ...]:
    # RFC 9360 §2: one certificate as a bstr, several as an array of bstr.
    items = [header] if isinstance(header, bytes) else header
    if not isinstance(items, (list, tuple)) or not items:
        raise QuoteFormatError("protected header has no x5chain (label 33)")
    out = []
    for item in items:
        if not isinstance(item, bytes):
            raise QuoteFormatError("x5chain entries are DER byte strings")
        try:
            out.append(x509.load_der_x509_certificate(item))
        except ValueError:
            raise QuoteFormatError("x5chain holds a certificate that does not parse") from None
    return tuple(out)


def decode_quote(quote: bytes) -> Quote:
    """Parse a quote (tagged COSE_Sign1 EAT of :data:`~iotid.spec.attestation.PROFILE`).

    Structure and types only: the signature, the chain, the nonce and the UEID are *not* checked.
    """
    try:
        message = cose.decode_sign1(quote, require_tag=True)
        alg = message.alg
        certificates = _certificates(message.protected.get(cose.HeaderLabel.X5CHAIN))
        claims = cose.decode_cbor(message.payload)
    except cose.CoseError as exc:
        raise QuoteFormatError(f"not a COSE_Sign1 quote: {exc}") from None
    if not isinstance(claims, Mapping):
        raise QuoteFormatError("the payload is not a claims map")
    cnf = _claim(claims, Claim.CNF, Mapping)
    cose_key = cnf.get(spec.CNF_COSE_KEY)
    if not isinstance(cose_key, Mapping):
        raise QuoteFormatError("cnf holds no COSE_Key")
    try:
        identity_public_key = cose.public_key_from_cose_key(cose_key)
        identity_alg = KeyAlg(_unsigned(claims, Claim.IDENTITY_ALG))
    except (cose.CoseError, ValueError) as exc:
        raise QuoteFormatError(f"identity key: {exc}") from None
    return Quote(
        alg=alg,
        nonce=_claim(claims, Claim.NONCE, bytes),
        ueid=_claim(claims, Claim.UEID, bytes),
        uid=_claim(claims, Claim.UID, bytes),
        profile=_claim(claims, Claim.PROFILE, str),
        identity_public_key=identity_public_key,
        identity_alg=identity_alg,
        provisioned=_claim(claims, Claim.PROVISIONED, bool),
        key_epoch=_unsigned(claims, Claim.KEY_EPOCH),
        firmware_floor=_unsigned(claims, Claim.FIRMWARE_FLOOR),
        certificates=certificates,
        message=message,
        claims=dict(claims),
    )
