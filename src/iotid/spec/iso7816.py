"""ISO/IEC 7816-4 vocabulary: status words, interindustry instructions, CLA bits.

Scope: constants only. Status words are an ``IntEnum`` so that every place that produces or
interprets one uses a name; ``SW.describe`` gives a human-readable text for any 16-bit value.
"""

from __future__ import annotations

from enum import IntEnum, unique


@unique
class SW(IntEnum):
    """Status words (ISO/IEC 7816-4 section 5.6, GPC 2.3.1 section 11.1.3)."""

    OK = 0x9000
    # 61xx and 6Cxx carry a length in SW2; the XX00 members name the family.
    BYTES_REMAINING = 0x6100
    WRONG_LE = 0x6C00
    WARNING_NO_INFO = 0x6200
    NO_INPUT_DATA = 0x6285
    MORE_DATA_AVAILABLE = 0x6310
    AUTHENTICATION_FAILED = 0x6300
    MEMORY_FAILURE = 0x6581
    WRONG_LENGTH = 0x6700
    LOGICAL_CHANNEL_NOT_SUPPORTED = 0x6881
    SECURE_MESSAGING_NOT_SUPPORTED = 0x6882
    LAST_COMMAND_OF_CHAIN_EXPECTED = 0x6883
    COMMAND_CHAINING_NOT_SUPPORTED = 0x6884
    SECURITY_STATUS_NOT_SATISFIED = 0x6982
    AUTH_METHOD_BLOCKED = 0x6983
    DATA_INVALID = 0x6984
    CONDITIONS_NOT_SATISFIED = 0x6985
    COMMAND_NOT_ALLOWED = 0x6986
    SM_DATA_OBJECTS_MISSING = 0x6987
    SM_DATA_OBJECTS_INCORRECT = 0x6988
    WRONG_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    RECORD_NOT_FOUND = 0x6A83
    NOT_ENOUGH_MEMORY = 0x6A84
    INCORRECT_P1P2 = 0x6A86
    REFERENCED_DATA_NOT_FOUND = 0x6A88
    WRONG_P1P2 = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    UNKNOWN = 0x6F00

    @property
    def sw1(self) -> int:
        return int(self) >> 8

    @property
    def sw2(self) -> int:
        return int(self) & 0xFF

    @staticmethod
    def describe(sw: int) -> str:
        """Readable text for any status word, including the 61xx/6Cxx families."""
        if sw >> 8 == 0x61:
            return f"{sw:04X} ({sw & 0xFF or 256} bytes remaining)"
        if sw >> 8 == 0x6C:
            return f"{sw:04X} (wrong Le, exact length {sw & 0xFF or 256})"
        try:
            return f"{sw:04X} ({SW(sw).name})"
        except ValueError:
            return f"{sw:04X}"


def is_success(sw: int) -> bool:
    """9000, or a warning (62xx/63xx): the words after which GP SCP03 still applies R-MAC."""
    return sw == SW.OK or (sw >> 8) in (0x62, 0x63)


@unique
class Ins(IntEnum):
    """Interindustry instructions handled by the card OS (ISO/IEC 7816-4 section 5.4)."""

    SELECT = 0xA4
    MANAGE_CHANNEL = 0x70
    GET_RESPONSE = 0xC0
    GET_DATA = 0xCA


# CLA bits (ISO/IEC 7816-4 section 5.4.1; GPC 2.3.1 section 11.1.4).
CLA_PROPRIETARY = 0x80
CLA_CHAINING = 0x10
CLA_SECURE_MESSAGING = 0x04
CLA_CHANNEL_MASK = 0x03

# SELECT P1/P2 (ISO/IEC 7816-4 section 11.2.2).
SELECT_BY_DF_NAME = 0x04
SELECT_FIRST_OR_ONLY = 0x00
SELECT_NEXT = 0x02

SHORT_MAX_DATA = 255
SHORT_MAX_LE = 256
EXTENDED_MAX_DATA = 65535
EXTENDED_MAX_LE = 65536
