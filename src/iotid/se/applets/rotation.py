"""The key rotation applet (DESIGN.md section 6.5; wire contract in ``iotid.spec.rotation``).

Scope: ROTATE makes a pending identity key on the card and returns it with a proof of continuity
signed by the current key over the fleet's nonce and the next epoch; COMMIT promotes it once the
fleet's rotation authority has acknowledged exactly that key, epoch and nonce, retires the old key
and applies the retention policy; ABORT drops the pending key; GET STATE reports; DECRYPT lets the
current key decrypt (ECIES or the RSA-OAEP hybrid of ``iotid.crypto.ecies``) what the fleet
encrypts to it (commands), and a retained retired key what was encrypted to it earlier; PURGE
zeroises a retired key on the authority's word. Retired keys never sign: no command here signs
with them.

Every command runs in the card's per-APDU NVM transaction (``iotid.se.card``): the pending key and
its nonce are written together, and COMMIT's promotion, retirement, retention and clearing are
one atomic step, so a power cut leaves exactly one active identity key (the old one, or the new
one with the old retired).

Not covered: the identity key store itself (``iotid.se.identity``), first provisioning (the
provisioning applet), what the fleet does with the proof (``iotid.host.rotation`` builds the
fleet's byte strings from ``iotid.spec.rotation``).
"""

from __future__ import annotations

from typing import ClassVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotid.apdu import ApduError, CommandApdu, tlv
from iotid.crypto import ecies, identity_rule
from iotid.se.applet import Applet, ClaClass, handles
from iotid.se.identity import ACTIVE_SLOT, IdentityStore
from iotid.se.keystore import PublicKey
from iotid.spec import identity as spec_identity
from iotid.spec import rotation as spec
from iotid.spec.iso7816 import SW

_AUTHORITY = "authority"  # SPKI DER (DGI 0501)
_RETENTION = "retention"  # u16 (DGI 0502)
_PENDING = "pending"  # new epoch (u32) || SHA-256(new SPKI) || fleet nonce
_DIGEST_LEN = 32


