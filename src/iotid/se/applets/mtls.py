"""The mTLS credential applet (DESIGN.md section 6.3), card side.

Scope: signing TLS handshake digests with the active identity key under the signature schemes
the personalisation allows (DGI 0301), the client certificate chain of the current identity key
(stored with the key epoch, so a rotated key makes it invisible), PKCS#10 requests (RFC 2986)
built and signed inside the card, and the identity public key with its epoch. The wire
vocabulary is ``iotid.spec.mtls``.

The identity key itself belongs to :class:`~iotid.se.identity.IdentityStore`; this applet never
creates, rotates or exports it: only public keys, signatures, CSRs and certificates leave.

Not in scope: the TLS protocol (the host's tlslite-ng key adapter), certificate issuance and
validity checking against time or revocation (the fleet; the card has no clock), the identity
key's life cycle (provisioning and rotation applets).
"""

from __future__ import annotations

from itertools import pairwise
from typing import ClassVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from iotid.apdu import ApduError, ApduFormatError, CommandApdu, parse_tlv, tlv, unpack_tlv
from iotid.se.applet import Applet, ClaClass, handles
from iotid.se.identity import IdentityStore
from iotid.spec import mtls
from iotid.spec.algorithms import KeyAlg
from iotid.spec.gp import AppLifeCycle
from iotid.spec.identity import APP_PERSONALISED, ELF_AID
from iotid.spec.iso7816 import SW
from iotid.spec.mtls import Dgi, Ins, SignScheme, Tag

_SCHEMES = "schemes"
_CHAIN = "chain"
_EPOCH_LEN = 4
_DER_SEQUENCE = 0x30  # X.690 section 8.9: a Certificate is a SEQUENCE


