"""SCP03 data derivation: session keys, cryptograms, pseudo-random card challenges, DEK encryption.

Scope: the Amendment D §4.1.5 derivation scheme (NIST SP 800-108 counter mode with AES-CMAC, the
counter between the fixed prefix and the context) via ``cryptography``'s ``KBKDFCMAC``, and its
uses: S-ENC/S-MAC/S-RMAC (§6.2.1), card challenge (§6.2.2.1), card and host cryptograms
(§6.2.2.2, §6.2.2.3), plus key-sensitive data encryption under Key-DEK (§6.2.8).
S8 mode only (8-byte challenges and cryptograms). Not covered: S16 mode, key diversification
from a master key, the secure-messaging state machine (:mod:`iotid.scp03.channel`).
"""

from __future__ import annotations

from enum import IntEnum, unique

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFCMAC, CounterLocation, Mode

from iotid.crypto import AES_BLOCK, aes_cbc_decrypt, aes_cbc_encrypt
from iotid.spec.gp import SEQUENCE_COUNTER_MAX

from .keys import SessionKeys, StaticKeys

__all__ = [
    "CHALLENGE_LENGTH",
    "CRYPTOGRAM_LENGTH",
    "DerivationConstant",
    "card_cryptogram",
    "decrypt_sensitive",
    "derive",
    "derive_session_keys",
    "encrypt_sensitive",
    "host_cryptogram",
    "pseudo_random_challenge",
]


@unique
class DerivationConstant(IntEnum):
    """Data derivation constants (Amd D §4.1.5, Table 4-1)."""

    CARD_CRYPTOGRAM = 0x00
    HOST_CRYPTOGRAM = 0x01
    CARD_CHALLENGE = 0x02
    S_ENC = 0x04
    S_MAC = 0x06
    S_RMAC = 0x07


#: S8 mode: host/card challenge and cryptogram lengths in bytes (Amd D §6.2.2).
CHALLENGE_LENGTH = 8
CRYPTOGRAM_LENGTH = 8

# Amd D §4.1.5: label = 11 x '00' || constant, then separation indicator '00', then L (2 bytes);
# the 1-byte counter "i" follows at offset 15, then the context.
_LABEL_ZEROS = bytes(11)
_SEPARATOR = b"\x00"
_COUNTER_OFFSET = 15
_COUNTER_BYTES = 1
_MAX_LENGTH_BITS = 0xFF * 8 * AES_BLOCK  # a 1-byte counter allows 255 CMAC blocks
_AID_MIN, _AID_MAX = 5, 16


def derive(key: bytes, constant: int, context: bytes, length_bits: int) -> bytes:
    """KDF(key, constant, context, L) of Amd D §4.1.5; returns ``length_bits // 8`` bytes.

    Each block is CMAC_key(00 x 11 || constant || 00 || L(2) || i(1) || context), i = 1, 2, ...
    """
    if not 0 <= constant <= 0xFF:
        raise ValueError("derivation constant must fit in one byte")
    if length_bits <= 0 or length_bits % 8 or length_bits > _MAX_LENGTH_BITS:
        raise ValueError("length must be a positive multiple of 8 bits, at most 32640")
    fixed = (
        _LABEL_ZEROS
        + bytes([constant])
        + _SEPARATOR
        + length_bits.to_bytes(2, "big")
        + bytes(context)
    )
    kdf = KBKDFCMAC(
        algorithms.AES,
        Mode.CounterMode,
        length_bits // 8,
        _COUNTER_BYTES,
        None,
        CounterLocation.MiddleFixed,
        None,
        None,
        fixed,
        break_location=_COUNTER_OFFSET,
    )
    return kdf.derive(key)


def _check_challenges(host_challenge: bytes, card_challenge: bytes) -> bytes:
    if len(host_challenge) != CHALLENGE_LENGTH or len(card_challenge) != CHALLENGE_LENGTH:
        raise ValueError("host and card challenges must be 8 bytes (S8 mode)")
    return bytes(host_challenge) + bytes(card_challenge)


def derive_session_keys(
    static: StaticKeys, host_challenge: bytes, card_challenge: bytes
) -> SessionKeys:
    """S-ENC, S-MAC, S-RMAC from the static keys and both challenges (Amd D §6.2.1, Table 6-2).

    L is the static key length in bits; the context is host challenge || card challenge.
    """
    context = _check_challenges(host_challenge, card_challenge)
    bits = 8 * static.key_length
    return SessionKeys(
        s_enc=derive(static.enc, DerivationConstant.S_ENC, context, bits),
        s_mac=derive(static.mac, DerivationConstant.S_MAC, context, bits),
        s_rmac=derive(static.mac, DerivationConstant.S_RMAC, context, bits),
    )


def card_cryptogram(s_mac: bytes, host_challenge: bytes, card_challenge: bytes) -> bytes:
    """Card authentication cryptogram, 8 bytes (Amd D §6.2.2.2)."""
    context = _check_challenges(host_challenge, card_challenge)
    return derive(s_mac, DerivationConstant.CARD_CRYPTOGRAM, context, 8 * CRYPTOGRAM_LENGTH)


def host_cryptogram(s_mac: bytes, host_challenge: bytes, card_challenge: bytes) -> bytes:
    """Host authentication cryptogram, 8 bytes (Amd D §6.2.2.3)."""
    context = _check_challenges(host_challenge, card_challenge)
    return derive(s_mac, DerivationConstant.HOST_CRYPTOGRAM, context, 8 * CRYPTOGRAM_LENGTH)


def pseudo_random_challenge(key_enc: bytes, sequence_counter: int, aid: bytes) -> bytes:
    """Pseudo-random card challenge, 8 bytes (Amd D §6.2.2.1).

    KDF(Key-ENC, '02', sequence counter (3 bytes) || AID of the security domain, 0x40). The caller
    increments the counter before calling and refuses INITIALIZE UPDATE once it is exhausted.
    """
    if not 0 <= sequence_counter <= SEQUENCE_COUNTER_MAX:
        raise ValueError("sequence counter must fit in 3 bytes")
    if not _AID_MIN <= len(aid) <= _AID_MAX:
        raise ValueError("AID must be 5 to 16 bytes")
    context = sequence_counter.to_bytes(3, "big") + bytes(aid)
    return derive(key_enc, DerivationConstant.CARD_CHALLENGE, context, 8 * CHALLENGE_LENGTH)


def _check_sensitive(data: bytes) -> None:
    if not data or len(data) % AES_BLOCK:
        raise ValueError("sensitive data must be a non-empty multiple of 16 bytes")


def encrypt_sensitive(dek: bytes, data: bytes) -> bytes:
    """Encrypt key-sensitive data under Key-DEK: AES-CBC, zero ICV, no padding (Amd D §6.2.8)."""
    _check_sensitive(data)
    return aes_cbc_encrypt(dek, bytes(AES_BLOCK), data)


def decrypt_sensitive(dek: bytes, data: bytes) -> bytes:
    """Decrypt key-sensitive data under Key-DEK: AES-CBC, zero ICV, no unpadding (Amd D §6.2.8)."""
    _check_sensitive(data)
    return aes_cbc_decrypt(dek, bytes(AES_BLOCK), data)
