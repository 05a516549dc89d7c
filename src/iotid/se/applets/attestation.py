"""The attestation applet (DESIGN.md section 6.2): signed quotes over the card's identity.

Scope: personalisation (the attestation key pair generated on the card, its certificate and the
batch attestation CA certificate; ``iotid.spec.attestation.Dgi``), GET ATTESTATION KEY (only
while not personalised, for the factory to certify the key) and ATTEST, which answers an EAT
(RFC 9711) in a tagged COSE_Sign1 (RFC 9052) signed inside the card with the attestation key:
x5chain in the protected header, claims nonce, UEID, cnf (the identity public key), profile and
the card state that matters (UID, provisioned flag, key epoch, firmware floor, identity alg).

The certificate checks at personalisation are the ones a card can make without a clock: the
DER parses and re-encodes to itself, the leaf certifies exactly the on-card key, is not a CA and
may sign, the batch certificate is a CA that may sign certificates and did sign the leaf. Dates
and the path up to the issuance root are the fleet's to check.

Not covered: the wire vocabulary (``iotid.spec.attestation``), COSE encoding
(``iotid.crypto.cose``), the identity key's life (``iotid.se.identity``, provisioning and
rotation applets), verification of quotes (the fleet).
"""

from __future__ import annotations

from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from iotid.apdu import ApduError, CommandApdu
from iotid.crypto import cose
from iotid.se.applet import Applet, ClaClass, handles
from iotid.se.identity import IdentityStore
from iotid.se.keystore import PublicKey
from iotid.spec import attestation as spec
from iotid.spec.algorithms import KeyAlg
from iotid.spec.attestation import Claim, Dgi, Ins
from iotid.spec.gp import APP_LOCKED_BIT
from iotid.spec.identity import APP_PERSONALISED, ELF_AID, SHARED_FIRMWARE_FLOOR_RECORD
from iotid.spec.iso7816 import SW

_KEY = "key"  # key store slot (scoped): the attestation key pair
_CERT = "cert"  # NVM record (scoped): the attestation certificate, DER
_CA = "batch-ca"  # NVM record (scoped): the batch attestation CA certificate, DER
_FLOOR_LEN = 4  # u32 big endian (spec.identity.SHARED_FIRMWARE_FLOOR_RECORD)