class MtlsApplet(Applet):
    """Signs with the identity key; keeps its certificate chain; makes CSRs."""

    AID = mtls.AID
    NAME = "mtls"
    ELF_AID: ClassVar[bytes] = ELF_AID
    INITIAL_LIFE_CYCLE = AppLifeCycle.SELECTABLE

    # -- state ----------------------------------------------------------------------------------
    def _personalised(self) -> bool:
        return self.ctx.services.app_life_cycle(self.AID) == APP_PERSONALISED

    def _ready(self) -> IdentityStore:
        """The identity store, or 6985 unless personalised with an active identity key."""
        if not self._personalised():
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        identity = IdentityStore(self.ctx.nvm, self.ctx.keys)
        identity.require_active()
        return identity

    def _allowed(self) -> int:
        raw = self.load(_SCHEMES)
        return raw[0] if raw else 0

    # -- personalisation (GPC 2.3.1 section 11.11, DGI format) ----------------------------------
    def store_data(self, dgi: int, value: bytes) -> None:
        if self._personalised():
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        if dgi != Dgi.SIGN_SCHEMES:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        if len(value) != 1 or value[0] == 0 or value[0] & ~mtls.ALL_SCHEME_BITS:
            raise ApduError(SW.WRONG_DATA)
        self.store(_SCHEMES, value)

    def end_personalisation(self) -> None:
        if self._personalised() or self.load(_SCHEMES) is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        self.ctx.services.set_app_life_cycle(self.AID, APP_PERSONALISED)

    # -- SIGN DIGEST ----------------------------------------------------------------------------
    @handles(Ins.SIGN_DIGEST, cla=ClaClass.PROPRIETARY)
    def sign_digest(self, cmd: CommandApdu) -> bytes:
        identity = self._ready()
        if cmd.p2 != mtls.P_NONE:
            raise ApduError(SW.INCORRECT_P1P2)
        try:
            scheme = SignScheme(cmd.p1)
        except ValueError:
            raise ApduError(SW.INCORRECT_P1P2) from None
        alg = identity.alg
        if alg is None or not self._allowed() & scheme.bit or not scheme.fits(alg):
            raise ApduError(SW.INCORRECT_P1P2)
        if len(cmd.data) != scheme.digest_size:
            raise ApduError(SW.WRONG_LENGTH)
        # RFC 8446 section 4.2.3 (PSS salt = digest length); RFC 8017 section 9.2 (DigestInfo).
        return identity.sign_digest(
            cmd.data, scheme.hash_name, pss=scheme.family == mtls.FAMILY_PSS
        )

    # -- GET PUBLIC KEY -------------------------------------------------------------------------
    @handles(Ins.GET_PUBLIC_KEY, cla=ClaClass.PROPRIETARY)
    def get_public_key(self, cmd: CommandApdu) -> bytes:
        identity = self._ready()
        _no_parameters(cmd)
        if cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        alg = identity.alg
        if alg is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        return (
            tlv(Tag.SPKI, _spki(identity.active_public_key()))
            + tlv(Tag.EPOCH, identity.epoch.to_bytes(_EPOCH_LEN, "big"))
            + tlv(Tag.KEY_ALG, bytes([alg]))
        )

    # -- PUT / GET CERT CHAIN -------------------------------------------------------------------
    @handles(Ins.PUT_CERT_CHAIN, cla=ClaClass.PROPRIETARY)
    def put_cert_chain(self, cmd: CommandApdu) -> bytes:
        identity = self._ready()
        _no_parameters(cmd)
        if not cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        if len(cmd.data) > mtls.MAX_CHAIN_BYTES:
            raise ApduError(SW.NOT_ENOUGH_MEMORY)
        certs = _parse_chain(cmd.data)
        if _spki(certs[0].public_key()) != _spki(identity.active_public_key()):
            raise ApduError(SW.WRONG_DATA)
        for child, parent in pairwise(certs):
            try:  # RFC 5280 section 6.1.3 (a)(1) and (a)(4): signature and name chaining
                child.verify_directly_issued_by(parent)
            except (ValueError, TypeError, InvalidSignature):
                raise ApduError(SW.WRONG_DATA) from None
        self.store(_CHAIN, identity.epoch.to_bytes(_EPOCH_LEN, "big") + cmd.data)
        return b""

    @handles(Ins.GET_CERT_CHAIN, cla=ClaClass.PROPRIETARY)
    def get_cert_chain(self, cmd: CommandApdu) -> bytes:
        identity = self._ready()
        _no_parameters(cmd)
        if cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        record = self.load(_CHAIN)
        if record is None or int.from_bytes(record[:_EPOCH_LEN], "big") != identity.epoch:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        return record[_EPOCH_LEN:]

    # -- CREATE CSR (RFC 2986) ------------------------------------------------------------------
    @handles(Ins.CREATE_CSR, cla=ClaClass.PROPRIETARY)
    def create_csr(self, cmd: CommandApdu) -> bytes:
        identity = self._ready()
        _no_parameters(cmd)
        uid_hex = self.ctx.services.uid.hex()
        common_name = _common_name(cmd.data) if cmd.data else uid_hex
        alg = identity.alg
        algorithm: hashes.SHA256 | hashes.SHA384 = (
            hashes.SHA384() if alg is KeyAlg.EC_P384 else hashes.SHA256()
        )
        try:
            builder = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(
                    x509.Name(
                        [
                            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                            x509.NameAttribute(NameOID.SERIAL_NUMBER, uid_hex),
                        ]
                    )
                )
                .add_extension(
                    x509.SubjectAlternativeName(
                        [x509.UniformResourceIdentifier(mtls.uid_urn(self.ctx.services.uid))]
                    ),
                    critical=False,
                )
            )
        except ValueError:
            raise ApduError(SW.WRONG_DATA) from None
        # Signed inside the card with the identity key object; the key never leaves.
        csr = builder.sign(identity.private_key_for_card_use(), algorithm)
        return csr.public_bytes(serialization.Encoding.DER)


def _no_parameters(cmd: CommandApdu) -> None:
    if cmd.p1 != mtls.P_NONE or cmd.p2 != mtls.P_NONE:
        raise ApduError(SW.INCORRECT_P1P2)


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _parse_chain(data: bytes) -> list[x509.Certificate]:
    """DER certificates back to back (X.690 section 8.1); 6A80 on anything else."""
    certs: list[x509.Certificate] = []
    offset = 0
    while offset < len(data):
        try:
            item, end = parse_tlv(data, offset)
        except ApduFormatError:
            raise ApduError(SW.WRONG_DATA) from None
        if item.tag != _DER_SEQUENCE:
            raise ApduError(SW.WRONG_DATA)
        if len(certs) == mtls.MAX_CHAIN_CERTS:
            raise ApduError(SW.NOT_ENOUGH_MEMORY)
        try:
            certs.append(x509.load_der_x509_certificate(data[offset:end]))
        except ValueError:
            raise ApduError(SW.WRONG_DATA) from None
        offset = end
    return certs


def _common_name(data: bytes) -> str:
    """The one COMMON NAME object of CREATE CSR: UTF-8, 1..64 characters, no control codes."""
    try:
        raw = unpack_tlv(Tag.COMMON_NAME, data)
        name = raw.decode("utf-8")
    except (ApduFormatError, UnicodeDecodeError):
        raise ApduError(SW.WRONG_DATA) from None
    if not 1 <= len(name) <= mtls.MAX_COMMON_NAME_CHARS or not name.isprintable():
        raise ApduError(SW.WRONG_DATA)
    return name
