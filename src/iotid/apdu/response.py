"""Response APDUs (ISO/IEC 7816-4 §5.1, §5.6): data followed by SW1 SW2.

Scope: parsing and encoding a response, turning a non-9000 status into ``ApduError``, and the
card-side helper that cuts long response data into 61xx pieces for GET RESPONSE.

Not covered: secure messaging on responses (``iotid.scp03``), the host loop that sends GET
RESPONSE or re-issues after 6Cxx (``iotid.host``), the card's storage of pending data
(``iotid.se``). The ``repr`` shows the length of the data, never the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from iotid.spec.iso7816 import EXTENDED_MAX_LE, SW

from .errors import ApduError, ApduFormatError

__all__ = ["ResponseApdu", "chunk_response"]

_SW_LEN = 2


@dataclass(frozen=True)
class ResponseApdu:
    """Response data (at most 65536 bytes) and the 16-bit status word."""

    data: bytes = field(repr=False)
    sw: int

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes):
            object.__setattr__(self, "data", bytes(self.data))
        object.__setattr__(self, "sw", int(self.sw))
        if not 0 <= self.sw <= 0xFFFF:
            raise ValueError(f"status word out of range: {self.sw:#x}")
        if len(self.data) > EXTENDED_MAX_LE:
            raise ValueError(f"response data too long: {len(self.data)} > {EXTENDED_MAX_LE}")

    def __repr__(self) -> str:
        return f"ResponseApdu(data=<{len(self.data)} bytes>, sw=0x{self.sw:04X})"

    @classmethod
    def parse(cls, raw: bytes) -> ResponseApdu:
        """Split ``raw`` into data and SW1 SW2 (ISO 7816-4 §5.1: the trailer is mandatory)."""
        raw = bytes(raw)
        if len(raw) < _SW_LEN:
            raise ApduFormatError(f"response shorter than SW1 SW2 ({len(raw)} bytes)")
        if len(raw) - _SW_LEN > EXTENDED_MAX_LE:
            raise ApduFormatError(f"response data too long: {len(raw) - _SW_LEN} bytes")
        return cls(raw[:-_SW_LEN], int.from_bytes(raw[-_SW_LEN:], "big"))

    def encode(self) -> bytes:
        return self.data + self.sw.to_bytes(_SW_LEN, "big")

    @property
    def sw1(self) -> int:
        return self.sw >> 8

    @property
    def sw2(self) -> int:
        return self.sw & 0xFF

    @property
    def ok(self) -> bool:
        return self.sw == SW.OK

    def check(self) -> bytes:
        """The data if the status is 9000; otherwise raise ``ApduError(sw, data)``."""
        if not self.ok:
            raise ApduError(self.sw, self.data)
        return self.data


def chunk_response(data: bytes, sw: int, max_len: int) -> tuple[ResponseApdu, bytes]:
    """Card side: the first response for ``data`` and the bytes left for GET RESPONSE.

    If ``data`` fits in ``max_len`` bytes the answer carries it with ``sw`` and nothing is left.
    Otherwise the answer carries ``max_len`` bytes with 61xx (ISO 7816-4 §5.6: xx = bytes still
    available, 00 meaning 256 or more) and the rest is returned; the caller answers each GET
    RESPONSE with ``chunk_response(rest, sw, ...)`` so that ``sw`` ends the last piece.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    data = bytes(data)
    if len(data) <= max_len:
        return ResponseApdu(data, sw), b""
    rest = data[max_len:]
    remaining = min(len(rest), 256) & 0xFF  # 256 -> 00
    return ResponseApdu(data[:max_len], SW.BYTES_REMAINING | remaining), rest
