"""BER-TLV data objects as ISO/IEC 7816-4 §5.2.2 uses them (tag and length per ISO/IEC 8825-1).

Scope: tags of one, two or three bytes held as big-endian integers (``0x9F7F``, ``0xDF8101``),
definite lengths in short form or long form with up to four length bytes, and parsing of
constructed objects into their children. Encoding is always minimal; parsing accepts
non-minimal long-form lengths (``81 05``) as BER allows.

Rejected with ``ApduFormatError``: tags whose first byte is 00 or FF (ISO 7816-4 padding is not
accepted), tags longer than three bytes (ISO 7816-4 §5.2.2.1 reserves them), a first subsequent
tag byte of 80 (non-minimal tag number), the indefinite length 80, lengths of five or more
bytes, truncated tag, length or value, and trailing bytes where a whole buffer must be TLVs.
Two-byte tags whose second byte is below 1F (EMV's ``9F02`` and friends) are accepted.

Not covered: DER canonical ordering, SIMPLE-TLV, COMPACT-TLV, DGIs (see ``dgi.py``). The
``repr`` of a ``Tlv`` shows the length of the value, never the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ApduFormatError

__all__ = [
    "Tlv",
    "encode_length",
    "encode_tag",
    "find_tlv",
    "parse_tlv",
    "parse_tlvs",
    "tlv",
    "unpack_tlv",
]

_MAX_TAG_BYTES = 3  # ISO 7816-4 §5.2.2.1
_MAX_LENGTH_BYTES = 4
_TAG_NUMBER_MASK = 0x1F  # first tag byte: bits 5-1 all set -> subsequent bytes follow
_MORE_TAG_BYTES = 0x80  # subsequent tag byte: bit 8 set -> another byte follows
_CONSTRUCTED = 0x20  # first tag byte, bit 6
_LONG_FORM = 0x80  # first length byte, bit 8


def _tag_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not a valid tag field, or None if it is (ISO 8825-1 §8.1.2)."""
    first = raw[0]
    if first in (0x00, 0xFF):
        return f"invalid tag first byte {first:02X}"
    if first & _TAG_NUMBER_MASK != _TAG_NUMBER_MASK:
        return None if len(raw) == 1 else f"tag {raw.hex().upper()}: {first:02X} is a 1-byte tag"
    if len(raw) < 2:
        return f"tag {first:02X} needs subsequent bytes"
    if raw[1] == _MORE_TAG_BYTES:
        return f"tag {raw.hex().upper()}: non-minimal tag number (subsequent byte 80)"
    if any(b & _MORE_TAG_BYTES == 0 for b in raw[1:-1]) or raw[-1] & _MORE_TAG_BYTES:
        return f"tag {raw.hex().upper()}: bad continuation bits"
    return None


