"""ISO/IEC 9797-1 method 2 padding (GPC 2.3.1 §B.2.3): iotid.crypto.padding."""

from __future__ import annotations

import pytest

from iotid.crypto import PaddingError, pad_iso9797_m2, unpad_iso9797_m2


@pytest.mark.parametrize("length", range(0, 50))
def test_pad_then_unpad_round_trips(length: int) -> None:
    data = bytes((i * 7 + 1) % 256 for i in range(length))
    padded = pad_iso9797_m2(data)
    assert len(padded) % 16 == 0
    assert len(data) < len(padded) <= len(data) + 16
    assert padded[: len(data)] == data
    assert padded[len(data)] == 0x80
    assert padded[len(data) + 1 :] == bytes(len(padded) - len(data) - 1)
    assert unpad_iso9797_m2(padded) == data
    assert unpad_iso9797_m2(padded, lenient=True) == data


def test_known_paddings() -> None:
    assert pad_iso9797_m2(b"") == b"\x80" + bytes(15)
    assert pad_iso9797_m2(bytes(15)) == bytes(15) + b"\x80"
    assert pad_iso9797_m2(bytes(16)) == bytes(16) + b"\x80" + bytes(15)
    assert pad_iso9797_m2(b"\x01\x02", block=8) == bytes.fromhex("0102800000000000")


def test_data_ending_in_80_or_zeros_survives() -> None:
    for data in (b"\x80", b"\x00", b"\x80\x00", b"abc\x80\x00\x00"):
        assert unpad_iso9797_m2(pad_iso9797_m2(data)) == data


@pytest.mark.parametrize(
    "bad",
    [
        b"",  # empty
        b"\x80" + bytes(14),  # not a multiple of 16
        bytes(16),  # no marker
        b"\x01" * 16,  # last byte neither 00 nor 80
        bytes(15) + b"\x81",  # wrong marker
        b"\x80" + bytes(14) + b"\x01",  # data after the marker
        b"abc" + b"\x80" + bytes(12 + 16),  # padding longer than one block (strict)
    ],
)
def test_bad_padding_is_rejected(bad: bytes) -> None:
    with pytest.raises(PaddingError) as info:
        unpad_iso9797_m2(bad)
    assert isinstance(info.value, ValueError)
    if bad:
        assert bad.hex() not in str(info.value)


def test_lenient_accepts_padding_longer_than_a_block() -> None:
    data = bytes.fromhex("08A0000001510000000F9E")
    over_padded = data + b"\x80" + bytes(32 - len(data) - 1)
    assert unpad_iso9797_m2(over_padded, lenient=True) == data
    with pytest.raises(PaddingError):
        unpad_iso9797_m2(over_padded)


@pytest.mark.parametrize("bad", [bytes(32), b"\x01" * 16, b"\x80" + bytes(14) + b"\x01", b""])
def test_lenient_still_rejects_garbage(bad: bytes) -> None:
    with pytest.raises(PaddingError):
        unpad_iso9797_m2(bad, lenient=True)


@pytest.mark.parametrize("block", [0, 256, -1])
def test_invalid_block_size(block: int) -> None:
    with pytest.raises(ValueError, match="block size"):
        pad_iso9797_m2(b"x", block=block)
    with pytest.raises(ValueError, match="block size"):
        unpad_iso9797_m2(b"\x80", block=block)
