"""SCP03 derivations (iotid.scp03.kdf): layout checked against a direct CMAC, and input checks."""

from __future__ import annotations

import os

import pytest

from iotid.crypto import aes_cbc_encrypt, aes_cmac, aes_encrypt_block
from iotid.scp03 import (
    DerivationConstant,
    StaticKeys,
    card_cryptogram,
    decrypt_sensitive,
    derive,
    derive_session_keys,
    encrypt_sensitive,
    host_cryptogram,
    pseudo_random_challenge,
)

KEY = bytes(range(16))
CONTEXT = bytes(range(100, 116))


def _block(key: bytes, constant: int, bits: int, i: int, context: bytes) -> bytes:
    # Amd D §4.1.5 written out by hand: 00 x 11 || const || 00 || L || i || context.
    message = bytes(11) + bytes([constant, 0]) + bits.to_bytes(2, "big") + bytes([i]) + context
    return aes_cmac(key, message)


@pytest.mark.parametrize("bits", [0x40, 0x80, 0xC0, 0x100])
def test_derive_matches_the_specified_layout(bits: int) -> None:
    expected = b"".join(_block(KEY, 0x04, bits, i, CONTEXT) for i in (1, 2))[: bits // 8]
    assert derive(KEY, 0x04, CONTEXT, bits) == expected


def test_length_is_part_of_the_input() -> None:
    assert derive(KEY, 0x06, CONTEXT, 0x100)[:16] != derive(KEY, 0x06, CONTEXT, 0x80)


def test_derivation_constants() -> None:
    assert [int(c) for c in DerivationConstant] == [0x00, 0x01, 0x02, 0x04, 0x06, 0x07]


@pytest.mark.parametrize(
    ("constant", "bits"), [(-1, 0x80), (0x100, 0x80), (4, 0), (4, 7), (4, 0xFF * 128 + 8)]
)
def test_derive_rejects_bad_parameters(constant: int, bits: int) -> None:
    with pytest.raises(ValueError):
        derive(KEY, constant, CONTEXT, bits)


@pytest.mark.parametrize("length", [16, 24, 32])
def test_session_keys_have_the_static_key_length(length: int) -> None:
    static = StaticKeys(os.urandom(length), os.urandom(length), os.urandom(length))
    host_challenge, card_challenge = os.urandom(8), os.urandom(8)
    keys = derive_session_keys(static, host_challenge, card_challenge)
    context = host_challenge + card_challenge
    assert keys.key_length == length
    assert keys.s_enc == derive(static.enc, 0x04, context, 8 * length)
    assert keys.s_mac == derive(static.mac, 0x06, context, 8 * length)
    assert keys.s_rmac == derive(static.mac, 0x07, context, 8 * length)
    assert len({keys.s_enc, keys.s_mac, keys.s_rmac}) == 3
    card = card_cryptogram(keys.s_mac, host_challenge, card_challenge)
    host = host_cryptogram(keys.s_mac, host_challenge, card_challenge)
    assert card == _block(keys.s_mac, 0x00, 0x40, 1, context)[:8]
    assert host == _block(keys.s_mac, 0x01, 0x40, 1, context)[:8]


@pytest.mark.parametrize(("host", "card"), [(bytes(7), bytes(8)), (bytes(8), bytes(16))])
def test_challenges_must_be_8_bytes(host: bytes, card: bytes) -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        derive_session_keys(StaticKeys.gp_test_keys(), host, card)
    with pytest.raises(ValueError, match="8 bytes"):
        card_cryptogram(KEY, host, card)
    with pytest.raises(ValueError, match="8 bytes"):
        host_cryptogram(KEY, host, card)


def test_pseudo_random_challenge_layout_and_limits() -> None:
    aid = bytes.fromhex("A000000151000000")
    expected = _block(KEY, 0x02, 0x40, 1, bytes.fromhex("000102") + aid)[:8]
    assert pseudo_random_challenge(KEY, 0x000102, aid) == expected
    assert len(pseudo_random_challenge(KEY, 0xFFFFFF, aid)) == 8
    with pytest.raises(ValueError, match="3 bytes"):
        pseudo_random_challenge(KEY, 0x1000000, aid)
    with pytest.raises(ValueError, match="3 bytes"):
        pseudo_random_challenge(KEY, -1, aid)
    with pytest.raises(ValueError, match="AID"):
        pseudo_random_challenge(KEY, 1, bytes(4))
    with pytest.raises(ValueError, match="AID"):
        pseudo_random_challenge(KEY, 1, bytes(17))


@pytest.mark.parametrize("length", [16, 32, 48])
def test_sensitive_data_round_trip(length: int) -> None:
    dek = os.urandom(16)
    data = os.urandom(length)
    encrypted = encrypt_sensitive(dek, data)
    assert encrypted == aes_cbc_encrypt(dek, bytes(16), data)
    assert encrypted[:16] == aes_encrypt_block(dek, data[:16])  # zero ICV
    assert decrypt_sensitive(dek, encrypted) == data


@pytest.mark.parametrize("bad", [b"", bytes(15), bytes(24)])
def test_sensitive_data_must_be_blocks(bad: bytes) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        encrypt_sensitive(KEY, bad)
    with pytest.raises(ValueError, match="multiple of 16"):
        decrypt_sensitive(KEY, bad)