def encode_tag(tag: int) -> bytes:
    """The tag field for ``tag`` (its minimal big-endian bytes); ValueError if not a valid
    one-, two- or three-byte tag."""
    if not 0 < tag < 1 << (8 * _MAX_TAG_BYTES):
        raise ValueError(f"tag out of range: {tag:#x}")
    raw = tag.to_bytes((tag.bit_length() + 7) // 8, "big")
    problem = _tag_problem(raw)
    if problem:
        raise ValueError(problem)
    return raw


def encode_length(n: int) -> bytes:
    """Minimal definite length: 1 byte below 128, else 81/82/83/84 followed by the length."""
    if n < 0:
        raise ValueError(f"negative length {n}")
    if n < _LONG_FORM:
        return bytes((n,))
    size = (n.bit_length() + 7) // 8
    if size > _MAX_LENGTH_BYTES:
        raise ValueError(f"length {n} needs more than {_MAX_LENGTH_BYTES} bytes")
    return bytes((_LONG_FORM | size,)) + n.to_bytes(size, "big")


def tlv(tag: int, value: bytes) -> bytes:
    """Shorthand for ``Tlv(tag, value).encode()``."""
    return encode_tag(tag) + encode_length(len(value)) + bytes(value)


@dataclass(frozen=True)
class Tlv:
    """One BER-TLV data object."""

    tag: int
    value: bytes = field(repr=False)

    def __post_init__(self) -> None:
        encode_tag(self.tag)  # validates
        if not isinstance(self.value, bytes):
            object.__setattr__(self, "value", bytes(self.value))
        encode_length(len(self.value))  # validates

    def __repr__(self) -> str:
        return f"Tlv(tag=0x{self.tag:02X}, value=<{len(self.value)} bytes>)"

    def encode(self) -> bytes:
        return tlv(self.tag, self.value)

    @property
    def constructed(self) -> bool:
        """Bit 6 of the first tag byte (ISO 7816-4 §5.2.2.1)."""
        return bool(encode_tag(self.tag)[0] & _CONSTRUCTED)

    def children(self) -> list[Tlv]:
        """The value parsed as a sequence of TLVs; ApduFormatError if primitive or malformed."""
        if not self.constructed:
            raise ApduFormatError(f"tag {self.tag:02X} is primitive, it has no children")
        return parse_tlvs(self.value)


def _parse_tag(data: bytes, offset: int) -> tuple[int, int]:
    start = offset
    if offset >= len(data):
        raise ApduFormatError(f"truncated TLV: no tag at offset {offset}")
    if data[offset] & _TAG_NUMBER_MASK == _TAG_NUMBER_MASK and data[offset] != 0xFF:
        offset += 1
        while True:
            if offset >= len(data):
                raise ApduFormatError(f"truncated tag at offset {start}")
            if offset - start >= _MAX_TAG_BYTES:
                raise ApduFormatError(f"tag longer than {_MAX_TAG_BYTES} bytes at offset {start}")
            more = data[offset] & _MORE_TAG_BYTES
            offset += 1
            if not more:
                break
    else:
        offset += 1
    raw = bytes(data[start:offset])
    problem = _tag_problem(raw)
    if problem:
        raise ApduFormatError(f"{problem} at offset {start}")
    return int.from_bytes(raw, "big"), offset


def _parse_length(data: bytes, offset: int) -> tuple[int, int]:
    if offset >= len(data):
        raise ApduFormatError(f"truncated TLV: no length at offset {offset}")
    first = data[offset]
    offset += 1
    if first < _LONG_FORM:
        return first, offset
    size = first & ~_LONG_FORM
    if size == 0:
        raise ApduFormatError(f"indefinite length (80) at offset {offset - 1}")
    if size > _MAX_LENGTH_BYTES:
        raise ApduFormatError(f"length field {first:02X} at offset {offset - 1} is too long")
    if offset + size > len(data):
        raise ApduFormatError(f"truncated length field at offset {offset - 1}")
    return int.from_bytes(data[offset : offset + size], "big"), offset + size


def parse_tlv(data: bytes, offset: int = 0) -> tuple[Tlv, int]:
    """Parse the TLV that starts at ``offset``; return it and the offset just after it."""
    if offset < 0:
        raise ValueError(f"negative offset {offset}")
    tag, offset = _parse_tag(data, offset)
    length, offset = _parse_length(data, offset)
    end = offset + length
    if end > len(data):
        raise ApduFormatError(
            f"truncated value for tag {tag:02X}: {length} bytes announced, "
            f"{len(data) - offset} present"
        )
    return Tlv(tag, bytes(data[offset:end])), end


def parse_tlvs(data: bytes) -> list[Tlv]:
    """Parse a buffer that must consist of whole TLVs, back to back (may be empty)."""
    out: list[Tlv] = []
    offset = 0
    while offset < len(data):
        item, offset = parse_tlv(data, offset)
        out.append(item)
    return out


def find_tlv(data: bytes, tag: int) -> bytes | None:
    """The value of the first top-level object with ``tag``, or None. The whole buffer must
    be well-formed."""
    for item in parse_tlvs(data):
        if item.tag == tag:
            return item.value
    return None


def unpack_tlv(tag: int, data: bytes) -> bytes:
    """The value of ``data``, which must be exactly one TLV with ``tag``."""
    item, end = parse_tlv(data)
    if item.tag != tag:
        raise ApduFormatError(f"expected tag {tag:02X}, found {item.tag:02X}")
    if end != len(data):
        raise ApduFormatError(f"{len(data) - end} trailing bytes after tag {tag:02X}")
    return item.value
