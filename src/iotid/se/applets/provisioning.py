"""The provisioning applet (DESIGN.md section 6.1): the card's first identity key, and the admin
re-key ceremony that alone may replace it.

Scope: personalisation (master key, identity algorithm, operator re-key authority public key;
``iotid.spec.provisioning.Dgi``), PROVISION, GET PUBLIC KEY, GET STATE, GET REKEY CHALLENGE and
REKEY. The identity key itself lives in the shared :class:`~iotid.se.identity.IdentityStore`.

PROVISION: for P-256/P-384 the key is derived with
:func:`iotid.crypto.identity_kdf.derive_identity_key` from the master key, the card UID and the
re-key generation, so the factory (which holds the batch master key) can predict the public key
for its manifest. For RSA-2048/3072 the key is *generated* from the card's RNG: ``cryptography``
has no deterministic RSA key generation; an RSA batch relies on attestation alone. The master
key stays in NVM after PROVISION (a re-key derives again from it); no command reads it back.

The admin re-key ceremony. A second PROVISION is refused (6985) until the *operator* authorises a
re-key: the card issues a fresh 16-byte nonce (GET REKEY CHALLENGE, stored in NVM with the
current re-key counter), and REKEY must carry an ECDSA signature over
``"iotid-rekey-v1" || UID || counter || nonce`` made with the operator's re-key authority key,
whose public half was burned at personalisation. Control of the host alone is therefore not
enough: the host can ask for challenges and relay signatures, but it cannot make one, because the
authority's private key never is on the device. The nonce makes each signature single use (it is
consumed on success and replaced by every new challenge), the UID binds it to one card, and the
counter to the card's re-key history. A refused REKEY answers 6982 and changes nothing: the
challenge stays valid and no counter is burned. A successful one destroys the active (and any
pending) identity key, advances the generation (the KDF input) and the counter, and consumes the
nonce; the next PROVISION derives the generation's new key. Each APDU commits atomically, so a
power cut leaves either the old state or the new one.

Not covered: the wire vocabulary (``iotid.spec.provisioning``), the derivation itself, the other
applets' reaction to a re-key (an mTLS certificate for the destroyed key simply stops matching).
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from iotid.apdu import ApduError, CommandApdu, tlv
from iotid.crypto.identity_kdf import derive_identity_key
from iotid.se.applet import Applet, ClaClass, handles
from iotid.se.identity import IdentityStore
from iotid.se.keystore import PrivateKey, PublicKey
from iotid.spec import provisioning as spec
from iotid.spec.algorithms import KeyAlg
from iotid.spec.gp import APP_LOCKED_BIT
from iotid.spec.identity import APP_PERSONALISED, ELF_AID
from iotid.spec.iso7816 import SW
from iotid.spec.provisioning import Dgi, Ins, Tag

_MASTER = "master-key"
_ALG = "identity-alg"
_AUTHORITY = "rekey-authority"
_GENERATION = "generation"
_COUNTER = "rekey-counter"
_CHALLENGE = "rekey-challenge"  # counter (4) || nonce (16)
_MANDATORY = (_MASTER, _ALG, _AUTHORITY)
_U32_MAX = 0xFFFFFFFF
_HASHES: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}


def _spki(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


class ProvisioningApplet(Applet):
    """Card side of the provisioning applet."""

    AID = spec.AID
    NAME = "provisioning"
    ELF_AID = ELF_AID
    INITIAL_LIFE_CYCLE = 0x07  # SELECTABLE

    @property
    def identity(self) -> IdentityStore:
        return IdentityStore(self.ctx.nvm, self.ctx.keys)

    # -- persistent state ---------------------------------------------------------------------
    def _personalised(self) -> bool:
        life_cycle = self.ctx.services.app_life_cycle(self.AID) & ~APP_LOCKED_BIT
        return life_cycle == APP_PERSONALISED

    def _counter_value(self, name: str) -> int:
        raw = self.load(name)
        return int.from_bytes(raw, "big") if raw else 0

    def _configured_alg(self) -> KeyAlg:
        raw = self.load(_ALG)
        if raw is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        return KeyAlg(raw[0])

    def _authority(self) -> ec.EllipticCurvePublicKey:
        raw = self.load(_AUTHORITY)
        if raw is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        key = serialization.load_der_public_key(raw)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        return key

    def _operational(self, cmd: CommandApdu, *, data: bool = False) -> None:
        """Common checks: personalised (6985), P1/P2 (6A86), data presence (6700)."""
        if not self._personalised():
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        if cmd.p1 != spec.P1P2_NONE or cmd.p2 != spec.P1P2_NONE:
            raise ApduError(SW.INCORRECT_P1P2)
        if bool(cmd.data) != data:
            raise ApduError(SW.WRONG_LENGTH)

    # -- personalisation (GPC 2.3.1 section 11.11, STORE DATA through the ISD) -----------------
    def store_data(self, dgi: int, value: bytes) -> None:
        if self._personalised():
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        if dgi == Dgi.MASTER_KEY:
            if not spec.MASTER_KEY_MIN <= len(value) <= spec.MASTER_KEY_MAX:
                raise ApduError(SW.WRONG_DATA)
            self.store(_MASTER, value)
        elif dgi == Dgi.IDENTITY_ALG:
            if len(value) != 1 or value[0] not in spec.IDENTITY_ALGS:
                raise ApduError(SW.WRONG_DATA)
            self.store(_ALG, value)
        elif dgi == Dgi.REKEY_AUTHORITY:
            self.store(_AUTHORITY, _check_authority_spki(value))
        else:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)

    def end_personalisation(self) -> None:
        if self._personalised() or any(self.load(name) is None for name in _MANDATORY):
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        self.ctx.services.set_app_life_cycle(self.AID, APP_PERSONALISED)

    # -- PROVISION ------------------------------------------------------------------------------
    @handles(Ins.PROVISION, cla=ClaClass.PROPRIETARY)
    def provision(self, cmd: CommandApdu) -> bytes:
        self._operational(cmd)
        identity = self.identity
        if identity.provisioned:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        alg = self._configured_alg()
        private: PrivateKey
        if alg.is_ec:
            master = self.load(_MASTER)
            if master is None:
                raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
            generation = self._counter_value(_GENERATION)
            private = derive_identity_key(master, self.ctx.services.uid, alg, generation)
        else:
            # No deterministic RSA key generation in cryptography: the card's RNG makes the key.
            private = rsa.generate_private_key(public_exponent=65537, key_size=alg.size_bits)
        return _spki(identity.provision(private))

    # -- GET PUBLIC KEY, GET STATE -------------------------------------------------------------
    @handles(Ins.GET_PUBLIC_KEY, cla=ClaClass.PROPRIETARY)
    def get_public_key(self, cmd: CommandApdu) -> bytes:
        self._operational(cmd)
        identity = self.identity
        public = identity.active_public_key()  # 6985 when none is active
        alg = identity.alg
        if alg is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        return (
            tlv(Tag.PUBLIC_KEY, _spki(public))
            + tlv(Tag.EPOCH, _u32(identity.epoch))
            + tlv(Tag.ALGORITHM, bytes([alg]))
        )

    @handles(Ins.GET_STATE, cla=ClaClass.PROPRIETARY)
    def get_state(self, cmd: CommandApdu) -> bytes:
        self._operational(cmd)
        identity = self.identity
        return (
            tlv(Tag.PROVISIONED, b"\x01" if identity.provisioned else b"\x00")
            + tlv(Tag.EPOCH, _u32(identity.epoch))
            + tlv(Tag.ALGORITHM, bytes([self._configured_alg()]))
            + tlv(Tag.GENERATION, _u32(self._counter_value(_GENERATION)))
            + tlv(Tag.REKEY_COUNTER, _u32(self._counter_value(_COUNTER)))
            + tlv(Tag.CHALLENGE_PENDING, b"\x01" if self.load(_CHALLENGE) else b"\x00")
            + tlv(Tag.UID, self.ctx.services.uid)
        )

    # -- the admin re-key ceremony -------------------------------------------------------------
    @handles(Ins.GET_REKEY_CHALLENGE, cla=ClaClass.PROPRIETARY)
    def get_rekey_challenge(self, cmd: CommandApdu) -> bytes:
        self._operational(cmd)
        if not self.identity.provisioned:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        counter = self._counter_value(_COUNTER)
        if counter >= _U32_MAX or self._counter_value(_GENERATION) >= _U32_MAX:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)  # the counters are exhausted
        nonce = secrets.token_bytes(spec.NONCE_LEN)  # the card's RNG
        self.store(_CHALLENGE, _u32(counter) + nonce)
        return nonce

    @handles(Ins.REKEY, cla=ClaClass.PROPRIETARY)
    def rekey(self, cmd: CommandApdu) -> bytes:
        self._operational(cmd, data=True)
        if len(cmd.data) > spec.REKEY_SIGNATURE_MAX:
            raise ApduError(SW.WRONG_LENGTH)
        identity = self.identity
        challenge = self.load(_CHALLENGE)
        if not identity.provisioned or challenge is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        counter = self._counter_value(_COUNTER)
        stored_counter = int.from_bytes(challenge[: spec.COUNTER_LEN], "big")
        if stored_counter != counter:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)  # a stale challenge: ask for a new one
        signature = _canonical_ecdsa_der(cmd.data)
        authority = self._authority()
        hash_name = spec.REKEY_AUTHORITY_HASHES.get(authority.curve.name)
        if hash_name is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        tbs = spec.rekey_tbs(self.ctx.services.uid, counter, challenge[spec.COUNTER_LEN :])
        try:
            authority.verify(signature, tbs, ec.ECDSA(_HASHES[hash_name]))
        except InvalidSignature:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED) from None
        # Authorised: one transaction (the card's per-APDU NVM commit) does all of it.
        identity.unprovision()
        self.store(_GENERATION, _u32(self._counter_value(_GENERATION) + 1))
        self.store(_COUNTER, _u32(counter + 1))
        self.erase(_CHALLENGE)
        return b""


def _check_authority_spki(value: bytes) -> bytes:
    """SubjectPublicKeyInfo DER of an EC P-256/P-384 key, canonical; else 6A80."""
    try:
        key = serialization.load_der_public_key(value)
    except (ValueError, UnsupportedAlgorithm):
        raise ApduError(SW.WRONG_DATA) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ApduError(SW.WRONG_DATA)
    if key.curve.name not in spec.REKEY_AUTHORITY_HASHES:
        raise ApduError(SW.WRONG_DATA)
    if _spki(key) != value:
        raise ApduError(SW.WRONG_DATA)  # trailing bytes or a non-canonical encoding
    return value


def _canonical_ecdsa_der(data: bytes) -> bytes:
    """The data field of REKEY must be a DER ECDSA-Sig-Value (SEC 1 section C.8); else 6A80."""
    try:
        r, s = decode_dss_signature(data)
    except ValueError:
        raise ApduError(SW.WRONG_DATA) from None
    if r <= 0 or s <= 0 or encode_dss_signature(r, s) != data:
        raise ApduError(SW.WRONG_DATA)
    return data
