"""AES glue (iotid.crypto.aes) against published NIST/IETF vectors.

Sources: RFC 4493 §4 (AES-CMAC examples 1 and 2); NIST SP 800-38A Appendix F.1.1 (ECB-AES128)
and F.2.1/F.2.2 (CBC-AES128, first two blocks); the GP test key KCV 504A77 from
martinpaljak/GlobalPlatformPro library/src/test/java/pro/javacard/gp/test/TestPlaintextKeys.java
(commit 7f524e3fe96b0ee8d69ae72b7bca285615a30773).
"""

from __future__ import annotations

import pytest

from iotid.crypto import (
    aes_cbc_decrypt,
    aes_cbc_encrypt,
    aes_cmac,
    aes_encrypt_block,
    aes_kcv,
)

h = bytes.fromhex

NIST_KEY = h("2B7E151628AED2A6ABF7158809CF4F3C")
NIST_PLAIN = h("6BC1BEE22E409F96E93D7E117393172AAE2D8A571E03AC9C9EB76FAC45AF8E51")
NIST_IV = h("000102030405060708090A0B0C0D0E0F")
NIST_CBC = h("7649ABAC8119B246CEE98E9B12E9197D5086CB9B507219EE95DB113A917678B2")


def test_cmac_rfc4493() -> None:
    assert aes_cmac(NIST_KEY, b"") == h("BB1D6929E95937287FA37D129B756746")
    assert aes_cmac(NIST_KEY, NIST_PLAIN[:16]) == h("070A16B46B4D4144F79BDD9DD04A287C")


def test_single_block_sp800_38a_ecb() -> None:
    assert aes_encrypt_block(NIST_KEY, NIST_PLAIN[:16]) == h("3AD77BB40D7A3660A89ECAF32466EF97")


def test_cbc_sp800_38a() -> None:
    assert aes_cbc_encrypt(NIST_KEY, NIST_IV, NIST_PLAIN) == NIST_CBC
    assert aes_cbc_decrypt(NIST_KEY, NIST_IV, NIST_CBC) == NIST_PLAIN


def test_cbc_empty_data_is_empty() -> None:
    assert aes_cbc_encrypt(NIST_KEY, NIST_IV, b"") == b""


def test_kcv_of_gp_test_key() -> None:
    assert aes_kcv(bytes(range(0x40, 0x50))) == h("504A77")
    assert aes_kcv(NIST_KEY) == aes_encrypt_block(NIST_KEY, b"\x01" * 16)[:3]


@pytest.mark.parametrize("length", [16, 24, 32])
def test_all_aes_key_lengths(length: int) -> None:
    key = bytes(range(length))
    block = aes_encrypt_block(key, bytes(16))
    assert len(block) == 16
    assert aes_cbc_decrypt(key, bytes(16), aes_cbc_encrypt(key, bytes(16), NIST_PLAIN)) == (
        NIST_PLAIN
    )
    assert len(aes_cmac(key, b"abc")) == 16


def test_bad_inputs_raise_without_echoing_secrets() -> None:
    bad_key = b"\x11" * 15
    with pytest.raises(ValueError, match="16, 24 or 32") as info:
        aes_cmac(bad_key, b"")
    assert bad_key.hex() not in str(info.value)
    with pytest.raises(ValueError, match="multiple of 16"):
        aes_cbc_encrypt(NIST_KEY, NIST_IV, b"\x00" * 15)
    with pytest.raises(ValueError, match="multiple of 16"):
        aes_cbc_decrypt(NIST_KEY, NIST_IV, b"\x00" * 17)
    with pytest.raises(ValueError, match="IV"):
        aes_cbc_encrypt(NIST_KEY, bytes(8), bytes(16))
    with pytest.raises(ValueError, match="exactly 16"):
        aes_encrypt_block(NIST_KEY, bytes(32))
