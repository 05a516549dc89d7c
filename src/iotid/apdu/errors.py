"""Errors raised while encoding, decoding or answering APDUs.

Scope: two exception types shared by the card and the host.

- ``ApduFormatError``: bytes that are not a well-formed encoding (ISO/IEC 7816-4 §5.1 command
  APDUs, §5.2.2 BER-TLV, GP/EMV CPS DGIs). It is a ``ValueError``.
- ``ApduError``: a well-formed answer whose status word is not 9000 (ISO/IEC 7816-4 §5.6).
  Applets raise it to answer a status word; the host raises it for non-9000 responses.

Not covered: translation of status words into typed, per-applet errors (the host sessions do
that), transport failures (``iotid.transport``). Neither exception ever carries response data
in its message or ``repr``: the data may be sensitive.
"""

from __future__ import annotations

from iotid.spec.iso7816 import SW

__all__ = ["ApduError", "ApduFormatError"]


class ApduFormatError(ValueError):
    """A malformed APDU, TLV or DGI encoding. The message says what is wrong."""


class ApduError(Exception):
    """A status word other than success, with the response data that came with it."""

    sw: int
    data: bytes
    message: str | None

    def __init__(self, sw: int, data: bytes = b"", message: str | None = None) -> None:
        sw = int(sw)
        if not 0 <= sw <= 0xFFFF:
            raise ValueError(f"status word out of range: {sw:#x}")
        self.sw = sw
        self.data = bytes(data)
        self.message = message
        # Only the text goes to Exception.args, so the default repr never shows ``data``.
        super().__init__(self._text())

    def _text(self) -> str:
        text = SW.describe(self.sw)
        return f"{text}: {self.message}" if self.message else text

    def __str__(self) -> str:
        return self._text()

    def __reduce__(self) -> tuple[type[ApduError], tuple[int, bytes, str | None]]:
        # Exception pickling replays ``args``; ours are not the constructor's arguments.
        return (type(self), (self.sw, self.data, self.message))
