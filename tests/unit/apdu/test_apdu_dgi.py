"""DGIs (GPC 2.3.1 STORE DATA, EMV CPS) and their incremental parser."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotid.apdu import ApduFormatError, DgiStream, encode_dgi, parse_dgi, parse_dgis

_PATTERN = bytes(range(256)) * 256

dgi_tags = st.integers(0, 0xFFFF)
dgi_values = st.one_of(
    st.binary(max_size=300),
    st.integers(0, 65535).map(lambda n: _PATTERN[:n]),
)
dgi_lists = st.lists(st.tuples(dgi_tags, st.binary(max_size=600)), max_size=8)


@given(dgi_tags, dgi_values)
def test_round_trip(tag: int, value: bytes) -> None:
    raw = encode_dgi(tag, value)
    assert raw[:2] == tag.to_bytes(2, "big")
    assert len(raw) == 2 + (1 if len(value) < 255 else 3) + len(value)
    assert parse_dgi(raw) == (tag, value, len(raw))
    assert parse_dgis(raw) == [(tag, value)]


@pytest.mark.parametrize(
    ("n", "hex_header"),
    [(0, "010100"), (254, "0101FE"), (255, "0101FF00FF"), (65535, "0101FFFFFF")],
)
def test_length_boundaries(n: int, hex_header: str) -> None:
    raw = encode_dgi(0x0101, _PATTERN[:n])
    assert raw[: len(hex_header) // 2] == bytes.fromhex(hex_header)


def test_encode_limits() -> None:
    with pytest.raises(ValueError):
        encode_dgi(0x10000, b"")
    with pytest.raises(ValueError):
        encode_dgi(-1, b"")
    with pytest.raises(ValueError):
        encode_dgi(0x0101, b"\x00" * 65536)


def test_non_minimal_length_accepted() -> None:
    assert parse_dgis(bytes.fromhex("8001 FF0002 AABB")) == [(0x8001, b"\xaa\xbb")]


def test_parse_at_offset() -> None:
    raw = b"\x99" + encode_dgi(0x0102, b"\x01\x02") + encode_dgi(0x0103, b"")
    assert parse_dgi(raw, 1) == (0x0102, b"\x01\x02", 6)
    assert parse_dgi(raw, 6) == (0x0103, b"", 9)


@pytest.mark.parametrize(
    "hex_raw", ["01", "0101", "0101 02 AA", "0101 FF", "0101 FF00", "0101 FF0003 AABB"]
)
def test_malformed_raise_format_error(hex_raw: str) -> None:
    with pytest.raises(ApduFormatError):
        parse_dgis(bytes.fromhex(hex_raw))


@given(dgi_lists)
def test_sequence_round_trip(items: list[tuple[int, bytes]]) -> None:
    raw = b"".join(encode_dgi(t, v) for t, v in items)
    assert parse_dgis(raw) == items


@given(dgi_lists, st.lists(st.integers(0, 5000), max_size=10))
def test_stream_random_splits(items: list[tuple[int, bytes]], cuts: list[int]) -> None:
    raw = b"".join(encode_dgi(t, v) for t, v in items)
    points = sorted({min(c, len(raw)) for c in cuts} | {0, len(raw)})
    stream = DgiStream()
    got: list[tuple[int, bytes]] = []
    fed = 0
    for start, end in itertools.pairwise(points):
        got.extend(stream.feed(raw[start:end]))
        fed = end
        # Whatever is not yet returned is exactly what is buffered.
        assert stream.pending == fed - sum(len(encode_dgi(t, v)) for t, v in got)
    assert got == items
    assert stream.pending == 0
    stream.finish()


def test_stream_byte_by_byte() -> None:
    raw = encode_dgi(0x8010, _PATTERN[:300]) + encode_dgi(0x0202, b"\x01")
    stream = DgiStream()
    got = []
    for i in range(len(raw)):
        got.extend(stream.feed(raw[i : i + 1]))
    assert got == [(0x8010, _PATTERN[:300]), (0x0202, b"\x01")]
    stream.finish()


def test_stream_partial_finish_raises() -> None:
    stream = DgiStream()
    assert stream.feed(encode_dgi(0x0101, b"\x01\x02") + b"\x02\x02\x05\xaa") == [
        (0x0101, b"\x01\x02")
    ]
    assert stream.pending == 4
    with pytest.raises(ApduFormatError):
        stream.finish()
    assert stream.feed(b"\xbb\xcc\xdd\xee") == [(0x0202, b"\xaa\xbb\xcc\xdd\xee")]
    stream.finish()


@given(st.binary(max_size=100))
def test_random_bytes_parse_or_format_error(raw: bytes) -> None:
    stream = DgiStream()
    streamed = stream.feed(raw)
    try:
        items = parse_dgis(raw)
    except ApduFormatError:
        with pytest.raises(ApduFormatError):
            stream.finish()
        return
    assert streamed == items
    stream.finish()
    again = b"".join(encode_dgi(t, v) for t, v in items)
    assert parse_dgis(again) == items
    assert len(again) <= len(raw)  # minimal re-encoding is never longer
