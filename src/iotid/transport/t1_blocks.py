"""ISO/IEC 7816-3 T=1 (§11) vocabulary and block codec, shared by both ends of ``t1``.

Scope: PCB coding of I-blocks (N(S), chaining bit M), R-blocks (N(R), EDC / other error) and
S-blocks (RESYNCH, IFS, ABORT, WTX; request and response); the epilogue, LRC or CRC; NAD;
validation of a received frame (§11.6.3.1: what makes a block invalid); the T=1 parameters an
ATR announces (IFSC in TA, EDC in TC, after the TD naming T=1); the parameters and counters
both ends share. Defined once here: the host (``t1``) and the card (``t1_card``) import them.

Not in scope: the protocol rules (``t1``, ``t1_card``), the bus (``i2c``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

__all__ = [
    "DEFAULT_IFS",
    "MAX_INF",
    "MAX_RESPONSE",
    "Block",
    "BlockError",
    "Edc",
    "RError",
    "SType",
    "T1Params",
    "T1Stats",
    "crc16",
    "lrc",
    "t1_parameters_from_atr",
]

# ISO 7816-3 §11.3.2.2 PCB coding.
_PCB_R = 0x80
_PCB_S = 0xC0
_I_NS = 0x40
_I_MORE = 0x20
_I_RFU = 0x1F
_R_NR = 0x10
_R_RFU = 0x20
_R_ERROR = 0x0F
_S_RESPONSE = 0x20
_S_TYPE = 0x1F
#: §11.3.2.3: LEN FF is reserved; an information field holds at most 254 bytes.
MAX_INF = 254
DEFAULT_IFS = 32  # §11.4.2: IFSC and IFSD before any TA(i>2) or S(IFS)
#: Largest response the host collects (65536 bytes of data plus SW1 SW2).
MAX_RESPONSE = 65538


class Edc(Enum):
    """§11.4.4: epilogue field, LRC (1 byte) or CRC (2 bytes), chosen by TC(i>2) bit 1."""

    LRC = 1
    CRC = 2

    @property
    def size(self) -> int:
        return 1 if self is Edc.LRC else 2


class RError(IntEnum):
    """§11.3.2.2, R-block b4-b1."""

    OK = 0
    EDC = 1
    OTHER = 2


class SType(IntEnum):
    """§11.3.2.2, S-block b5-b1."""

    RESYNCH = 0
    IFS = 1
    ABORT = 2
    WTX = 3


_S_INF_LEN = {SType.RESYNCH: 0, SType.ABORT: 0, SType.IFS: 1, SType.WTX: 1}


def lrc(data: bytes) -> bytes:
    """§11.4.4: exclusive-or of every byte of prologue and information field."""
    x = 0
    for b in data:
        x ^= b
    return bytes([x])


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        v = n
        for _ in range(8):
            v = (v >> 1) ^ 0x8408 if v & 1 else v >> 1
        table.append(v)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> bytes:
    """§11.4.4 CRC of ISO/IEC 13239 (x^16 + x^12 + x^5 + 1, bit-reflected, preset FFFF), without
    final inversion and high byte first, as the pcsc-lite CCID driver and OpenCT compute it
    (CRC-16/MCRF4XX; check value of "123456789" is 6F91). A checksum, not cryptography."""
    v = 0xFFFF
    for b in data:
        v = (v >> 8) ^ _CRC_TABLE[(v ^ b) & 0xFF]
    return v.to_bytes(2, "big")


def _edc(edc: Edc, data: bytes) -> bytes:
    return lrc(data) if edc is Edc.LRC else crc16(data)


class BlockError(ValueError):
    """An invalid block (§11.6.3.1): ``edc`` True for a bad epilogue, else a format error."""

    def __init__(self, reason: str, *, edc: bool = False) -> None:
        super().__init__(reason)
        self.edc = edc


@dataclass(frozen=True)
class Block:
    """One T=1 block: NAD, PCB, information field (§11.3.1). Use the constructors below."""

    nad: int
    pcb: int
    inf: bytes = b""

    @classmethod
    def i_block(cls, ns: int, inf: bytes, *, more: bool = False, nad: int = 0) -> Block:
        return cls(nad, (_I_NS if ns else 0) | (_I_MORE if more else 0), bytes(inf))

    @classmethod
    def r_block(cls, nr: int, error: RError = RError.OK, *, nad: int = 0) -> Block:
        return cls(nad, _PCB_R | (_R_NR if nr else 0) | error)

    @classmethod
    def s_block(
        cls, stype: SType, *, response: bool = False, inf: bytes = b"", nad: int = 0
    ) -> Block:
        return cls(nad, _PCB_S | (_S_RESPONSE if response else 0) | stype, bytes(inf))

    @property
    def is_i(self) -> bool:
        return not self.pcb & 0x80

    @property
    def is_r(self) -> bool:
        return self.pcb & 0xC0 == _PCB_R

    @property
    def is_s(self) -> bool:
        return self.pcb & 0xC0 == _PCB_S

    @property
    def ns(self) -> int:
        return int(bool(self.pcb & _I_NS))

    @property
    def more(self) -> bool:
        return self.is_i and bool(self.pcb & _I_MORE)

    @property
    def nr(self) -> int:
        return int(bool(self.pcb & _R_NR))

    @property
    def error(self) -> RError:
        return RError(self.pcb & _R_ERROR)

    @property
    def stype(self) -> SType:
        return SType(self.pcb & _S_TYPE)

    @property
    def is_response(self) -> bool:
        return self.is_s and bool(self.pcb & _S_RESPONSE)

    def is_s_of(self, stype: SType, *, response: bool) -> bool:
        return self.is_s and self.stype == stype and self.is_response == response

    def encode(self, edc: Edc) -> bytes:
        if len(self.inf) > MAX_INF:
            raise ValueError("information field longer than 254 bytes")
        body = bytes([self.nad, self.pcb, len(self.inf)]) + self.inf
        return body + _edc(edc, body)

    @classmethod
    def decode(cls, frame: bytes, edc: Edc, *, nad: int, max_inf: int = MAX_INF) -> Block:
        """Parse and validate one frame (§11.3, §11.6.3.1); raises ``BlockError``."""
        n = edc.size
        if len(frame) < 3 + n:
            raise BlockError("frame shorter than prologue and epilogue")
        if len(frame) != 3 + frame[2] + n:
            raise BlockError("frame length does not match LEN")
        if _edc(edc, frame[:-n]) != frame[-n:]:
            raise BlockError("EDC mismatch", edc=True)
        block = cls(frame[0], frame[1], bytes(frame[3:-n]))
        if block.nad != nad:
            raise BlockError("unexpected NAD")
        if frame[2] == 0xFF:
            raise BlockError("LEN FF is reserved")
        if block.is_i:
            if block.pcb & _I_RFU:
                raise BlockError("I-block with RFU bits set")
            if len(block.inf) > max_inf:
                raise BlockError("I-block longer than the receiver's IFS")
        elif block.is_r:
            if block.pcb & _R_RFU or block.pcb & _R_ERROR > RError.OTHER or block.inf:
                raise BlockError("malformed R-block")
        else:
            stype = block.pcb & _S_TYPE
            if stype not in _S_INF_LEN or len(block.inf) != _S_INF_LEN[SType(stype)]:
                raise BlockError("malformed S-block")
        return block

    def describe(self) -> str:
        """For debug logs: the block's kind and control bits, never its information field."""
        if self.is_i:
            return f"I({self.ns}{', M' if self.more else ''}; {len(self.inf)} B)"
        if self.is_r:
            return f"R({self.nr}{'' if not self.error else ', ' + self.error.name})"
        kind = "response" if self.is_response else "request"
        arg = f" {self.inf[0]}" if self.inf else ""
        return f"S({self.stype.name} {kind}{arg})"


