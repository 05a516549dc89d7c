"""ISO/IEC 9797-1 padding method 2, as GlobalPlatform uses it for AES (GPC 2.3.1 §B.2.3).

Scope: add and remove the ``80 00 .. 00`` padding to a multiple of the block size. It is protocol
glue, not a cipher. Not covered: PKCS#7 or any other padding, and the DEK "arbitrary bytes" padding
of 24-byte keys (GPC 2.3.1 Amd D §6.2.8), which is the caller's business.
"""

from __future__ import annotations

__all__ = ["PaddingError", "pad_iso9797_m2", "unpad_iso9797_m2"]

_PAD_MARKER = 0x80


class PaddingError(ValueError):
    """The data does not end in valid method-2 padding. The message never quotes the data."""


def _check_block(block: int) -> None:
    if not 1 <= block <= 255:
        raise ValueError("block size must be between 1 and 255 bytes")


def pad_iso9797_m2(data: bytes, block: int = 16) -> bytes:
    """Append 0x80 then zeros up to the next multiple of ``block`` (always adds 1..block bytes)."""
    _check_block(block)
    zeros = (block - (len(data) + 1) % block) % block
    return bytes(data) + bytes([_PAD_MARKER]) + bytes(zeros)


def unpad_iso9797_m2(data: bytes, block: int = 16, *, lenient: bool = False) -> bytes:
    """Strip method-2 padding; raise :class:`PaddingError` if it is missing or malformed.

    Strict (default): the padding is the minimal ``80 00..`` and so sits in the last block. The
    whole last block is scanned without an early exit, so the time taken does not depend on where
    the marker is.

    ``lenient=True`` also accepts padding longer than one block (``80`` then any number of zero
    bytes, the data still a multiple of ``block``), which some cards emit and yubikit accepts.
    It is not constant time: use it only on data whose MAC has already been verified.
    """
    _check_block(block)
    if not data or len(data) % block:
        raise PaddingError("padded data is not a positive multiple of the block size")
    if lenient:
        stripped = bytes(data).rstrip(b"\x00")
        if not stripped or stripped[-1] != _PAD_MARKER:
            raise PaddingError("invalid padding")
        return stripped[:-1]
    tail = data[-block:]
    marker_index = -1
    invalid = 0
    seen = 0
    for index in range(block - 1, -1, -1):
        value = tail[index]
        first_nonzero = (seen == 0) & (value != 0)
        if first_nonzero:
            marker_index = index
            invalid |= value ^ _PAD_MARKER
        seen |= value
    if invalid or marker_index < 0:
        raise PaddingError("invalid padding")
    return bytes(data[: len(data) - block + marker_index])
