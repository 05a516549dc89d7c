"""Optional backend for tlslite-ng: AES-GCM and X25519 from ``cryptography`` (DESIGN.md §7).

Scope: :func:`enable_cryptography_backend`. tlslite-ng 0.8.2 has no public hook for another
crypto backend: its cipher factory only knows M2Crypto, pycryptodome and pure Python, and the
X25519 function is a module global of ``tlslite.keyexchange``. The function rebinds exactly those
two names (``tlslite.recordlayer.createAESGCM``, ``tlslite.keyexchange.x25519``), process-wide,
after a self-test against tlslite's own implementations. Same outputs, same failure behaviour.

Not in scope: other ciphers (ChaCha20-Poly1305 and the rest stay tlslite's), other key exchanges,
undoing the switch, the SE key adapters (:mod:`iotid.host.tls_keys`) and connecting
(:mod:`iotid.host.tls`, which re-exports :func:`enable_cryptography_backend`).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tlslite import keyexchange, recordlayer  # type: ignore[import-untyped]
from tlslite.utils import python_aesgcm  # type: ignore[import-untyped]
from tlslite.utils import x25519 as tl_x25519

__all__ = ["enable_cryptography_backend"]


class _AesGcm:
    """tlslite's AEAD object interface (utils/aesgcm.py) over cryptography's AESGCM."""

    isBlockCipher = False  # noqa: N815 - tlslite's attribute names
    isAEAD = True  # noqa: N815
    nonceLength = 12  # noqa: N815
    tagLength = 16  # noqa: N815
    implementation = "cryptography"

    def __init__(self, key: bytes | bytearray) -> None:
        self.name = {16: "aes128gcm", 32: "aes256gcm"}[len(key)]
        self._aead = AESGCM(bytes(key))

    def __repr__(self) -> str:
        return f"_AesGcm({self.name})"

    def seal(self, nonce: bytes, plaintext: bytes, data: bytes) -> bytearray:
        return bytearray(self._aead.encrypt(bytes(nonce), bytes(plaintext), bytes(data)))

    def open(self, nonce: bytes, ciphertext: bytes, data: bytes) -> bytearray | None:
        try:  # tlslite's contract: None when the tag does not verify
            return bytearray(self._aead.decrypt(bytes(nonce), bytes(ciphertext), bytes(data)))
        except InvalidTag:
            return None


def _create_aesgcm(key: bytes | bytearray, implList: object = None) -> _AesGcm:  # noqa: N803
    return _AesGcm(key)


def _x25519(k: bytes | bytearray, u: bytes | bytearray) -> bytearray:
    """RFC 7748 X25519(k, u) as tlslite calls it (generator or peer share)."""
    priv = x25519.X25519PrivateKey.from_private_bytes(bytes(k))
    try:
        return bytearray(priv.exchange(x25519.X25519PublicKey.from_public_bytes(bytes(u))))
    except ValueError:  # all-zero output: tlslite's own check then raises its alert
        return bytearray(32)


def enable_cryptography_backend() -> None:
    """Route tlslite's AES-GCM and X25519 to ``cryptography`` (idempotent, process-wide)."""
    if recordlayer.createAESGCM is _create_aesgcm:
        return
    key, nonce, msg, ad = os.urandom(16), os.urandom(12), os.urandom(40), os.urandom(13)
    ours = _AesGcm(key).seal(nonce, msg, ad)
    if ours != python_aesgcm.new(bytearray(key)).seal(bytearray(nonce), bytearray(msg), ad):
        raise RuntimeError("AES-GCM self-test against tlslite failed")
    k = bytearray(os.urandom(32))
    base = bytearray(tl_x25519.X25519_G)
    if _x25519(k, base) != tl_x25519.x25519(k, base):
        raise RuntimeError("X25519 self-test against tlslite failed")
    recordlayer.createAESGCM = _create_aesgcm
    keyexchange.x25519 = _x25519