def _spki(key: PublicKey | CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _parse_certificate(value: bytes) -> x509.Certificate:
    """DER certificate that re-encodes to exactly ``value`` (6A84 too long, 6A80 otherwise)."""
    if len(value) > spec.CERT_MAX_LEN:
        raise ApduError(SW.NOT_ENOUGH_MEMORY)
    try:
        cert = x509.load_der_x509_certificate(value)
        if cert.public_bytes(serialization.Encoding.DER) != value:
            raise ApduError(SW.WRONG_DATA)
        cert.public_key()  # an unsupported key type is refused here
    except (ValueError, UnsupportedAlgorithm):
        raise ApduError(SW.WRONG_DATA) from None
    return cert


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:  # a malformed extension
        raise ApduError(SW.WRONG_DATA) from None


class AttestationApplet(Applet):
    """Card side of the attestation applet."""

    AID = spec.AID
    NAME = "attestation"
    ELF_AID = ELF_AID
    INITIAL_LIFE_CYCLE = 0x07  # SELECTABLE

    # -- state ----------------------------------------------------------------------------------
    def _personalised(self) -> bool:
        life_cycle = self.ctx.services.app_life_cycle(self.AID) & ~APP_LOCKED_BIT
        return life_cycle == APP_PERSONALISED

    def _has_key(self) -> bool:
        return self.ctx.keys.has(self.slot(_KEY))

    def _check_p1p2(self, cmd: CommandApdu) -> None:
        if cmd.p1 != spec.P1P2_NONE or cmd.p2 != spec.P1P2_NONE:
            raise ApduError(SW.INCORRECT_P1P2)

    # -- personalisation (GPC 2.3.1 section 11.11, STORE DATA through the ISD) ------------------
    def store_data(self, dgi: int, value: bytes) -> None:
        if self._personalised():
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        if dgi == Dgi.KEY_ALG:
            if len(value) != 1 or value[0] not in spec.ATTESTATION_ALGS:
                raise ApduError(SW.WRONG_DATA)
            # A new key pair: certificates of an earlier one certify nothing any more.
            self.ctx.keys.generate(self.slot(_KEY), KeyAlg(value[0]))
            self.erase(_CERT)
            self.erase(_CA)
        elif dgi == Dgi.ATTESTATION_CERT:
            if not self._has_key():
                raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
            cert = self._check_leaf(_parse_certificate(value))
            ca_der = self.load(_CA)
            if ca_der is not None:
                _check_issued(cert, x509.load_der_x509_certificate(ca_der))
            self.store(_CERT, value)
        elif dgi == Dgi.BATCH_CA_CERT:
            ca = _check_ca(_parse_certificate(value))
            leaf_der = self.load(_CERT)
            if leaf_der is not None:
                _check_issued(x509.load_der_x509_certificate(leaf_der), ca)
            self.store(_CA, value)
        else:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)

    def _check_leaf(self, cert: x509.Certificate) -> x509.Certificate:
        # The certificate must certify exactly the key born in this card (public values only).
        if _spki(cert.public_key()) != _spki(self.ctx.keys.public_key(self.slot(_KEY))):
            raise ApduError(SW.WRONG_DATA)
        constraints = _extension(cert, x509.BasicConstraints)
        if constraints is not None and constraints.ca:
            raise ApduError(SW.WRONG_DATA)
        usage = _extension(cert, x509.KeyUsage)
        if usage is not None and not usage.digital_signature:
            raise ApduError(SW.WRONG_DATA)
        return cert

    def end_personalisation(self) -> None:
        if (
            self._personalised()
            or not self._has_key()
            or self.load(_CERT) is None
            or self.load(_CA) is None
        ):
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        self.ctx.services.set_app_life_cycle(self.AID, APP_PERSONALISED)

    # -- GET ATTESTATION KEY --------------------------------------------------------------------
    @handles(Ins.GET_ATTESTATION_KEY, cla=ClaClass.PROPRIETARY)
    def get_attestation_key(self, cmd: CommandApdu) -> bytes:
        if self._personalised():
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)  # a factory-time command
        self._check_p1p2(cmd)
        if cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        if not self._has_key():
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        return _spki(self.ctx.keys.public_key(self.slot(_KEY)))

    # -- ATTEST ---------------------------------------------------------------------------------
    @handles(Ins.ATTEST, cla=ClaClass.PROPRIETARY)
    def attest(self, cmd: CommandApdu) -> bytes:
        if not self._personalised():
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        self._check_p1p2(cmd)
        if not spec.NONCE_MIN <= len(cmd.data) <= spec.NONCE_MAX:
            raise ApduError(SW.WRONG_LENGTH)
        identity = IdentityStore(self.ctx.nvm, self.ctx.keys)
        identity_key = identity.active_public_key()  # 6985 without an active identity key
        identity_alg = identity.alg
        cert, ca = self.load(_CERT), self.load(_CA)
        if identity_alg is None or cert is None or ca is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        uid = self.ctx.services.uid
        claims: dict[int, Any] = {
            Claim.NONCE: cmd.data,
            Claim.UEID: spec.ueid_for_uid(uid),
            Claim.CNF: {spec.CNF_COSE_KEY: cose.cose_key(identity_key)},
            Claim.PROFILE: spec.PROFILE,
            Claim.UID: uid,
            Claim.PROVISIONED: identity.provisioned,
            Claim.KEY_EPOCH: identity.epoch,
            Claim.FIRMWARE_FLOOR: self._firmware_floor(),
            Claim.IDENTITY_ALG: int(identity_alg),
        }
        pending = identity.pending_public_key()
        if pending is not None:
            claims[Claim.PENDING_IDENTITY_KEY] = cose.cose_key(pending)
        slot = self.slot(_KEY)
        alg = cose.alg_for_public_key(self.ctx.keys.public_key(slot))
        # RFC 9360 §2: x5chain in the protected header, the leaf (signing) certificate first.
        protected: dict[int, Any] = {
            cose.HeaderLabel.ALG: alg,
            cose.HeaderLabel.X5CHAIN: [cert, ca],
        }

        def signer(to_be_signed: bytes) -> bytes:
            # ECDSA: DER from the key store -> raw r || s; PS256: PSS, salt 32 = SHA-256 length.
            der = self.ctx.keys.sign(slot, to_be_signed, alg.hash_name, pss=True)
            return cose.cose_signature(alg, der)

        return cose.sign1(protected, cbor2.dumps(claims, canonical=True), signer)

    def _firmware_floor(self) -> int:
        raw = self.ctx.nvm.get(SHARED_FIRMWARE_FLOOR_RECORD)
        if raw is None:
            return 0
        if len(raw) != _FLOOR_LEN:
            raise ApduError(SW.MEMORY_FAILURE)  # a corrupt shared record: refuse to vouch for it
        return int.from_bytes(raw, "big")


def _check_ca(cert: x509.Certificate) -> x509.Certificate:
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise ApduError(SW.WRONG_DATA)
    usage = _extension(cert, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise ApduError(SW.WRONG_DATA)
    return cert


def _check_issued(leaf: x509.Certificate, ca: x509.Certificate) -> None:
    """The batch CA issued the attestation certificate (names and signature, RFC 5280 §6.1.3)."""
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise ApduError(SW.WRONG_DATA) from None
