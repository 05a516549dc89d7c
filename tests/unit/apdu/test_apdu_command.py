"""CommandApdu (ISO/IEC 7816-4 §5.1, §5.3.3): round trips, known encodings, malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotid.apdu import (
    ApduFormatError,
    CommandApdu,
    get_response,
    reissue_with_le,
    split_chain,
)

_PATTERN = bytes(range(256)) * 256  # 65536 bytes to slice large payloads from


def _payload(n: int) -> bytes:
    return _PATTERN[:n]


byte = st.integers(0, 255)


@st.composite
def commands(draw: st.DrawFn, extended: bool | None = None) -> CommandApdu:
    ext = draw(st.booleans()) if extended is None else extended
    max_data = 65535 if ext else 255
    data = draw(
        st.one_of(
            st.just(b""),
            st.binary(min_size=1, max_size=min(max_data, 300)),
            st.integers(1, max_data).map(_payload),
        )
    )
    le = draw(st.none() | st.integers(1, 65536 if ext else 256))
    return CommandApdu(draw(byte), draw(byte), draw(byte), draw(byte), data, le, ext)


@given(commands())
def test_round_trip(cmd: CommandApdu) -> None:
    raw = cmd.encode()
    again = CommandApdu.parse(raw)
    assert again == cmd
    assert again.encode() == raw
    assert raw[:4] == cmd.header()
    assert raw[4 : 4 + len(cmd.lc_field())] == cmd.lc_field()


@given(commands())
def test_case_matches_fields_and_length(cmd: CommandApdu) -> None:
    raw = cmd.encode()
    n = len(cmd.data)
    if cmd.extended:
        expected = {1: 4, 2: 7, 3: 7 + n, 4: 9 + n}
    else:
        expected = {1: 4, 2: 5, 3: 5 + n, 4: 6 + n}
    assert len(raw) == expected[cmd.case]
    assert (cmd.case in (3, 4)) == bool(cmd.data)
    assert (cmd.case in (2, 4)) == (cmd.le is not None)


def test_select_isd_case_4_short_le_256() -> None:
    cmd = CommandApdu.parse(bytes.fromhex("00A4040008A00000015100000000"))
    assert (cmd.cla, cmd.ins, cmd.p1, cmd.p2) == (0x00, 0xA4, 0x04, 0x00)
    assert cmd.data == bytes.fromhex("A000000151000000")
    assert cmd.le == 256
    assert cmd.case == 4
    assert not cmd.extended
    assert cmd.lc_field() == b"\x08"


def test_get_data_cplc_case_2_short() -> None:
    cmd = CommandApdu.parse(bytes.fromhex("80CA9F7F00"))
    assert cmd == CommandApdu(0x80, 0xCA, 0x9F, 0x7F, le=256)
    assert cmd.case == 2
    assert cmd.lc_field() == b""


def test_extended_case_4_le_65536() -> None:
    data = _payload(256)
    raw = bytes.fromhex("00E20000000100") + data + b"\x00\x00"
    cmd = CommandApdu.parse(raw)
    assert cmd.extended
    assert cmd.case == 4
    assert cmd.data == data
    assert cmd.le == 65536
    assert cmd.lc_field() == b"\x00\x01\x00"
    assert cmd.encode() == raw


@pytest.mark.parametrize(
    ("hex_raw", "expected"),
    [
        ("00A40400", CommandApdu(0x00, 0xA4, 0x04, 0x00)),
        ("00B0000010", CommandApdu(0x00, 0xB0, 0x00, 0x00, le=16)),
        ("80E2900003AABBCC", CommandApdu(0x80, 0xE2, 0x90, 0x00, b"\xaa\xbb\xcc")),
        ("00B00000 000000", CommandApdu(0x00, 0xB0, 0x00, 0x00, le=65536, extended=True)),
        ("00B0000000012C", CommandApdu(0x00, 0xB0, 0x00, 0x00, le=300, extended=True)),
        ("00DA00000000 02AABB", CommandApdu(0x00, 0xDA, 0, 0, b"\xaa\xbb", extended=True)),
        (
            "00DA00000000 02AABB 0010",
            CommandApdu(0x00, 0xDA, 0, 0, b"\xaa\xbb", le=16, extended=True),
        ),
    ],
)
def test_known_encodings(hex_raw: str, expected: CommandApdu) -> None:
    raw = bytes.fromhex(hex_raw)
    assert CommandApdu.parse(raw) == expected
    assert expected.encode() == raw


MALFORMED = [
    "",
    "00",
    "00A404",
    "00A4040005A000",  # short Lc=5, 2 data bytes
    "00A4040002AABB0000",  # trailing bytes after case 4S
    "00A4040002AABB000000",
    "00A40400 0000",  # 00 then one byte: neither short nor extended
    "00A40400 000000 00",  # extended Lc = 0000 with a byte after it
    "00A40400 000000 0000",  # extended Lc = 0000 with two bytes after it
    "00A40400 000005 AABB",  # extended Lc=5, 2 bytes
    "00A40400 000002 AABB 00",  # extended case 4 with a 1-byte Le
    "00A40400 000002 AABB 000000",  # trailing bytes after case 4E
]


@pytest.mark.parametrize("hex_raw", MALFORMED)
def test_malformed_raise_format_error(hex_raw: str) -> None:
    with pytest.raises(ApduFormatError):
        CommandApdu.parse(bytes.fromhex(hex_raw))


@given(st.binary(max_size=300))
def test_random_bytes_parse_or_format_error(raw: bytes) -> None:
    try:
        cmd = CommandApdu.parse(raw)
    except ApduFormatError:
        return
    # Every accepted encoding is canonical: parse is injective.
    assert cmd.encode() == raw


@given(commands(), st.integers(-3, 3), st.binary(max_size=3))
def test_mutated_encodings_parse_or_format_error(cmd: CommandApdu, cut: int, tail: bytes) -> None:
    raw = cmd.encode()
    mutated = raw[: len(raw) + cut] + tail if cut < 0 else raw + tail
    try:
        again = CommandApdu.parse(mutated)
    except ApduFormatError:
        return
    assert again.encode() == mutated


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cla": 256},
        {"ins": -1},
        {"p2": 0x100},
        {"data": b"\x00" * 256},
        {"data": b"\x00" * 65536, "extended": True},
        {"le": 0},
        {"le": 257},
        {"le": 65537, "extended": True},
    ],
)
def test_invalid_construction(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"cla": 0, "ins": 0xA4, "p1": 0, "p2": 0}
    fields.update(kwargs)
    with pytest.raises(ValueError):
        CommandApdu(**fields)  # type: ignore[arg-type]


def test_case_1_has_no_extended_form() -> None:
    cmd = CommandApdu(0x00, 0x70, 0x80, 0x01, extended=True)
    assert not cmd.extended
    assert cmd == CommandApdu.parse(cmd.encode())


def test_bytearray_data_is_normalised() -> None:
    cmd = CommandApdu(0, 0xDA, 0, 0, bytearray(b"\x01\x02"))  # type: ignore[arg-type]
    assert type(cmd.data) is bytes
    assert hash(cmd) == hash(CommandApdu(0, 0xDA, 0, 0, b"\x01\x02"))


def test_repr_hides_data() -> None:
    text = repr(CommandApdu(0x80, 0xE2, 0, 0, bytes.fromhex("DEADBEEFCAFE")))
    assert "DEADBEEF" not in text.upper()
    assert "6 bytes" in text


def test_with_data() -> None:
    cmd = CommandApdu(0x80, 0xE2, 0x00, 0x00, b"\x01", le=256)
    short = cmd.with_data(b"\x02\x03", cla=0x84)
    assert short == CommandApdu(0x84, 0xE2, 0x00, 0x00, b"\x02\x03", le=256)
    long = cmd.with_data(_payload(300))
    assert long.extended
    assert long.le == 256
    assert long.cla == 0x80
    assert CommandApdu.parse(long.encode()) == long
    assert cmd.with_data(b"").case == 2


@given(commands(), st.integers(1, 255))
def test_split_chain_reassembles(cmd: CommandApdu, chunk: int) -> None:
    pieces = split_chain(cmd, chunk)
    if len(cmd.data) <= chunk:
        assert pieces == [cmd]
        return
    assert b"".join(p.data for p in pieces) == cmd.data
    for p in pieces[:-1]:
        assert p.cla == cmd.cla | 0x10
        assert p.le is None
        assert len(p.data) == chunk
    last = pieces[-1]
    assert last.cla == cmd.cla
    assert last.le == (None if cmd.le is None else min(cmd.le, 256))
    for p in pieces:
        assert not p.extended
        assert (p.ins, p.p1, p.p2) == (cmd.ins, cmd.p1, cmd.p2)
        assert 1 <= len(p.data) <= chunk
        assert CommandApdu.parse(p.encode()) == p


def test_split_chain_default_chunk() -> None:
    cmd = CommandApdu(0x80, 0xE2, 0x00, 0x00, _payload(600), extended=True)
    pieces = split_chain(cmd)
    assert [len(p.data) for p in pieces] == [255, 255, 90]
    assert [p.cla for p in pieces] == [0x90, 0x90, 0x80]
    with pytest.raises(ValueError):
        split_chain(cmd, 0)
    with pytest.raises(ValueError):
        split_chain(cmd, 256)


def test_get_response() -> None:
    assert get_response().encode() == bytes.fromhex("00C0000000")
    assert get_response(0x10, cla=0x01).encode() == bytes.fromhex("01C0000010")
    ext = get_response(1000)
    assert ext.extended
    assert ext.encode() == bytes.fromhex("00C000000003E8")


def test_reissue_with_le() -> None:
    cmd = CommandApdu(0x00, 0xB0, 0x00, 0x00, le=256)
    assert reissue_with_le(cmd, 0x6C10) == CommandApdu(0x00, 0xB0, 0x00, 0x00, le=0x10)
    assert reissue_with_le(cmd, 0x6C00).le == 256
    with pytest.raises(ValueError):
        reissue_with_le(cmd, 0x6110)
