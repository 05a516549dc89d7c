"""AES glue over ``cryptography``: CMAC, raw CBC, one-block encryption, the GP key check value.

Scope: thin, typed wrappers that fix the modes GlobalPlatform uses (GPC 2.3.1 §B.2.1 encryption,
§B.2.2 MACing, Amd D §6.2.6/§6.2.7 ICVs, key check values of §11.8.2.3). Every primitive comes
from ``cryptography``. Not covered: padding (see :mod:`iotid.crypto.padding`), AEAD, key storage.
Errors never contain key or data bytes.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

__all__ = [
    "AES_BLOCK",
    "AES_KEY_LENGTHS",
    "aes_cbc_decrypt",
    "aes_cbc_encrypt",
    "aes_cmac",
    "aes_encrypt_block",
    "aes_kcv",
]

#: AES block size in bytes.
AES_BLOCK = 16
#: Valid AES key lengths in bytes (AES-128, AES-192, AES-256).
AES_KEY_LENGTHS = frozenset({16, 24, 32})
#: GP key check value: the first 3 bytes of AES_K(01 x 16) (GPC 2.3.1 §11.8.2.3, PUT KEY).
_KCV_BLOCK = b"\x01" * AES_BLOCK
_KCV_LENGTH = 3


def _algorithm(key: bytes) -> algorithms.AES:
    if len(key) not in AES_KEY_LENGTHS:
        raise ValueError("AES key must be 16, 24 or 32 bytes")
    return algorithms.AES(key)


def _check_blocks(data: bytes) -> None:
    if len(data) % AES_BLOCK:
        raise ValueError("data length must be a multiple of 16 bytes")


def _check_iv(iv: bytes) -> None:
    if len(iv) != AES_BLOCK:
        raise ValueError("IV must be 16 bytes")


def aes_cmac(key: bytes, data: bytes) -> bytes:
    """AES-CMAC (NIST SP 800-38B), full 16-byte tag."""
    mac = CMAC(_algorithm(key))
    mac.update(data)
    return mac.finalize()


def aes_cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-CBC encryption without padding; ``data`` must be a multiple of 16 bytes."""
    _check_iv(iv)
    _check_blocks(data)
    encryptor = Cipher(_algorithm(key), modes.CBC(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def aes_cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-CBC decryption without unpadding; ``data`` must be a multiple of 16 bytes."""
    _check_iv(iv)
    _check_blocks(data)
    decryptor = Cipher(_algorithm(key), modes.CBC(iv)).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def aes_encrypt_block(key: bytes, block16: bytes) -> bytes:
    """Encrypt exactly one 16-byte block (for SCP03 ICVs and key check values)."""
    if len(block16) != AES_BLOCK:
        raise ValueError("block must be exactly 16 bytes")
    # One block only, so ECB is the raw block cipher here, never a mode over a message.
    encryptor = Cipher(_algorithm(key), modes.ECB()).encryptor()  # noqa: S305
    return encryptor.update(block16) + encryptor.finalize()


def aes_kcv(key: bytes) -> bytes:
    """GlobalPlatform AES key check value: first 3 bytes of AES_K(01 x 16)."""
    return aes_encrypt_block(key, _KCV_BLOCK)[:_KCV_LENGTH]
