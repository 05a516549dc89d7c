"""Host session of the mTLS credential applet (DESIGN.md sections 6.3 and 7).

Scope: :class:`MtlsSession`, one method per applet command returning typed Python values
(``cryptography`` public keys, certificates and CSRs, signature bytes), the translation of the
status words it understands into typed errors, and :func:`perso_dgis`, which builds the
applet's personalisation DGIs. The wire vocabulary is ``iotid.spec.mtls``.

Not in scope: the tlslite-ng key adapter that calls :meth:`MtlsSession.sign_digest` (it strips
the DigestInfo tlslite hands to PKCS#1 v1.5 signers; the card adds it back), validation of the
chain against a trust anchor, dates or revocation (the fleet), retries and fail-safe answers
(the ``SecureElement`` facade), personalisation transport (``SecurityDomainSession``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from iotid.apdu import ApduError, ApduFormatError, CommandApdu, find_tlv, parse_tlv, tlv
from iotid.host.errors import BadResponseError, HostError
from iotid.host.protocol import SmartCardProtocol
from iotid.spec import mtls
from iotid.spec.algorithms import KeyAlg
from iotid.spec.identity import CLA_IOTID
from iotid.spec.iso7816 import EXTENDED_MAX_LE, SHORT_MAX_DATA, SHORT_MAX_LE, SW
from iotid.spec.mtls import Dgi, Ins, SignScheme, Tag

__all__ = [
    "ChainRejectedError",
    "ChainTooLargeError",
    "IdentityPublicKey",
    "MtlsError",
    "MtlsSession",
    "NoCredentialError",
    "NotPersonalisedError",
    "PublicKey",
    "SchemeNotAllowedError",
    "perso_dgis",
]

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_DER_SEQUENCE = 0x30


class MtlsError(HostError):
    """A status word of the mTLS applet that this session understands."""

    def __init__(self, sw: int, message: str) -> None:
        self.sw = sw
        super().__init__(f"{message} ({sw:04X})")


class NotPersonalisedError(MtlsError):
    """6985: the applet is not personalised, or the card has no active identity key yet."""


class NoCredentialError(MtlsError):
    """6A88 on GET CERT CHAIN: no chain stored, or it belongs to a key rotated away since."""


class SchemeNotAllowedError(MtlsError):
    """6A86 on SIGN DIGEST: the personalisation does not allow the scheme, or it does not fit
    the identity key (ECDSA on RSA, RSA on EC, ECDSA with a hash other than the curve's)."""


class ChainRejectedError(MtlsError):
    """6A80 on PUT CERT CHAIN: malformed DER, a leaf that does not certify the active identity
    key, or a certificate not issued by the next one."""


class ChainTooLargeError(MtlsError):
    """6A84 on PUT CERT CHAIN: more bytes or certificates than the card keeps."""


@dataclass(frozen=True)
class IdentityPublicKey:
    """GET PUBLIC KEY: the active identity key, its epoch and algorithm."""

    public_key: PublicKey
    epoch: int
    alg: KeyAlg


class MtlsSession:
    """The mTLS credential applet. Selecting it happens at construction (and in :meth:`select`)."""

    def __init__(self, protocol: SmartCardProtocol) -> None:
        self.protocol = protocol
        self.select()

    def __repr__(self) -> str:
        return "MtlsSession()"

    def select(self) -> None:
        """(Re-)select the applet, e.g. after another session used the same protocol."""
        self.protocol.select(mtls.AID)

    # -- commands -------------------------------------------------------------------------------
    def identity(self) -> IdentityPublicKey:
        """GET PUBLIC KEY: SPKI, epoch and algorithm of the active identity key."""
        data = self._send(Ins.GET_PUBLIC_KEY)
        try:
            spki = find_tlv(data, Tag.SPKI)
            epoch = find_tlv(data, Tag.EPOCH)
            alg = find_tlv(data, Tag.KEY_ALG)
        except ApduFormatError as exc:
            raise BadResponseError("GET PUBLIC KEY: malformed TLV") from exc
        if spki is None or epoch is None or alg is None or len(alg) != 1 or len(epoch) != 4:
            raise BadResponseError("GET PUBLIC KEY: missing or malformed data object")
        try:
            key = serialization.load_der_public_key(spki)
            key_alg = KeyAlg(alg[0])
        except ValueError as exc:
            raise BadResponseError("GET PUBLIC KEY: bad public key or algorithm") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise BadResponseError("GET PUBLIC KEY: neither an EC nor an RSA key")
        return IdentityPublicKey(key, int.from_bytes(epoch, "big"), key_alg)

    def public_key(self) -> PublicKey:
        """The active identity public key."""
        return self.identity().public_key

    def sign_digest(self, digest: bytes, hash_name: str, scheme: str) -> bytes:
        """SIGN DIGEST. ``hash_name``: ``sha256`` | ``sha384``; ``scheme``: ``ecdsa`` (returns
        DER), ``pss`` (salt = digest length, MGF1 with the same hash) or ``pkcs1`` (PKCS#1 v1.5:
        pass the bare digest, the card builds the DigestInfo). RSA signatures are raw bytes.
        ValueError for an unknown scheme or hash, or a digest of the wrong length."""
        code = SignScheme.from_parts(scheme, hash_name)
        if len(digest) != code.digest_size:
            raise ValueError(f"{code.hash_name} digest must be {code.digest_size} bytes")
        signature = self._send(
            Ins.SIGN_DIGEST, code, bytes(digest), {SW.INCORRECT_P1P2: SchemeNotAllowedError}
        )
        if code.family == mtls.FAMILY_ECDSA:
            try:
                decode_dss_signature(signature)
            except ValueError as exc:
                raise BadResponseError("SIGN DIGEST: not a DER ECDSA signature") from exc
        elif not signature:
            raise BadResponseError("SIGN DIGEST: empty signature")
        return signature

    def install_chain(self, certs: Iterable[x509.Certificate]) -> None:
        """PUT CERT CHAIN: ``certs`` leaf first, each issued by the next; the leaf must certify
        the active identity key. Replaces any stored chain."""
        data = b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)
        if not data:
            raise ValueError("an empty certificate chain")
        if len(data) > mtls.MAX_CHAIN_BYTES:
            raise ValueError(f"chain is {len(data)} bytes; the card keeps {mtls.MAX_CHAIN_BYTES}")
        self._send(
            Ins.PUT_CERT_CHAIN,
            data=data,
            errors={SW.WRONG_DATA: ChainRejectedError, SW.NOT_ENOUGH_MEMORY: ChainTooLargeError},
        )

    def chain(self) -> list[x509.Certificate]:
        """GET CERT CHAIN: the chain of the current identity key, leaf first."""
        data = self._send(
            Ins.GET_CERT_CHAIN, errors={SW.REFERENCED_DATA_NOT_FOUND: NoCredentialError}
        )
        return _split_certificates(data)

    def create_csr(self, common_name: str | None = None) -> x509.CertificateSigningRequest:
        """CREATE CSR: a PKCS#10 request for the identity key, signed inside the card. Subject
        CN = ``common_name`` (default: the UID in hex), serialNumber = UID hex, SAN URI
        ``urn:iotid:uid:<uid hex>``."""
        data = b""
        if common_name is not None:
            if not 1 <= len(common_name) <= mtls.MAX_COMMON_NAME_CHARS:
                raise ValueError(f"common name must be 1..{mtls.MAX_COMMON_NAME_CHARS} characters")
            if not common_name.isprintable():
                raise ValueError("common name must not contain control characters")
            data = tlv(Tag.COMMON_NAME, common_name.encode("utf-8"))
        der = self._send(Ins.CREATE_CSR, data=data)
        try:
            csr = x509.load_der_x509_csr(der)
        except ValueError as exc:
            raise BadResponseError("CREATE CSR: not a DER PKCS#10 request") from exc
        if not csr.is_signature_valid:
            raise BadResponseError("CREATE CSR: the request's self-signature does not verify")
        return csr

    # -- plumbing -------------------------------------------------------------------------------
    def _send(
        self,
        ins: Ins,
        p1: int = mtls.P_NONE,
        data: bytes = b"",
        errors: Mapping[int, type[MtlsError]] | None = None,
    ) -> bytes:
        extended = self.protocol.extended or len(data) > SHORT_MAX_DATA
        le = EXTENDED_MAX_LE if self.protocol.extended else SHORT_MAX_LE
        cmd = CommandApdu(CLA_IOTID, ins, p1, mtls.P_NONE, data, le, extended=extended)
        resp = self.protocol.send(cmd)
        if resp.sw == SW.OK:
            return resp.data
        if resp.sw == SW.CONDITIONS_NOT_SATISFIED:
            raise NotPersonalisedError(
                resp.sw, "mTLS applet not personalised, or no active identity key"
            )
        error = (errors or {}).get(resp.sw)
        if error is not None:
            raise error(resp.sw, f"{ins.name.replace('_', ' ')} refused")
        raise ApduError(resp.sw, resp.data)


