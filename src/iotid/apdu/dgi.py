"""Data Grouping Identifiers (GPC 2.3.1 §11.11 STORE DATA; EMV CPS v1.1, DGI format).

A DGI is a 2-byte identifier, a length (one byte 00..FE, or FF followed by two bytes for
255..65535) and the data. Personalisation sends DGIs in STORE DATA blocks, and one DGI may
span several blocks: ``DgiStream`` reassembles them.

Scope: encoding and parsing only. Parsing accepts a non-minimal ``FF 00 xx`` length; encoding
is always minimal. Not covered: the meaning of each DGI (``iotid.spec``), decryption of
DGIs sent encrypted (``iotid.scp03`` / the card), STORE DATA P1 handling (``iotid.se``).
"""

from __future__ import annotations

from .errors import ApduFormatError

__all__ = ["DgiStream", "encode_dgi", "parse_dgi", "parse_dgis"]

_TAG_LEN = 2
_LONG_LENGTH = 0xFF  # EMV CPS: FF means a 2-byte length follows
_MAX_VALUE = 0xFFFF


def encode_dgi(tag: int, value: bytes) -> bytes:
    """DGI ``tag`` (0..FFFF) with ``value`` (at most 65535 bytes)."""
    if not 0 <= tag <= 0xFFFF:
        raise ValueError(f"DGI tag out of range: {tag:#x}")
    n = len(value)
    if n > _MAX_VALUE:
        raise ValueError(f"DGI value too long: {n} > {_MAX_VALUE}")
    length = bytes((n,)) if n < _LONG_LENGTH else b"\xff" + n.to_bytes(2, "big")
    return tag.to_bytes(_TAG_LEN, "big") + length + bytes(value)


def _header(data: bytes | bytearray, offset: int) -> tuple[int, int, int] | None:
    """(tag, value length, header length) of the DGI at ``offset``, or None if incomplete."""
    avail = len(data) - offset
    if avail < _TAG_LEN + 1:
        return None
    tag = int.from_bytes(data[offset : offset + _TAG_LEN], "big")
    first = data[offset + _TAG_LEN]
    if first != _LONG_LENGTH:
        return tag, first, _TAG_LEN + 1
    if avail < _TAG_LEN + 3:
        return None
    length = int.from_bytes(data[offset + _TAG_LEN + 1 : offset + _TAG_LEN + 3], "big")
    return tag, length, _TAG_LEN + 3


def parse_dgi(data: bytes, offset: int = 0) -> tuple[int, bytes, int]:
    """Parse the DGI at ``offset``: (tag, value, offset after it)."""
    if offset < 0:
        raise ValueError(f"negative offset {offset}")
    head = _header(data, offset)
    if head is None:
        raise ApduFormatError(f"truncated DGI header at offset {offset}")
    tag, length, head_len = head
    start = offset + head_len
    end = start + length
    if end > len(data):
        raise ApduFormatError(
            f"truncated DGI {tag:04X}: {length} bytes announced, {len(data) - start} present"
        )
    return tag, bytes(data[start:end]), end


def parse_dgis(data: bytes) -> list[tuple[int, bytes]]:
    """Parse a buffer that must consist of whole DGIs, back to back (may be empty)."""
    out: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        tag, value, offset = parse_dgi(data, offset)
        out.append((tag, value))
    return out


class DgiStream:
    """Incremental DGI parser for data split over several STORE DATA blocks.

    ``feed`` each block in order; it returns the DGIs completed by that block. After the last
    block, ``finish`` raises ApduFormatError if a partial DGI is still buffered.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def __repr__(self) -> str:
        return f"DgiStream(pending={self.pending})"

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a complete DGI."""
        return len(self._buf)

    def feed(self, block: bytes) -> list[tuple[int, bytes]]:
        self._buf += block
        out: list[tuple[int, bytes]] = []
        offset = 0
        while True:
            head = _header(self._buf, offset)
            if head is None:
                break
            tag, length, head_len = head
            end = offset + head_len + length
            if end > len(self._buf):
                break
            out.append((tag, bytes(self._buf[offset + head_len : end])))
            offset = end
        del self._buf[:offset]
        return out

    def finish(self) -> None:
        """Check that the stream ended on a DGI boundary."""
        if self._buf:
            raise ApduFormatError(f"stream ended inside a DGI ({len(self._buf)} bytes pending)")
