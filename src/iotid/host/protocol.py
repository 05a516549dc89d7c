"""A yubikit-style protocol object over a :class:`iotid.transport.Connection`.

Scope: processors stacked one on another, so that adding secure messaging changes no session:
- the bottom one encodes APDUs for the wire, short or extended length;
- in short mode a chaining processor splits long commands (ISO 7816-4 section 5.3.3);
- a response processor follows 61xx with GET RESPONSE and re-issues on 6Cxx;
- on top, once a session is open, the SCP03 processor wraps commands and unwraps responses.
Not in scope: what the commands mean (sessions), the SCP03 handshake (``iotid.host.scp``).
"""

from __future__ import annotations

from typing import Protocol

from iotid.apdu import (
    ApduError,
    ApduFormatError,
    CommandApdu,
    ResponseApdu,
    get_response,
    reissue_with_le,
    split_chain,
)
from iotid.host.errors import BadResponseError
from iotid.scp03 import ScpError, SecureChannel
from iotid.spec.iso7816 import (
    CLA_SECURE_MESSAGING,
    SELECT_BY_DF_NAME,
    SHORT_MAX_DATA,
    SHORT_MAX_LE,
    SW,
    Ins,
)
from iotid.transport.base import Connection

#: Follow at most this many 61xx answers (64 KiB in 256-byte pieces, plus margin).
MAX_GET_RESPONSE = 300


class Processor(Protocol):
    def send(self, cmd: CommandApdu) -> ResponseApdu: ...


class WireProcessor:
    """Encodes for the wire: short, or extended when ``extended`` (then every APDU is extended)."""

    def __init__(self, connection: Connection, *, extended: bool) -> None:
        self.connection = connection
        self.extended = extended

    def send(self, cmd: CommandApdu) -> ResponseApdu:
        # A command carrying a C-MAC keeps the encoding it was MACed with.
        protected = bool(cmd.cla & CLA_SECURE_MESSAGING)
        if (
            self.extended
            and not protected
            and not cmd.extended
            and (cmd.data or cmd.le is not None)
        ):
            cmd = CommandApdu(cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data, cmd.le, extended=True)
        try:
            return ResponseApdu.parse(self.connection.transmit(cmd.encode()))
        except ApduFormatError as exc:
            raise BadResponseError("the card answered fewer than two bytes") from exc


class ChainingProcessor:
    """Short mode: sends a long command as a chain of short ones."""

    def __init__(self, delegate: Processor) -> None:
        self.delegate = delegate

    def send(self, cmd: CommandApdu) -> ResponseApdu:
        if len(cmd.data) <= SHORT_MAX_DATA and (cmd.le or 0) <= 256:
            if cmd.extended:
                cmd = CommandApdu(cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data, cmd.le)
            return self.delegate.send(cmd)
        pieces = split_chain(cmd)
        for piece in pieces[:-1]:
            resp = self.delegate.send(piece)
            if resp.sw != SW.OK:
                return resp
        return self.delegate.send(pieces[-1])


class ResponseProcessor:
    """61xx: collect with GET RESPONSE; 6Cxx: re-issue with the exact Le (ISO 7816-4 5.3.4)."""

    def __init__(self, delegate: Processor) -> None:
        self.delegate = delegate

    def send(self, cmd: CommandApdu) -> ResponseApdu:
        resp = self.delegate.send(cmd)
        if resp.sw1 == 0x6C:
            resp = self.delegate.send(reissue_with_le(cmd, resp.sw))
        data = b""
        for _ in range(MAX_GET_RESPONSE):
            if resp.sw1 != 0x61:
                return ResponseApdu(data + resp.data, resp.sw)
            data += resp.data
            resp = self.delegate.send(get_response(resp.sw2 or 256))
        raise BadResponseError("the card kept answering 61xx")


class ScpProcessor:
    """SCP03 secure messaging on top of the rest (GPC 2.3.1 Amd D section 6.2)."""

    def __init__(
        self, delegate: Processor, channel: SecureChannel, *, extended: bool, encrypt_empty: bool
    ) -> None:
        self.delegate = delegate
        self.channel = channel
        self.extended = extended
        self.encrypt_empty = encrypt_empty

    def send(self, cmd: CommandApdu) -> ResponseApdu:
        # Extended mode MACs 00 hi lo; in short mode the channel goes extended past 255 bytes.
        want = self.extended or len(cmd.data) > SHORT_MAX_DATA
        if want != cmd.extended and (cmd.data or cmd.le is not None):
            cmd = CommandApdu(cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data, cmd.le, extended=want)
        wrapped = self.channel.wrap_command(cmd, encrypt_empty=self.encrypt_empty)
        resp = self.delegate.send(wrapped)
        try:
            return ResponseApdu(self.channel.unwrap_response(resp.data, resp.sw), resp.sw)
        except ScpError as exc:
            raise BadResponseError(f"secure channel: {exc}") from None


class SmartCardProtocol:
    """The protocol object the sessions share."""

    def __init__(
        self, connection: Connection, *, extended: bool = False, encrypt_empty: bool = False
    ) -> None:
        self.connection = connection
        self.extended = extended
        self.encrypt_empty = encrypt_empty
        self._base = self._build_base()
        self._processor: Processor = self._base
        self.channel: SecureChannel | None = None

    def _build_base(self) -> Processor:
        wire = WireProcessor(self.connection, extended=self.extended)
        return ResponseProcessor(wire if self.extended else ChainingProcessor(wire))

    # -- sending ------------------------------------------------------------------------------
    def send(self, cmd: CommandApdu) -> ResponseApdu:
        """Send through the whole stack; returns the response whatever its status word."""
        return self._processor.send(cmd)

    def send_plain(self, cmd: CommandApdu) -> ResponseApdu:
        """Send below secure messaging (INITIALIZE UPDATE, EXTERNAL AUTHENTICATE)."""
        return self._base.send(cmd)

    def transmit(
        self, cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None
    ) -> bytes:
        """Send and return the data of a 9000 answer; any other status word raises ApduError."""
        if le is not None and le > SHORT_MAX_LE and not self.extended:
            le = SHORT_MAX_LE  # short APDUs ask for 256 at most; the rest comes through 61xx
        extended = len(data) > SHORT_MAX_DATA or (le or 0) > SHORT_MAX_LE
        resp = self.send(CommandApdu(cla, ins, p1, p2, data, le, extended=extended))
        if resp.sw != SW.OK:
            raise ApduError(resp.sw, resp.data)
        return resp.data

    # -- sessions -----------------------------------------------------------------------------
    def select(self, aid: bytes) -> bytes:
        """SELECT by AID; ends any secure channel session (the card ends it too)."""
        self.end_secure_channel()
        return self.transmit(0x00, Ins.SELECT, SELECT_BY_DF_NAME, 0x00, aid, le=256)

    def start_secure_channel(self, channel: SecureChannel) -> None:
        self.channel = channel
        self._processor = ScpProcessor(
            self._base, channel, extended=self.extended, encrypt_empty=self.encrypt_empty
        )

    def end_secure_channel(self) -> None:
        self.channel = None
        self._processor = self._base

    def close(self) -> None:
        self.end_secure_channel()
        self.connection.close()