def _split_certificates(data: bytes) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    offset = 0
    try:
        while offset < len(data):
            item, end = parse_tlv(data, offset)
            if item.tag != _DER_SEQUENCE:
                raise BadResponseError("GET CERT CHAIN: not a DER certificate")
            certs.append(x509.load_der_x509_certificate(data[offset:end]))
            offset = end
    except ValueError as exc:  # ApduFormatError is a ValueError
        raise BadResponseError("GET CERT CHAIN: malformed certificate") from exc
    if not certs:
        raise BadResponseError("GET CERT CHAIN: empty chain")
    return certs


def perso_dgis(
    schemes: set[str] | None = None, *, alg: KeyAlg | None = None
) -> list[tuple[int, bytes]]:
    """DGI 0301 (allowed signature schemes) for the personalisation routine.

    ``schemes``: labels ``ecdsa-sha256``, ``ecdsa-sha384``, ``rsa-pss-sha256``,
    ``rsa-pss-sha384``, ``rsa-pkcs1-sha256``, ``rsa-pkcs1-sha384``. Default: every scheme that
    fits ``alg`` (the identity algorithm), or every scheme when ``alg`` is not given. When both
    are given, a scheme that does not fit ``alg`` is a ValueError (a plan mistake).
    """
    if schemes is None:
        chosen = mtls.schemes_for(alg) if alg is not None else list(SignScheme)
    else:
        if not schemes:
            raise ValueError("at least one signature scheme must be allowed")
        chosen = [SignScheme.from_label(label) for label in sorted(schemes)]
        if alg is not None:
            unfit = [s.label for s in chosen if not s.fits(alg)]
            if unfit:
                raise ValueError(f"schemes {unfit} do not fit a {alg.name} identity key")
    bitmap = 0
    for scheme in chosen:
        bitmap |= scheme.bit
    return [(Dgi.SIGN_SCHEMES, bytes([bitmap]))]
