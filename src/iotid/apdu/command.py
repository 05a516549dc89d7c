"""Command APDUs (ISO/IEC 7816-4 §5.1-§5.3): the four cases, short and extended length,
command chaining, GET RESPONSE and the 6Cxx re-issue.

Scope: the byte encoding of a command and the pure helpers a card or host needs around it.
``CommandApdu`` is immutable and validated at construction; ``parse`` accepts exactly the
encodings of ISO/IEC 7816-4 §5.1 and ``encode`` is its inverse.

Not covered: secure messaging (``iotid.scp03``), the meaning of CLA/INS/P1/P2 (``iotid.spec``),
sending commands or looping over 61xx/6Cxx (``iotid.host``), reassembling a chain on the card
(``iotid.se``). The ``repr`` of a command shows the length of its data, never the bytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from iotid.spec.iso7816 import (
    CLA_CHAINING,
    EXTENDED_MAX_DATA,
    EXTENDED_MAX_LE,
    SHORT_MAX_DATA,
    SHORT_MAX_LE,
    SW,
    Ins,
)

from .errors import ApduFormatError

__all__ = ["CommandApdu", "get_response", "reissue_with_le", "split_chain"]

_HEADER_LEN = 4


def _check_byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{name} must be a byte (0..255), got {value}")


@dataclass(frozen=True)
class CommandApdu:
    """One command APDU.

    ``le`` is the decoded number of expected bytes, or ``None`` for no Le field: a short Le byte
    00 is 256 and an extended Le 0000 is 65536 (ISO/IEC 7816-4 §5.1). ``extended`` selects the
    extended-length encoding (Lc = ``00 hi lo``; Le = 2 bytes after data, or ``00 hi lo`` when
    there is no data). A case 1 command has no length field, so ``extended`` is normalised to
    False for it.
    """

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = field(default=b"", repr=False)
    le: int | None = None
    extended: bool = False

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            _check_byte(name, getattr(self, name))
        if not isinstance(self.data, bytes):
            object.__setattr__(self, "data", bytes(self.data))
        if len(self.data) > EXTENDED_MAX_DATA:
            raise ValueError(f"command data too long: {len(self.data)} > {EXTENDED_MAX_DATA}")
        if self.le is not None and not 1 <= self.le <= EXTENDED_MAX_LE:
            raise ValueError(f"le must be 1..{EXTENDED_MAX_LE} or None, got {self.le}")
        if not self.data and self.le is None and self.extended:
            # ISO 7816-4 §5.1: case 1 has neither Lc nor Le, hence no extended form.
            object.__setattr__(self, "extended", False)
        if not self.extended:
            if len(self.data) > SHORT_MAX_DATA:
                raise ValueError(
                    f"{len(self.data)} data bytes need extended=True (short max {SHORT_MAX_DATA})"
                )
            if self.le is not None and self.le > SHORT_MAX_LE:
                raise ValueError(f"le={self.le} needs extended=True (short max {SHORT_MAX_LE})")

    def __repr__(self) -> str:
        return (
            f"CommandApdu(cla=0x{self.cla:02X}, ins=0x{self.ins:02X}, p1=0x{self.p1:02X}, "
            f"p2=0x{self.p2:02X}, data=<{len(self.data)} bytes>, le={self.le}, "
            f"extended={self.extended})"
        )

    # -- decoding --------------------------------------------------------------------------

    @classmethod
    def parse(cls, raw: bytes) -> CommandApdu:
        """Decode a command APDU (ISO 7816-4 §5.1, decoding conventions for Lc and Le).

        Raises ApduFormatError if ``raw`` is not exactly one of the case 1, 2S, 3S, 4S, 2E, 3E
        or 4E encodings.
        """
        raw = bytes(raw)
        n = len(raw)
        if n < _HEADER_LEN:
            raise ApduFormatError(f"command APDU shorter than the 4-byte header ({n} bytes)")
        cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
        # Offsets into ``raw`` rather than a body slice: the data field is copied once.
        h = _HEADER_LEN
        b = n - h
        if b == 0:  # case 1
            return cls(cla, ins, p1, p2)
        if b == 1:  # case 2S: Le byte, 00 means 256
            return cls(cla, ins, p1, p2, le=raw[h] or SHORT_MAX_LE)
        if raw[h] != 0:  # short Lc: case 3S or 4S
            lc = raw[h]
            if b == 1 + lc:
                return cls(cla, ins, p1, p2, data=raw[h + 1 :])
            if b == 2 + lc:
                return cls(cla, ins, p1, p2, data=raw[h + 1 : -1], le=raw[-1] or SHORT_MAX_LE)
            raise ApduFormatError(
                f"short Lc={lc} does not match body length {b} (expected {1 + lc} or {2 + lc})"
            )
        # raw[h] == 00 and more bytes follow: extended length.
        if b == 3:  # case 2E: 00 hi lo, 0000 means 65536
            le = int.from_bytes(raw[h + 1 : h + 3], "big") or EXTENDED_MAX_LE
            return cls(cla, ins, p1, p2, le=le, extended=True)
        if b < 3:
            raise ApduFormatError(f"truncated extended length field ({b} bytes after header)")
        lc = int.from_bytes(raw[h + 1 : h + 3], "big")
        if lc == 0:
            raise ApduFormatError("extended Lc is 0000 but data follows")
        if b == 3 + lc:  # case 3E
            return cls(cla, ins, p1, p2, data=raw[h + 3 :], extended=True)
        if b == 5 + lc:  # case 4E: Le is 2 bytes, 0000 means 65536
            le = int.from_bytes(raw[-2:], "big") or EXTENDED_MAX_LE
            return cls(cla, ins, p1, p2, data=raw[h + 3 : -2], le=le, extended=True)
        raise ApduFormatError(
            f"extended Lc={lc} does not match body length {b} (expected {3 + lc} or {5 + lc})"
        )

    # -- encoding --------------------------------------------------------------------------

    def header(self) -> bytes:
        """CLA INS P1 P2."""
        return bytes((self.cla, self.ins, self.p1, self.p2))

    def lc_field(self) -> bytes:
        """The Lc field as encoded: empty, 1 byte (short) or ``00 hi lo`` (extended)."""
        if not self.data:
            return b""
        if self.extended:
            return b"\x00" + len(self.data).to_bytes(2, "big")
        return bytes((len(self.data),))

    def _le_field(self) -> bytes:
        if self.le is None:
            return b""
        if self.extended:
            le = (self.le % EXTENDED_MAX_LE).to_bytes(2, "big")  # 65536 -> 0000
            return le if self.data else b"\x00" + le
        return bytes((self.le % SHORT_MAX_LE,))  # 256 -> 00

    def encode(self) -> bytes:
        """The wire bytes; ``CommandApdu.parse(c.encode()) == c``."""
        # One join: the data field (up to 64 KiB) is copied once.
        return b"".join((self.header(), self.lc_field(), self.data, self._le_field()))

    @property
    def case(self) -> int:
        """ISO 7816-4 §5.1 case: 1 (no data, no Le), 2 (Le), 3 (data), 4 (data and Le)."""
        if self.data:
            return 3 if self.le is None else 4
        return 1 if self.le is None else 2

    def with_data(self, data: bytes, *, cla: int | None = None) -> CommandApdu:
        """The same command with other data (and optionally another CLA); Le is kept and the
        extended form is chosen when the data no longer fits a short APDU."""
        return dataclasses.replace(
            self,
            data=bytes(data),
            cla=self.cla if cla is None else cla,
            extended=self.extended or len(data) > SHORT_MAX_DATA,
        )


def split_chain(cmd: CommandApdu, chunk: int = SHORT_MAX_DATA) -> list[CommandApdu]:
    """Split a command into short APDUs using command chaining (ISO 7816-4 §5.3.3).

    Every piece but the last has CLA | 0x10 and no Le; the last keeps the original CLA and Le.
    An Le above 256 cannot be coded in a short APDU: the last piece then carries Le = 256
    (short Le 00) and the card delivers the rest with 61xx. A command with at most ``chunk``
    data bytes is returned unchanged, as ``[cmd]``.
    """
    if not 1 <= chunk <= SHORT_MAX_DATA:
        raise ValueError(f"chunk must be 1..{SHORT_MAX_DATA}, got {chunk}")
    if len(cmd.data) <= chunk:
        return [cmd]
    pieces = [cmd.data[i : i + chunk] for i in range(0, len(cmd.data), chunk)]
    chained = cmd.cla | CLA_CHAINING
    out = [CommandApdu(chained, cmd.ins, cmd.p1, cmd.p2, data=p) for p in pieces[:-1]]
    le = None if cmd.le is None else min(cmd.le, SHORT_MAX_LE)
    out.append(CommandApdu(cmd.cla, cmd.ins, cmd.p1, cmd.p2, data=pieces[-1], le=le))
    return out


def get_response(le: int = SHORT_MAX_LE, cla: int = 0x00) -> CommandApdu:
    """GET RESPONSE (ISO 7816-4, INS C0): fetch the ``le`` bytes a 61xx status announced."""
    return CommandApdu(cla, Ins.GET_RESPONSE, 0x00, 0x00, le=le, extended=le > SHORT_MAX_LE)


def reissue_with_le(cmd: CommandApdu, sw: int) -> CommandApdu:
    """The command to resend after 6Cxx (ISO 7816-4 §5.6): same command, Le = SW2 (00 = 256)."""
    if sw >> 8 != SW.WRONG_LE.sw1:
        raise ValueError(f"not a 6Cxx status word: {sw:04X}")
    return dataclasses.replace(cmd, le=(sw & 0xFF) or SHORT_MAX_LE)
