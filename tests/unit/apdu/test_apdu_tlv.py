"""BER-TLV (ISO/IEC 7816-4 §5.2.2, ISO/IEC 8825-1): tags, lengths, nesting, malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotid.apdu import (
    ApduFormatError,
    Tlv,
    encode_length,
    encode_tag,
    find_tlv,
    parse_tlv,
    parse_tlvs,
    tlv,
    unpack_tlv,
)

_PATTERN = bytes(range(256)) * 300  # 76800 bytes to slice large values from

# First tag byte: class (bits 8-7) and constructed (bit 6) over a tag number in bits 5-1.
one_byte_tags = st.integers(0x01, 0xFE).filter(lambda b: b & 0x1F != 0x1F)
lead_bytes = st.integers(0, 6).map(lambda c: (c << 5) | 0x1F)  # 0x1F .. 0xDF, never 0xFF
two_byte_tags = st.builds(lambda a, b: a << 8 | b, lead_bytes, st.integers(0x1F, 0x7F))
three_byte_tags = st.builds(
    lambda a, b, c: a << 16 | b << 8 | c, lead_bytes, st.integers(0x81, 0xFF), st.integers(0, 0x7F)
)
tags = st.one_of(one_byte_tags, two_byte_tags, three_byte_tags)
values = st.one_of(
    st.binary(max_size=300),
    st.integers(0, 70000).map(lambda n: _PATTERN[:n]),
)


def _is_constructed(tag: int) -> bool:
    return bool(encode_tag(tag)[0] & 0x20)


@given(tags, values)
def test_round_trip(tag: int, value: bytes) -> None:
    item = Tlv(tag, value)
    raw = item.encode()
    assert raw == tlv(tag, value)
    assert raw.startswith(encode_tag(tag) + encode_length(len(value)))
    parsed, end = parse_tlv(raw)
    assert parsed == item
    assert end == len(raw)
    assert unpack_tlv(tag, raw) == value
    assert parse_tlvs(raw) == [item]


@given(tags)
def test_tag_bytes(tag: int) -> None:
    raw = encode_tag(tag)
    assert int.from_bytes(raw, "big") == tag
    assert 1 <= len(raw) <= 3
    assert Tlv(tag, b"").constructed == bool(raw[0] & 0x20)


@given(st.binary(max_size=20), st.integers(0, 20))
def test_parse_at_offset(prefix: bytes, n: int) -> None:
    raw = tlv(0x9F7F, _PATTERN[:n])
    item, end = parse_tlv(prefix + raw + b"\x01", len(prefix))
    assert item == Tlv(0x9F7F, _PATTERN[:n])
    assert end == len(prefix) + len(raw)


@given(st.lists(st.tuples(tags, st.binary(max_size=200)), max_size=8))
def test_sequence_round_trip(items: list[tuple[int, bytes]]) -> None:
    raw = b"".join(tlv(t, v) for t, v in items)
    assert parse_tlvs(raw) == [Tlv(t, v) for t, v in items]
    for t, _ in items:
        assert find_tlv(raw, t) == next(value for tag, value in items if tag == t)


constructed_tags = tags.filter(_is_constructed)
primitive_tags = tags.filter(lambda t: not _is_constructed(t))

trees = st.recursive(
    st.builds(Tlv, primitive_tags, st.binary(max_size=40)),
    lambda children: st.builds(
        lambda tag, kids: Tlv(tag, b"".join(k.encode() for k in kids)),
        constructed_tags,
        st.lists(children, max_size=4),
    ),
    max_leaves=20,
)


def _flatten(item: Tlv, depth: int = 0) -> list[tuple[int, int, bytes]]:
    out = [(depth, item.tag, item.value)]
    if item.constructed:
        for child in item.children():
            out.extend(_flatten(child, depth + 1))
    return out


@given(trees)
def test_nested_round_trip(tree: Tlv) -> None:
    parsed, _ = parse_tlv(tree.encode())
    assert parsed == tree
    assert _flatten(parsed) == _flatten(tree)
    if tree.constructed:
        assert b"".join(c.encode() for c in tree.children()) == tree.value


@pytest.mark.parametrize(
    ("n", "hex_len"),
    [
        (0, "00"),
        (127, "7F"),
        (128, "8180"),
        (255, "81FF"),
        (256, "820100"),
        (65535, "82FFFF"),
        (65536, "83010000"),
        (0xFFFFFF, "83FFFFFF"),
        (0x1000000, "8401000000"),
        (0xFFFFFFFF, "84FFFFFFFF"),
    ],
)
def test_encode_length(n: int, hex_len: str) -> None:
    assert encode_length(n) == bytes.fromhex(hex_len)


def test_encode_length_limits() -> None:
    with pytest.raises(ValueError):
        encode_length(-1)
    with pytest.raises(ValueError):
        encode_length(1 << 32)


@pytest.mark.parametrize(
    ("tag", "hex_tag", "constructed"),
    [
        (0x04, "04", False),
        (0x30, "30", True),
        (0x9F7F, "9F7F", False),
        (0x5F49, "5F49", False),
        (0xBF21, "BF21", True),
        (0xDF8101, "DF8101", False),
        (0x7F21, "7F21", True),
        (0x9F02, "9F02", False),  # EMV-style: second byte below 1F is accepted
    ],
)
def test_known_tags(tag: int, hex_tag: str, constructed: bool) -> None:
    assert encode_tag(tag) == bytes.fromhex(hex_tag)
    assert Tlv(tag, b"").constructed is constructed
    assert parse_tlv(bytes.fromhex(hex_tag) + b"\x01\xaa")[0] == Tlv(tag, b"\xaa")


@pytest.mark.parametrize(
    "tag", [0, 0xFF, 0x1F, 0x9F, 0x9F81, 0x9F8001, 0x0101, 0x5F7F01, 0xDF818101, -1]
)
def test_invalid_tags_rejected_on_encode(tag: int) -> None:
    with pytest.raises(ValueError):
        encode_tag(tag)
    with pytest.raises(ValueError):
        Tlv(tag, b"")


def test_non_minimal_length_accepted_and_reencoded_minimally() -> None:
    raw = bytes.fromhex("04 81 03 AABBCC")
    item, end = parse_tlv(raw)
    assert item == Tlv(0x04, b"\xaa\xbb\xcc")
    assert end == len(raw)
    assert item.encode() == bytes.fromhex("04 03 AABBCC")
    assert parse_tlv(bytes.fromhex("04 8400000001 AA"))[0].value == b"\xaa"


def test_long_form_lengths() -> None:
    value = _PATTERN[:70000]
    raw = tlv(0x53, value)
    assert raw[:5] == bytes.fromhex("53 83 011170")
    assert unpack_tlv(0x53, raw) == value


MALFORMED = [
    "00 01 AA",  # tag 00
    "FF 01 AA",  # tag FF
    "9F",  # truncated 2-byte tag
    "DF81",  # truncated 3-byte tag
    "DF818101 00",  # 4-byte tag
    "5F80 01 00",  # non-minimal tag number
    "04",  # no length
    "04 80",  # indefinite length
    "04 85 0000000001 AA",  # 5 length bytes
    "04 82 01",  # truncated length
    "04 05 AABB",  # truncated value
    "04 81",  # long form without its byte
    "04 01 AA 00",  # trailing padding byte
    "04 01 AA 9F",  # trailing partial tag
]


@pytest.mark.parametrize("hex_raw", MALFORMED)
def test_malformed_raise_format_error(hex_raw: str) -> None:
    with pytest.raises(ApduFormatError):
        parse_tlvs(bytes.fromhex(hex_raw))


def test_children() -> None:
    raw = tlv(0xE3, tlv(0x4F, b"\xa0\x00") + tlv(0x9F70, b"\x07"))
    item = unpack_tlv(0xE3, raw)
    assert parse_tlvs(item) == [Tlv(0x4F, b"\xa0\x00"), Tlv(0x9F70, b"\x07")]
    assert parse_tlv(raw)[0].children() == parse_tlvs(item)
    with pytest.raises(ApduFormatError):
        Tlv(0x04, b"\x04\x00").children()  # primitive
    with pytest.raises(ApduFormatError):
        Tlv(0x30, b"\x04\x05").children()  # malformed content


def test_empty_buffer_has_no_tlvs() -> None:
    assert parse_tlvs(b"") == []
    with pytest.raises(ApduFormatError):
        parse_tlv(b"")


def test_find_and_unpack() -> None:
    raw = tlv(0x4F, b"\x01") + tlv(0x9F7F, b"\x02") + tlv(0x4F, b"\x03")
    assert find_tlv(raw, 0x4F) == b"\x01"
    assert find_tlv(raw, 0x9F7F) == b"\x02"
    assert find_tlv(raw, 0x50) is None
    assert find_tlv(b"", 0x4F) is None
    with pytest.raises(ApduFormatError):
        find_tlv(raw + b"\x04", 0x4F)
    with pytest.raises(ApduFormatError):
        unpack_tlv(0x4F, raw)  # trailing objects
    with pytest.raises(ApduFormatError):
        unpack_tlv(0x50, tlv(0x4F, b"\x01"))  # other tag
    with pytest.raises(ApduFormatError):
        unpack_tlv(0x4F, b"")


def test_repr_hides_value() -> None:
    text = repr(Tlv(0xC0, bytes.fromhex("DEADBEEF")))
    assert "DEADBEEF" not in text.upper()
    assert "4 bytes" in text


@given(st.binary(max_size=200))
def test_random_bytes_parse_or_format_error(raw: bytes) -> None:
    try:
        items = parse_tlvs(raw)
    except ApduFormatError:
        return
    again = b"".join(i.encode() for i in items)
    assert parse_tlvs(again) == items
    assert len(again) <= len(raw)  # minimal re-encoding is never longer
    for item in items:
        if not item.constructed:
            continue
        try:
            kids = item.children()
        except ApduFormatError:
            continue
        assert parse_tlvs(b"".join(k.encode() for k in kids)) == kids


@given(tags, st.binary(max_size=50), st.integers(0, 60))
def test_truncations_raise_format_error(tag: int, value: bytes, keep: int) -> None:
    raw = tlv(tag, value)
    if keep >= len(raw):
        return
    with pytest.raises(ApduFormatError):
        unpack_tlv(tag, raw[:keep])