def t1_parameters_from_atr(atr: bytes) -> tuple[int, Edc]:
    """IFSC and EDC announced by an ATR (§8.2.3, §11.4): the first TA(i) and TC(i) after a TD
    naming T=1 (i > 2); the defaults (32, LRC) where absent. Raises ValueError on a short ATR."""
    if len(atr) < 2:
        raise ValueError("ATR too short")
    ifsc, edc = DEFAULT_IFS, Edc.LRC
    pos, y, proto_t1, seen_ta, seen_tc = 2, atr[1] >> 4, False, False, False
    while True:
        ta = tc = td = None
        for bit in (1, 2, 4, 8):
            if not y & bit:
                continue
            if pos >= len(atr):
                raise ValueError("ATR truncated in its interface bytes")
            value = atr[pos]
            pos += 1
            if bit == 1:
                ta = value
            elif bit == 4:
                tc = value
            elif bit == 8:
                td = value
        if proto_t1:
            if ta is not None and not seen_ta:
                ifsc, seen_ta = ta, True
            if tc is not None and not seen_tc:
                edc, seen_tc = (Edc.CRC if tc & 1 else Edc.LRC), True
        if td is None:
            break
        y, proto_t1 = td >> 4, (td & 0x0F) == 1
    if not 1 <= ifsc <= MAX_INF:
        raise ValueError("ATR announces an invalid IFSC")
    return ifsc, edc


@dataclass(frozen=True)
class T1Params:
    """Both ends' T=1 parameters: the card's IFSC, the host's IFSD, the EDC, the block waiting
    time in virtual seconds, the host's NAD, block re-sends before RESYNCH (Rule 7.4; three
    as in the pcsc-lite CCID driver) and S(RESYNCH) attempts (Rule 6.4)."""

    ifsc: int = DEFAULT_IFS
    ifsd: int = MAX_INF
    edc: Edc = Edc.LRC
    bwt: float = 1.0
    nad: int = 0x00
    retries: int = 3
    resyncs: int = 3

    def __post_init__(self) -> None:
        if not (1 <= self.ifsc <= MAX_INF and 1 <= self.ifsd <= MAX_INF):
            raise ValueError("IFSC and IFSD are 1..254")
        if self.bwt <= 0 or self.retries < 1 or self.resyncs < 1:
            raise ValueError("bwt must be positive; retries and resyncs at least 1")

    @property
    def card_nad(self) -> int:
        """The card answers with SAD and DAD swapped (§11.3.2.1)."""
        return ((self.nad & 0x0F) << 4) | (self.nad >> 4)


@dataclass
class T1Stats:
    """Counters of one side. ``retransmissions``: blocks sent to recover from an error."""

    apdus: int = 0
    blocks_sent: int = 0
    blocks_received: int = 0
    invalid: int = 0
    timeouts: int = 0
    retransmissions: int = 0
    resyncs: int = 0
    restarts: int = 0
    wtx: int = 0
    aborts: int = 0
    failures: int = 0
