"""ISO/IEC 7816-4 encoding shared by the card and the host.

Scope: command and response APDUs (short, extended, chaining, 61xx/6Cxx helpers), BER-TLV,
GP/EMV CPS DGIs, and the two APDU exceptions. Imports only ``iotid.spec``.

Not covered: secure messaging (``iotid.scp03``), transports (``iotid.transport``), applet
semantics (``iotid.se``, ``iotid.host``).
"""

from __future__ import annotations

from .command import CommandApdu, get_response, reissue_with_le, split_chain
from .dgi import DgiStream, encode_dgi, parse_dgi, parse_dgis
from .errors import ApduError, ApduFormatError
from .response import ResponseApdu, chunk_response
from .tlv import (
    Tlv,
    encode_length,
    encode_tag,
    find_tlv,
    parse_tlv,
    parse_tlvs,
    tlv,
    unpack_tlv,
)

__all__ = [
    "ApduError",
    "ApduFormatError",
    "CommandApdu",
    "DgiStream",
    "ResponseApdu",
    "Tlv",
    "chunk_response",
    "encode_dgi",
    "encode_length",
    "encode_tag",
    "find_tlv",
    "get_response",
    "parse_dgi",
    "parse_dgis",
    "parse_tlv",
    "parse_tlvs",
    "reissue_with_le",
    "split_chain",
    "tlv",
    "unpack_tlv",
]