def _spki(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _hash(name: str) -> hashes.HashAlgorithm:
    return hashes.SHA384() if name == "sha384" else hashes.SHA256()


def _load_authority(der: bytes) -> PublicKey:
    """Parse and vet DGI 0501; 6A80 unless EC P-256/P-384 or RSA 2048..4096 bits."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError):
        raise ApduError(SW.WRONG_DATA) from None
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in spec.EC_HASH_BY_CURVE:
        return key
    if (
        isinstance(key, rsa.RSAPublicKey)
        and spec.AUTHORITY_RSA_MIN_BITS <= key.key_size <= spec.AUTHORITY_RSA_MAX_BITS
    ):
        return key
    raise ApduError(SW.WRONG_DATA)


def _verify(key: PublicKey, signature: bytes, message: bytes) -> bool:
    """The signature rule of ``iotid.spec.rotation`` (``iotid.crypto.identity_rule``)."""
    return identity_rule.verify(key, signature, message)


class RotationApplet(Applet):
    """Rotation of the shared identity key (``IdentityStore``)."""

    AID: ClassVar[bytes] = spec.AID
    NAME: ClassVar[str] = "rotation"
    ELF_AID: ClassVar[bytes] = spec_identity.ELF_AID
    INITIAL_LIFE_CYCLE: ClassVar[int] = 0x07  # SELECTABLE

    @property
    def _identity(self) -> IdentityStore:
        return IdentityStore(self.ctx.nvm, self.ctx.keys)

    # -- personalisation (GPC 2.3.1 section 11.11, STORE DATA in DGI format) ---------------------
    def _personalised(self) -> bool:
        return self.ctx.services.app_life_cycle(self.AID) == spec_identity.APP_PERSONALISED

    def store_data(self, dgi: int, value: bytes) -> None:
        if self._personalised():
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        if dgi == spec.Dgi.AUTHORITY_KEY:
            _load_authority(value)
            self.store(_AUTHORITY, value)
        elif dgi == spec.Dgi.RETENTION:
            if len(value) != spec.RETENTION_LEN:
                raise ApduError(SW.WRONG_DATA)
            self.store(_RETENTION, value)
        else:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)

    def end_personalisation(self) -> None:
        if self._personalised():
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        if self.load(_AUTHORITY) is None or self.load(_RETENTION) is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        self.ctx.services.set_app_life_cycle(self.AID, spec_identity.APP_PERSONALISED)

    # -- common checks ---------------------------------------------------------------------------
    def _ready(self, cmd: CommandApdu, *, p1p2_is_epoch: bool = False) -> IdentityStore:
        """6985 before personalisation or without an active key; 6A86 on a bad P1/P2."""
        if not self._personalised():
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        identity = self._identity
        identity.require_active()
        epoch = (cmd.p1 << 8) | cmd.p2
        if (epoch == 0) if p1p2_is_epoch else (epoch != 0):
            raise ApduError(SW.INCORRECT_P1P2)
        return identity

    def _retention(self) -> int:
        raw = self.load(_RETENTION)
        if raw is None:  # personalised implies present; treat a gap as "keep nothing"
            return 0
        return int.from_bytes(raw, "big")

    def _authority(self) -> PublicKey:
        raw = self.load(_AUTHORITY)
        if raw is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        return _load_authority(raw)

    def _pending(self, identity: IdentityStore) -> tuple[int, bytes, bytes] | None:
        """(new epoch, new SPKI DER, nonce) when a ROTATE awaits COMMIT and still matches the
        identity store's pending key and epoch; None otherwise."""
        record = self.load(_PENDING)
        pending = identity.pending_public_key()
        if record is None or pending is None:
            return None
        head = spec.EPOCH_LEN + _DIGEST_LEN
        epoch = int.from_bytes(record[: spec.EPOCH_LEN], "big")
        spki = _spki(pending)
        if epoch != identity.epoch + 1 or record[spec.EPOCH_LEN : head] != spec.spki_digest(spki):
            return None
        return epoch, spki, record[head:]

    # -- ROTATE ----------------------------------------------------------------------------------
    @handles(spec.Ins.ROTATE, cla=ClaClass.PROPRIETARY)
    def rotate(self, cmd: CommandApdu) -> bytes:
        identity = self._ready(cmd)
        nonce = cmd.data
        if not spec.NONCE_MIN <= len(nonce) <= spec.NONCE_MAX:
            raise ApduError(SW.WRONG_LENGTH)
        alg = identity.alg
        new_epoch = identity.epoch + 1
        if alg is None or new_epoch >= 1 << (8 * spec.EPOCH_LEN):
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        # A second ROTATE replaces the pending key and its nonce.
        spki = _spki(identity.generate_pending(alg))
        uid = self.ctx.services.uid
        proof = identity.sign(spec.rotation_tbs(uid, new_epoch, spki, nonce), alg.hash_name)
        self.store(
            _PENDING, new_epoch.to_bytes(spec.EPOCH_LEN, "big") + spec.spki_digest(spki) + nonce
        )
        return (
            tlv(spec.Tag.EPOCH, new_epoch.to_bytes(spec.EPOCH_LEN, "big"))
            + tlv(spec.Tag.PUBLIC_KEY, spki)
            + tlv(spec.Tag.SIGNATURE, proof)
        )

    # -- COMMIT ----------------------------------------------------------------------------------
    @handles(spec.Ins.COMMIT, cla=ClaClass.PROPRIETARY)
    def commit(self, cmd: CommandApdu) -> bytes:
        identity = self._ready(cmd)
        pending = self._pending(identity)
        if pending is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        new_epoch, spki, nonce = pending
        tbs = spec.ack_tbs(self.ctx.services.uid, new_epoch, spki, nonce)
        if not cmd.data or not _verify(self._authority(), cmd.data, tbs):
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
        epoch = identity.commit_pending()
        self.erase(_PENDING)
        # Retention: keep the newest N retired keys, zeroise the older ones.
        retired = identity.retired_epochs()
        keep = self._retention()
        for old in retired[: max(0, len(retired) - keep)]:
            identity.destroy_retired(old)
        return tlv(spec.Tag.EPOCH, epoch.to_bytes(spec.EPOCH_LEN, "big"))

    # -- ABORT -----------------------------------------------------------------------------------
    @handles(spec.Ins.ABORT, cla=ClaClass.PROPRIETARY)
    def abort(self, cmd: CommandApdu) -> bytes:
        identity = self._ready(cmd)
        if cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        if self.load(_PENDING) is None and identity.pending_public_key() is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        identity.discard_pending()
        self.erase(_PENDING)
        return b""

    # -- GET STATE -------------------------------------------------------------------------------
    @handles(spec.Ins.GET_STATE, cla=ClaClass.PROPRIETARY)
    def get_state(self, cmd: CommandApdu) -> bytes:
        identity = self._ready(cmd)
        if cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        alg = identity.alg
        retired = b"".join(e.to_bytes(spec.EPOCH_LEN, "big") for e in identity.retired_epochs())
        return (
            tlv(spec.Tag.EPOCH, identity.epoch.to_bytes(spec.EPOCH_LEN, "big"))
            + tlv(spec.Tag.PENDING, b"\x01" if self._pending(identity) else b"\x00")
            + tlv(spec.Tag.RETIRED_EPOCHS, retired)
            + tlv(spec.Tag.RETENTION, self._retention().to_bytes(spec.RETENTION_LEN, "big"))
            + tlv(spec.Tag.ALGORITHM, bytes([alg]) if alg is not None else b"")
        )

    # -- DECRYPT (the current key, and retained retired keys) -------------------------------------
    @handles(spec.Ins.DECRYPT, cla=ClaClass.PROPRIETARY)
    def decrypt(self, cmd: CommandApdu) -> bytes:
        """P1P2 = the current epoch: the active key (the fleet's commands are encrypted to it);
        a retained retired epoch: that key (forensic decryption); any other epoch: 6A88."""
        identity = self._ready(cmd, p1p2_is_epoch=True)
        epoch = (cmd.p1 << 8) | cmd.p2
        if not cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        current = epoch == identity.epoch
        if current:
            recipient = identity.active_public_key()
        elif epoch in identity.retired_epochs():
            recipient = identity.retired_public_key(epoch)
        else:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        try:
            if isinstance(recipient, ec.EllipticCurvePublicKey):
                parsed = ecies.ecies_parse(cmd.data)
                if parsed.curve.name != recipient.curve.name:
                    raise ApduError(SW.WRONG_DATA)
                peer = parsed.ephemeral_public_key()
                shared = (
                    identity.ecdh_active(peer) if current else identity.ecdh_retired(epoch, peer)
                )
                return ecies.ecies_decrypt_with_shared_secret(shared, parsed, recipient=recipient)
            hybrid = ecies.rsa_hybrid_parse(cmd.data)
            if len(hybrid.wrapped_key) != (recipient.key_size + 7) // 8:
                raise ApduError(SW.WRONG_DATA)
            content_key = (
                self.ctx.keys.decrypt_oaep(ACTIVE_SLOT, hybrid.wrapped_key, "sha256")
                if current
                else identity.decrypt_oaep_retired(epoch, hybrid.wrapped_key, "sha256")
            )
            return ecies.rsa_hybrid_decrypt_with_content_key(content_key, hybrid)
        except ValueError:  # EciesError, OAEP failure: one status word for all (no oracle)
            raise ApduError(SW.WRONG_DATA) from None

    # -- PURGE -----------------------------------------------------------------------------------
    @handles(spec.Ins.PURGE, cla=ClaClass.PROPRIETARY)
    def purge(self, cmd: CommandApdu) -> bytes:
        identity = self._ready(cmd, p1p2_is_epoch=True)
        epoch = (cmd.p1 << 8) | cmd.p2
        if epoch not in identity.retired_epochs():
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        tbs = spec.purge_tbs(self.ctx.services.uid, epoch)
        if not cmd.data or not _verify(self._authority(), cmd.data, tbs):
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
        identity.destroy_retired(epoch)
        return b""
