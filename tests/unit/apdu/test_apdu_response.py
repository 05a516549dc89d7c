"""ResponseApdu, chunk_response and ApduError (ISO/IEC 7816-4 §5.1, §5.6)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotid.apdu import ApduError, ApduFormatError, ResponseApdu, chunk_response
from iotid.spec.iso7816 import SW

status_words = st.integers(0, 0xFFFF)


@given(st.binary(max_size=600), status_words)
def test_round_trip(data: bytes, sw: int) -> None:
    resp = ResponseApdu(data, sw)
    raw = resp.encode()
    assert raw == data + bytes((sw >> 8, sw & 0xFF))
    again = ResponseApdu.parse(raw)
    assert again == resp
    assert (again.sw1, again.sw2) == (sw >> 8, sw & 0xFF)
    assert again.ok == (sw == 0x9000)


@given(st.binary(max_size=40))
def test_random_bytes_parse_or_format_error(raw: bytes) -> None:
    try:
        resp = ResponseApdu.parse(raw)
    except ApduFormatError:
        assert len(raw) < 2
        return
    assert resp.encode() == raw


@pytest.mark.parametrize("raw", [b"", b"\x90"])
def test_too_short(raw: bytes) -> None:
    with pytest.raises(ApduFormatError):
        ResponseApdu.parse(raw)


def test_too_long() -> None:
    with pytest.raises(ApduFormatError):
        ResponseApdu.parse(b"\x00" * 65537 + b"\x90\x00")
    assert len(ResponseApdu.parse(b"\x00" * 65536 + b"\x90\x00").data) == 65536


def test_check() -> None:
    assert ResponseApdu(b"\x01\x02", SW.OK).check() == b"\x01\x02"
    with pytest.raises(ApduError) as info:
        ResponseApdu(b"\xaa", 0x6982).check()
    assert info.value.sw == 0x6982
    assert info.value.data == b"\xaa"
    # A warning is still not 9000.
    with pytest.raises(ApduError):
        ResponseApdu(b"", 0x6310).check()


def test_invalid_sw() -> None:
    with pytest.raises(ValueError):
        ResponseApdu(b"", 0x10000)
    with pytest.raises(ValueError):
        ResponseApdu(b"", -1)


def test_repr_hides_data() -> None:
    text = repr(ResponseApdu(bytes.fromhex("DEADBEEF"), 0x9000))
    assert "DEADBEEF" not in text.upper()
    assert "9000" in text


@given(st.binary(max_size=2000), status_words, st.integers(1, 300))
def test_chunk_response_get_response_loop(data: bytes, sw: int, max_len: int) -> None:
    received = b""
    rest = data
    rounds = 0
    while True:
        resp, left = chunk_response(rest, sw, max_len)
        received += resp.data
        assert len(resp.data) <= max_len
        rounds += 1
        if not left:
            assert resp.sw == sw
            break
        assert len(resp.data) == max_len
        assert resp.sw1 == 0x61
        assert (resp.sw2 or 256) == min(len(left), 256)
        rest = left
    assert received == data
    assert rounds == max(1, -(-len(data) // max_len))


def test_chunk_response_examples() -> None:
    resp, rest = chunk_response(b"\x01" * 10, 0x9000, 10)
    assert resp == ResponseApdu(b"\x01" * 10, 0x9000)
    assert rest == b""
    resp, rest = chunk_response(b"\x02" * 600, 0x6310, 256)
    assert resp.sw == 0x6100  # 344 left: 256 or more is coded 00
    assert len(rest) == 344
    resp, rest = chunk_response(rest, 0x6310, 256)
    assert resp.sw == 0x6158
    resp, rest = chunk_response(rest, 0x6310, 256)
    assert resp.sw == 0x6310
    assert rest == b""
    with pytest.raises(ValueError):
        chunk_response(b"", 0x9000, 0)


def test_apdu_error() -> None:
    err = ApduError(SW.SECURITY_STATUS_NOT_SATISFIED, b"\xde\xad\xbe\xef")
    assert err.sw == 0x6982
    assert type(err.sw) is int
    assert str(err) == SW.describe(0x6982)
    assert "DEADBEEF" not in repr(err).upper()
    assert "DEADBEEF" not in str(err).upper()
    with_msg = ApduError(0x6A80, message="bad DGI")
    assert str(with_msg) == f"{SW.describe(0x6A80)}: bad DGI"
    assert str(ApduError(0x6110)) == SW.describe(0x6110)
    copy = pickle.loads(pickle.dumps(with_msg))  # noqa: S301 - our own object
    assert (copy.sw, copy.data, copy.message) == (0x6A80, b"", "bad DGI")
    with pytest.raises(ValueError):
        ApduError(0x10000)


def test_format_error_is_value_error() -> None:
    assert issubclass(ApduFormatError, ValueError)
