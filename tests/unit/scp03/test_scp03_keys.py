"""Static and session key containers (iotid.scp03.keys)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from iotid.scp03 import SessionKeys, StaticKeys

GP_TEST_KEY = bytes(range(0x40, 0x50))


def test_gp_test_keys_only_by_name() -> None:
    keys = StaticKeys.gp_test_keys()
    assert keys.enc == keys.mac == keys.dek == GP_TEST_KEY
    assert keys.is_gp_test_keys()
    assert keys.key_length == 16
    with pytest.raises(TypeError):
        StaticKeys()  # type: ignore[call-arg]  # no silent default key set


def test_other_keys_are_not_test_keys() -> None:
    assert not StaticKeys(GP_TEST_KEY, GP_TEST_KEY, bytes(16)).is_gp_test_keys()
    assert not StaticKeys(os.urandom(16), os.urandom(16), os.urandom(16)).is_gp_test_keys()
    long_key = GP_TEST_KEY + bytes(16)
    assert not StaticKeys(long_key, long_key, long_key).is_gp_test_keys()


def test_kcvs() -> None:
    # GP test key KCV 504A77 (martinpaljak/GlobalPlatformPro TestPlaintextKeys.java).
    assert StaticKeys.gp_test_keys().kcvs() == (bytes.fromhex("504A77"),) * 3


@pytest.mark.parametrize("length", [16, 24, 32])
def test_repr_shows_lengths_and_kcvs_but_no_key_bytes(length: int) -> None:
    enc, mac, dek = os.urandom(length), os.urandom(length), os.urandom(length)
    keys = StaticKeys(enc, mac, dek)
    text = repr(keys) + str(keys) + f"{keys}"
    assert f"AES-{8 * length}" in text
    for kcv in keys.kcvs():
        assert kcv.hex().upper() in text
    for key in (enc, mac, dek):
        assert key.hex() not in text.lower()
        assert key.hex()[:8] not in text.lower()
    session = SessionKeys(enc, mac, dek)
    text = repr(session) + str(session)
    assert "redacted" in text
    for key in (enc, mac, dek):
        assert key.hex()[:8] not in text.lower()


@pytest.mark.parametrize("cls", [StaticKeys, SessionKeys])
def test_validation(cls: type[StaticKeys] | type[SessionKeys]) -> None:
    with pytest.raises(ValueError, match="same length"):
        cls(bytes(16), bytes(16), bytes(32))
    with pytest.raises(ValueError, match="16, 24 or 32"):
        cls(bytes(8), bytes(8), bytes(8))
    with pytest.raises(TypeError, match="bytes"):
        cls("00" * 16, bytes(16), bytes(16))  # type: ignore[arg-type]


def test_frozen_equal_and_unhashable() -> None:
    keys = StaticKeys.gp_test_keys()
    with pytest.raises(dataclasses.FrozenInstanceError):
        keys.enc = bytes(16)  # type: ignore[misc]
    assert keys == StaticKeys(GP_TEST_KEY, GP_TEST_KEY, GP_TEST_KEY)
    assert keys != StaticKeys(GP_TEST_KEY, GP_TEST_KEY, bytes(16))
    assert keys != "not keys"
    with pytest.raises(TypeError):
        hash(keys)
    session = SessionKeys(bytes(16), bytes(16), bytes(16))
    assert session == SessionKeys(bytes(16), bytes(16), bytes(16))
    assert session != SessionKeys(bytes(16), bytes(16), b"\x01" * 16)
