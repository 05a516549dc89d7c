"""The device identity key, shared by the provisioning, attestation, mTLS and rotation applets.

Scope: the one *active* identity key (a non-extractable key store slot), its epoch, the
*provisioned* flag, a *pending* key during a rotation, and *retired* keys kept decrypt-only until
they are destroyed. Every method runs inside the card's per-APDU NVM transaction, so each change
below is atomic: whatever instant the power is cut, the card holds exactly one active key (or,
before the first provisioning, none).

On a real card this is a shareable interface between applets of one executable load file.
Not in scope: the policies (who may provision, rotate or purge: the applets decide), wire formats.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from iotid.apdu import ApduError
from iotid.se.keystore import KeyStore, PrivateKey, PublicKey
from iotid.se.nvm import Nvm
from iotid.spec.algorithms import KeyAlg
from iotid.spec.iso7816 import SW

ACTIVE_SLOT = "identity.active"
PENDING_SLOT = "identity.pending"
_RETIRED_PREFIX = "identity.retired."
_R = "id/"


class IdentityStore:
    """View over NVM records ``id/*`` and key slots ``identity.*``."""

    def __init__(self, nvm: Nvm, keys: KeyStore) -> None:
        self._nvm = nvm
        self._keys = keys

    def __repr__(self) -> str:
        return f"IdentityStore(provisioned={self.provisioned}, epoch={self.epoch})"

    # -- state --------------------------------------------------------------------------------
    @property
    def provisioned(self) -> bool:
        return self._nvm.get(_R + "provisioned") == b"\x01"

    @property
    def epoch(self) -> int:
        raw = self._nvm.get(_R + "epoch")
        return int.from_bytes(raw, "big") if raw else 0

    @property
    def alg(self) -> KeyAlg | None:
        return self._keys.alg(ACTIVE_SLOT) if self._keys.has(ACTIVE_SLOT) else None

    def require_active(self) -> None:
        """6985 unless an identity key is active."""
        if not self.provisioned or not self._keys.has(ACTIVE_SLOT):
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)

    def _set_epoch(self, epoch: int) -> None:
        self._nvm.put(_R + "epoch", epoch.to_bytes(4, "big"))

    # -- the active key -----------------------------------------------------------------------
    def active_public_key(self) -> PublicKey:
        self.require_active()
        return self._keys.public_key(ACTIVE_SLOT)

    def sign_digest(self, digest: bytes, hash_name: str, *, pss: bool = True) -> bytes:
        self.require_active()
        return self._keys.sign_digest(ACTIVE_SLOT, digest, hash_name, pss=pss)

    def sign(self, message: bytes, hash_name: str, *, pss: bool = True) -> bytes:
        self.require_active()
        return self._keys.sign(ACTIVE_SLOT, message, hash_name, pss=pss)

    def ecdh_active(self, peer: ec.EllipticCurvePublicKey) -> bytes:
        self.require_active()
        return self._keys.ecdh(ACTIVE_SLOT, peer)

    def private_key_for_card_use(self) -> PrivateKey:
        """The active key object, for card-internal builders that sign with it (e.g. a CSR built
        and signed inside the card). Never serialise it or hand it out of the card."""
        self.require_active()
        return self._keys._private(ACTIVE_SLOT)

    # -- provisioning -------------------------------------------------------------------------
    def provision(self, private: PrivateKey) -> PublicKey:
        """Install the first identity key (epoch 1); 6985 if already provisioned."""
        if self.provisioned:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        self._keys.put_private(ACTIVE_SLOT, private)
        self._set_epoch(self.epoch + 1)
        self._nvm.put(_R + "provisioned", b"\x01")
        return private.public_key()

    def unprovision(self) -> None:
        """Admin re-key: the active and pending keys are destroyed, retired keys stay."""
        self._keys.destroy(ACTIVE_SLOT)
        self._keys.destroy(PENDING_SLOT)
        self._nvm.delete(_R + "provisioned")

    # -- rotation -----------------------------------------------------------------------------
    def generate_pending(self, alg: KeyAlg) -> PublicKey:
        """A fresh key pair for epoch + 1; replaces any earlier pending key."""
        self.require_active()
        return self._keys.generate(PENDING_SLOT, alg)

    def pending_public_key(self) -> PublicKey | None:
        return self._keys.public_key(PENDING_SLOT) if self._keys.has(PENDING_SLOT) else None

    def sign_with_pending(self, message: bytes, hash_name: str, *, pss: bool = True) -> bytes:
        if not self._keys.has(PENDING_SLOT):
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        return self._keys.sign(PENDING_SLOT, message, hash_name, pss=pss)

    def discard_pending(self) -> None:
        self._keys.destroy(PENDING_SLOT)

    def commit_pending(self) -> int:
        """Pending becomes active (epoch + 1), the old active key is retired; the new epoch."""
        self.require_active()
        if not self._keys.has(PENDING_SLOT):
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        old = self.epoch
        self._keys.move(ACTIVE_SLOT, _RETIRED_PREFIX + str(old))
        self._keys.move(PENDING_SLOT, ACTIVE_SLOT)
        self._set_epoch(old + 1)
        return old + 1

    # -- retired keys -------------------------------------------------------------------------
    def retired_epochs(self) -> list[int]:
        out = []
        for info in self._keys.slots():
            if info.slot.startswith(_RETIRED_PREFIX):
                out.append(int(info.slot[len(_RETIRED_PREFIX) :]))
        return sorted(out)

    def ecdh_retired(self, epoch: int, peer: ec.EllipticCurvePublicKey) -> bytes:
        slot = _RETIRED_PREFIX + str(epoch)
        if not self._keys.has(slot):
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        return self._keys.ecdh(slot, peer)

    def retired_public_key(self, epoch: int) -> PublicKey:
        slot = _RETIRED_PREFIX + str(epoch)
        if not self._keys.has(slot):
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        return self._keys.public_key(slot)

    def decrypt_oaep_retired(
        self, epoch: int, ciphertext: bytes, hash_name: str = "sha256"
    ) -> bytes:
        """RSA fleets: OAEP decryption with a retired RSA key (ValueError if it fails)."""
        slot = _RETIRED_PREFIX + str(epoch)
        if not self._keys.has(slot):
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        return self._keys.decrypt_oaep(slot, ciphertext, hash_name)

    def destroy_retired(self, epoch: int) -> None:
        self._keys.destroy(_RETIRED_PREFIX + str(epoch))
