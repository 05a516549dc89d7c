"""Non-extractable key slots of the emulated secure element.

Scope: storing keys in NVM records, generating asymmetric keys on the card, and the operations
that use them (sign, ECDH, public key). Secret and private key material never leaves through
this API: there is no method that returns private key bytes to a caller outside the card, and
every object here redacts its ``repr``. Card-internal protocol code (the SCP03 secure channel)
needs symmetric key bytes to run its KDF; it gets them through :meth:`KeyStore.secret`, which
no APDU handler may echo.

Not in scope: which slot means what (the ISD and the applets name their slots), key derivation
policy (applets), and the wire encodings of public keys (``iotid.crypto``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from iotid.se.nvm import Nvm
from iotid.spec.algorithms import KeyAlg

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_PREFIX = "key/"
_CURVES: dict[KeyAlg, ec.EllipticCurve] = {
    KeyAlg.EC_P256: ec.SECP256R1(),
    KeyAlg.EC_P384: ec.SECP384R1(),
}


class KeyStoreError(Exception):
    """A slot is empty, of the wrong kind, or the operation does not fit the key."""


@dataclass(frozen=True)
class SlotInfo:
    """Public facts about a slot."""

    slot: str
    alg: KeyAlg

    def __repr__(self) -> str:
        return f"SlotInfo(slot={self.slot!r}, alg={self.alg.name})"


class KeyStore:
    """Key slots stored in NVM records ``key/<slot>`` (algorithm byte || material)."""

    def __init__(self, nvm: Nvm) -> None:
        self._nvm = nvm
        self._cache: dict[str, tuple[bytes, PrivateKey]] = {}

    def __repr__(self) -> str:
        return f"KeyStore(slots={len(self.slots())})"

    # -- inventory ----------------------------------------------------------------------------
    def slots(self) -> list[SlotInfo]:
        out = []
        for name in self._nvm.keys(_PREFIX):
            raw = self._nvm.get(name)
            if raw:
                out.append(SlotInfo(name[len(_PREFIX) :], KeyAlg(raw[0])))
        return out

    def has(self, slot: str) -> bool:
        return self._nvm.get(_PREFIX + slot) is not None

    def alg(self, slot: str) -> KeyAlg:
        return KeyAlg(self._raw(slot)[0])

    # -- creation -----------------------------------------------------------------------------
    def put_secret(self, slot: str, key: bytes) -> None:
        """Store a symmetric (AES) key delivered by personalisation."""
        alg = {16: KeyAlg.AES_128, 24: KeyAlg.AES_192, 32: KeyAlg.AES_256}.get(len(key))
        if alg is None:
            raise KeyStoreError("AES keys are 16, 24 or 32 bytes")
        self._nvm.put(_PREFIX + slot, bytes([alg]) + key)

    def generate(self, slot: str, alg: KeyAlg) -> PublicKey:
        """Generate a key pair on the card; only the public key is returned."""
        private: PrivateKey
        if alg.is_ec:
            private = ec.generate_private_key(_CURVES[alg])
        elif alg.is_rsa:
            private = rsa.generate_private_key(public_exponent=65537, key_size=alg.size_bits)
        else:
            raise KeyStoreError("generate() makes key pairs; use generate_secret() for AES")
        self.put_private(slot, private)
        return private.public_key()

    def generate_secret(self, slot: str, alg: KeyAlg) -> None:
        """Generate a symmetric key on the card."""
        if not alg.is_aes:
            raise KeyStoreError("generate_secret() makes AES keys")
        self.put_secret(slot, secrets.token_bytes(alg.size_bits // 8))

    def put_private(self, slot: str, private: PrivateKey) -> None:
        """Store a private key made on the card (generated or derived inside the card)."""
        if isinstance(private, ec.EllipticCurvePrivateKey):
            alg = KeyAlg.EC_P256 if private.curve.name == "secp256r1" else KeyAlg.EC_P384
            if private.curve.name not in ("secp256r1", "secp384r1"):
                raise KeyStoreError("only P-256 and P-384 curves")
        else:
            alg = {2048: KeyAlg.RSA_2048, 3072: KeyAlg.RSA_3072}.get(
                private.key_size, KeyAlg.RSA_2048
            )
            if private.key_size not in (2048, 3072):
                raise KeyStoreError("only RSA-2048 and RSA-3072")
        der = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._nvm.put(_PREFIX + slot, bytes([alg]) + der)

    def move(self, src: str, dst: str) -> None:
        """Re-label a slot (used to promote a pending key); the source slot is emptied."""
        self._nvm.put(_PREFIX + dst, self._raw(src))
        self._nvm.delete(_PREFIX + src)

    def destroy(self, slot: str) -> None:
        """Zeroise a slot for good."""
        if self.has(slot):
            self._nvm.delete(_PREFIX + slot)
        self._cache.pop(slot, None)

    # -- use ----------------------------------------------------------------------------------
    def secret(self, slot: str) -> bytes:
        """Symmetric key bytes, for card-internal protocol code only (never returned by an APDU)."""
        raw = self._raw(slot)
        if not KeyAlg(raw[0]).is_aes:
            raise KeyStoreError(f"slot {slot!r} holds no symmetric key")
        return raw[1:]

    def public_key(self, slot: str) -> PublicKey:
        return self._private(slot).public_key()

    def sign_digest(self, slot: str, digest: bytes, hash_name: str, *, pss: bool = True) -> bytes:
        """Sign a digest: ECDSA (DER) or RSA (PSS, salt = digest length; or PKCS#1 v1.5)."""
        key = self._private(slot)
        algorithm = _hash(hash_name)
        if len(digest) != algorithm.digest_size:
            raise KeyStoreError("digest length does not match the hash")
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(digest, ec.ECDSA(Prehashed(algorithm)))
        pad: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
            if pss
            else padding.PKCS1v15()
        )
        return key.sign(digest, pad, Prehashed(algorithm))

    def sign(self, slot: str, message: bytes, hash_name: str, *, pss: bool = True) -> bytes:
        """Hash ``message`` and sign it."""
        h = hashes.Hash(_hash(hash_name))
        h.update(message)
        return self.sign_digest(slot, h.finalize(), hash_name, pss=pss)

    def ecdh(self, slot: str, peer: ec.EllipticCurvePublicKey) -> bytes:
        """ECDH shared secret with the slot's EC key (the caller runs the KDF inside the card)."""
        key = self._private(slot)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeyStoreError(f"slot {slot!r} holds no EC key")
        return key.exchange(ec.ECDH(), peer)

    def decrypt_oaep(self, slot: str, ciphertext: bytes, hash_name: str = "sha256") -> bytes:
        """RSA-OAEP decryption with the slot's RSA key (MGF1 with the same hash, no label)."""
        key = self._private(slot)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeyStoreError(f"slot {slot!r} holds no RSA key")
        algorithm = _hash(hash_name)
        pad = padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=None)
        return key.decrypt(ciphertext, pad)

    # -- internals ----------------------------------------------------------------------------
    def _raw(self, slot: str) -> bytes:
        raw = self._nvm.get(_PREFIX + slot)
        if raw is None:
            raise KeyStoreError(f"slot {slot!r} is empty")
        return raw

    def _private(self, slot: str) -> PrivateKey:
        raw = self._raw(slot)
        if not (KeyAlg(raw[0]).is_ec or KeyAlg(raw[0]).is_rsa):
            raise KeyStoreError(f"slot {slot!r} holds no private key")
        cached = self._cache.get(slot)
        if cached is not None and cached[0] == raw:
            return cached[1]
        key = serialization.load_der_private_key(raw[1:], password=None)
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise KeyStoreError("unexpected key type in slot")
        self._cache[slot] = (raw, key)
        return key


def _hash(name: str) -> hashes.HashAlgorithm:
    table: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}
    try:
        return table[name]
    except KeyError:
        raise KeyStoreError(f"unsupported hash {name!r}") from None
