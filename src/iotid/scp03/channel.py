"""The SCP03 secure-messaging state machine, one class for both ends of the channel.

Scope: after the INITIALIZE UPDATE exchange has produced the session keys, a
:class:`SecureChannel` builds (host) or verifies (card) the EXTERNAL AUTHENTICATE C-MAC
(Amd D §6.2.3), then protects commands with C-MAC and C-DECRYPTION (§6.2.4, §6.2.6) and responses
with R-MAC and R-ENCRYPTION (§6.2.5, §6.2.7). The host and the card each keep their own instance;
both keep the MAC chaining value and the encryption counter in step. S8 mode, AES-128/192/256.

Interoperability choices (what GlobalPlatformPro and yubikit do, and real cards accept):

- The C-MAC covers Lc as it is sent: one byte for a short command, ``00 hi lo`` for an extended
  one. The host switches to extended length when the protected data exceed 255 bytes; a card that
  reassembles a chained command passes it on as extended when its total exceeds 255 bytes.
- The encryption counter advances once per command, with or without data. A command without
  data is not encrypted unless the host asks (``encrypt_empty``, as yubikit does); the card
  accepts both forms.
- R-MAC only on 9000/62xx/63xx; error status words get neither data nor MAC.
- Padding is produced minimal (GPC 2.3.1 §B.2.3) but, once the MAC has been verified, padding
  longer than one block is accepted (``80`` then zeros): a Samsung eSE trace pads an 11-byte
  response to 32 bytes and yubikit accepts it. The MAC is always checked before decryption.

Not covered: INITIALIZE UPDATE parsing, host-cryptogram comparison and key selection (the ISD and
the host session), 61xx/GET RESPONSE and command chaining (done below this layer on the full
protected APDU), S16 mode, BEGIN/END R-MAC SESSION, logical channels 4-19. No exception message
contains key, MAC or data bytes.
"""

from __future__ import annotations

import hmac

from iotid.apdu import CommandApdu
from iotid.crypto import (
    AES_BLOCK,
    PaddingError,
    aes_cbc_decrypt,
    aes_cbc_encrypt,
    aes_cmac,
    aes_encrypt_block,
    pad_iso9797_m2,
    unpad_iso9797_m2,
)
from iotid.spec.gp import VALID_SECURITY_LEVELS, GpIns, SecurityLevel
from iotid.spec.iso7816 import (
    CLA_PROPRIETARY,
    CLA_SECURE_MESSAGING,
    EXTENDED_MAX_DATA,
    SHORT_MAX_DATA,
    SHORT_MAX_LE,
    is_success,
)

from .kdf import CRYPTOGRAM_LENGTH
from .keys import SessionKeys

__all__ = ["MacError", "ScpError", "ScpFormatError", "SecureChannel"]

#: S8 mode: C-MAC and R-MAC are the first 8 bytes of the CMAC (Amd D §6.2.4, §6.2.5).
MAC_LENGTH = 8
_ZERO_CHAIN = bytes(AES_BLOCK)
#: CLA bit b7: further interindustry class (logical channels 4-19), not supported here.
_CLA_FURTHER_INTERINDUSTRY = 0x40
#: Amd D §6.2.7: the response ICV block starts with '80' instead of '00'.
_RESPONSE_ICV_MARKER = b"\x80"
_COUNTER_BYTES_RESPONSE = AES_BLOCK - 1


class ScpError(Exception):
    """Base class of secure-channel failures. Messages never contain key, MAC or data bytes."""


class MacError(ScpError):
    """A C-MAC or R-MAC is wrong or missing."""


class ScpFormatError(ScpError):
    """A protected message has the wrong length, bad padding after decryption, or no room for a
    MAC."""


_CHANNEL_BITS = 0x03
_CLA_B4 = 0x08


def _mac_cla(cla: int) -> int:
    # Amd D §6.2.4: the CLA covered by the C-MAC has the logical channel number set to zero,
    # b4 = 0 and b3 = 1 (GP proprietary secure messaging); every other bit (b8 proprietary class,
    # b6, b5 chaining) is covered as it is. The card refuses b4 and RFU bits before this.
    return (cla & ~(_CHANNEL_BITS | _CLA_B4)) | CLA_SECURE_MESSAGING


def _check_channel_class(cla: int) -> None:
    if cla & _CLA_FURTHER_INTERINDUSTRY:
        raise ScpFormatError("logical channels 4-19 are not supported by this secure channel")


class SecureChannel:
    """One end of an SCP03 secure channel session (host or card).

    ``level`` is the EXTERNAL AUTHENTICATE P1 (Amd D Table 7-6): one of 00, 01, 03, 11, 13, 33.
    The MAC chaining value starts at 00 x 16 for EXTERNAL AUTHENTICATE (§6.2.3); the encryption
    counter is 1 for the first command after it (§6.2.6). Once a MAC or format check fails the
    instance is aborted: every later call raises :class:`ScpError` (Amd D §5.6).
    """

    def __init__(self, keys: SessionKeys, level: int) -> None:
        if level not in VALID_SECURITY_LEVELS:
            raise ValueError(f"unsupported security level {level:#04x}")
        self._keys = keys
        self._level = SecurityLevel(level)
        self._mac_chain = _ZERO_CHAIN
        self._counter = 1
        self._command_counter: int | None = None
        self._initiated = False
        self._aborted = False

    def __repr__(self) -> str:
        state = "aborted" if self._aborted else ("open" if self._initiated else "initiating")
        return (
            f"SecureChannel(level={int(self._level):#04x}, AES-{8 * self._keys.key_length}, "
            f"{state}, counter={self._counter})"
        )

    # -- read-only state ------------------------------------------------------------------------

    @property
    def level(self) -> int:
        """The security level (EXTERNAL AUTHENTICATE P1)."""
        return int(self._level)

    @property
    def mac_chain(self) -> bytes:
        """The current 16-byte MAC chaining value."""
        return self._mac_chain

    @property
    def encryption_counter(self) -> int:
        """The counter value the next command will use (Amd D §6.2.6)."""
        return self._counter

    @property
    def initiated(self) -> bool:
        """True once EXTERNAL AUTHENTICATE has been built (host) or verified (card)."""
        return self._initiated

    @property
    def aborted(self) -> bool:
        """True after a MAC or format failure; the channel then refuses all work."""
        return self._aborted

    # -- internals ----------------------------------------------------------------------------

    def _has(self, flag: SecurityLevel) -> bool:
        return bool(self._level & flag)

    def _require(self, *, initiated: bool) -> None:
        if self._aborted:
            raise ScpError("secure channel aborted")
        if self._initiated != initiated:
            if initiated:
                raise ScpError("secure channel not initiated (no EXTERNAL AUTHENTICATE yet)")
            raise ScpError("EXTERNAL AUTHENTICATE already done on this channel")

    def _fail(self, error: ScpError) -> ScpError:
        self._aborted = True
        return error

    def _check_received_class(self, cla: int) -> None:
        try:
            _check_channel_class(cla)
        except ScpFormatError as error:
            raise self._fail(error) from None

    def _command_mac(self, header: bytes, lc: bytes, data: bytes) -> bytes:
        # Amd D §6.2.4: CMAC_S-MAC(chain || CLA' INS P1 P2 Lc' || data); Lc' counts the C-MAC.
        message = self._mac_chain + bytes((_mac_cla(header[0]),)) + header[1:4] + lc + data
        return aes_cmac(self._keys.s_mac, message)

    def _response_mac(self, data: bytes, sw: int) -> bytes:
        # Amd D §6.2.5: CMAC_S-RMAC(chain || response data || SW1 SW2), first 8 bytes.
        message = self._mac_chain + data + sw.to_bytes(2, "big")
        return aes_cmac(self._keys.s_rmac, message)[:MAC_LENGTH]

    def _command_icv(self, counter: int) -> bytes:
        # Amd D §6.2.6: ICV = AES_S-ENC(counter left-padded with zeros to 16 bytes).
        return aes_encrypt_block(self._keys.s_enc, counter.to_bytes(AES_BLOCK, "big"))

    def _response_icv(self, counter: int) -> bytes:
        # Amd D §6.2.7: the command counter block with its most significant byte set to '80'.
        block = _RESPONSE_ICV_MARKER + counter.to_bytes(_COUNTER_BYTES_RESPONSE, "big")
        return aes_encrypt_block(self._keys.s_enc, block)

    def _next_counter(self) -> int:
        counter = self._counter
        self._counter += 1
        self._command_counter = counter
        return counter

    def _answered_counter(self) -> int:
        if self._command_counter is None:
            raise ScpError("no protected command to answer yet")
        return self._command_counter

    # -- explicit initiation (both sides) -----------------------------------------------------

    def external_authenticate_command(self, host_cryptogram: bytes) -> CommandApdu:
        """Host: ``84 82 level 00 10 cryptogram || C-MAC`` (Amd D §7.1.2, MAC chain 00 x 16).

        Sets the MAC chaining value; the encryption counter is not advanced.
        """
        self._require(initiated=False)
        if len(host_cryptogram) != CRYPTOGRAM_LENGTH:
            raise ValueError("host cryptogram must be 8 bytes (S8 mode)")
        cla = CLA_PROPRIETARY | CLA_SECURE_MESSAGING
        ins, p1, p2 = GpIns.EXTERNAL_AUTHENTICATE, self.level, 0x00
        lc = bytes((CRYPTOGRAM_LENGTH + MAC_LENGTH,))
        full = self._command_mac(bytes((cla, ins, p1, p2)), lc, bytes(host_cryptogram))
        self._mac_chain = full
        self._initiated = True
        return CommandApdu(cla, ins, p1, p2, data=bytes(host_cryptogram) + full[:MAC_LENGTH])

    def verify_external_authenticate(self, cmd: CommandApdu) -> bytes:
        """Card: check the EXTERNAL AUTHENTICATE C-MAC and return the host cryptogram.

        The caller compares the cryptogram (constant time) and answers 6300 if it differs.
        Raises :class:`MacError` if the C-MAC is wrong, :class:`ScpFormatError` if the command
        is malformed or its P1 is not this channel's level.
        """
        self._require(initiated=False)
        self._check_received_class(cmd.cla)
        if cmd.ins != GpIns.EXTERNAL_AUTHENTICATE or cmd.p1 != self.level or cmd.p2 != 0:
            raise self._fail(ScpFormatError("not an EXTERNAL AUTHENTICATE for this level"))
        if len(cmd.data) != CRYPTOGRAM_LENGTH + MAC_LENGTH:
            raise self._fail(ScpFormatError("EXTERNAL AUTHENTICATE data must be 16 bytes"))
        if not cmd.cla & CLA_SECURE_MESSAGING:
            raise self._fail(MacError("EXTERNAL AUTHENTICATE without secure messaging"))
        cryptogram, mac = cmd.data[:CRYPTOGRAM_LENGTH], cmd.data[CRYPTOGRAM_LENGTH:]
        full = self._command_mac(cmd.header(), cmd.lc_field(), cryptogram)
        if not hmac.compare_digest(full[:MAC_LENGTH], mac):
            raise self._fail(MacError("wrong C-MAC on EXTERNAL AUTHENTICATE"))
        self._mac_chain = full
        self._initiated = True
        return bytes(cryptogram)

    # -- host side ----------------------------------------------------------------------------

    def wrap_command(self, cmd: CommandApdu, *, encrypt_empty: bool = False) -> CommandApdu:
        """Host: protect a plain command (Amd D §6.2.4, §6.2.6); returns the APDU to send.

        Sets the secure-messaging bit of CLA, encrypts the data (C-DECRYPTION levels), appends
        the C-MAC and keeps Le. The counter advances for every command. The result is extended
        when ``cmd`` is or when the protected data exceed 255 bytes, and the C-MAC covers Lc in
        that same encoding.
        """
        self._require(initiated=True)
        _check_channel_class(cmd.cla)
        if cmd.cla & CLA_SECURE_MESSAGING:
            raise ScpFormatError("command already carries the secure-messaging indicator")
        data = cmd.data
        encrypt = self._has(SecurityLevel.C_DECRYPTION) and bool(data or encrypt_empty)
        if encrypt:
            data = pad_iso9797_m2(data)
        total = len(data) + MAC_LENGTH
        if self._has(SecurityLevel.C_MAC) and total > EXTENDED_MAX_DATA:
            raise ScpFormatError("protected command data exceed 65535 bytes")
        # Checks done: from here on the command counts (Amd D §6.2.6, every command).
        counter = self._next_counter()
        if not self._has(SecurityLevel.C_MAC):
            return cmd  # level 00: no secure messaging (Amd D Table 7-6)
        if encrypt:
            data = aes_cbc_encrypt(self._keys.s_enc, self._command_icv(counter), data)
        extended = cmd.extended or total > SHORT_MAX_DATA
        lc = b"\x00" + total.to_bytes(2, "big") if extended else bytes((total,))
        full = self._command_mac(cmd.header(), lc, data)
        self._mac_chain = full
        return CommandApdu(
            cmd.cla | CLA_SECURE_MESSAGING,
            cmd.ins,
            cmd.p1,
            cmd.p2,
            data=data + full[:MAC_LENGTH],
            le=cmd.le,
            extended=extended,
        )

    def unwrap_response(self, data: bytes, sw: int) -> bytes:
        """Host: verify the R-MAC and decrypt the response data field (Amd D §6.2.5, §6.2.7).

        ``data`` is the full response data field as received (after any 61xx reassembly).
        Raises :class:`MacError` if an expected R-MAC is wrong or missing.
        """
        self._require(initiated=True)
        if not self._has(SecurityLevel.R_MAC):
            return bytes(data)
        if not is_success(sw):
            # Amd D §6.2.5: an error status word comes alone, unprotected.
            if data:
                raise self._fail(ScpFormatError("response data with an error status word"))
            return b""
        counter = self._answered_counter()
        if len(data) < MAC_LENGTH:
            raise self._fail(MacError("response without R-MAC"))
        body, mac = bytes(data[:-MAC_LENGTH]), bytes(data[-MAC_LENGTH:])
        if not hmac.compare_digest(self._response_mac(body, sw), mac):
            raise self._fail(MacError("wrong R-MAC"))
        if not self._has(SecurityLevel.R_ENCRYPTION) or not body:
            return body
        if len(body) % AES_BLOCK:
            raise self._fail(ScpFormatError("encrypted response is not a multiple of 16 bytes"))
        plain = aes_cbc_decrypt(self._keys.s_enc, self._response_icv(counter), body)
        try:
            return unpad_iso9797_m2(plain, lenient=True)
        except PaddingError:
            raise self._fail(ScpFormatError("bad padding in decrypted response")) from None

    # -- card side ----------------------------------------------------------------------------

    def unwrap_command(self, cmd: CommandApdu) -> CommandApdu:
        """Card: verify the C-MAC and decrypt the data of a received command (§6.2.4, §6.2.6).

        The C-MAC is checked first, over Lc exactly as it arrived (``cmd.lc_field()``). Returns
        the plain command with the secure-messaging bit cleared. Raises :class:`MacError` for a
        wrong C-MAC or a command without secure messaging, :class:`ScpFormatError` for a command
        too short to hold a C-MAC or with a bad encrypted data field.
        """
        self._require(initiated=True)
        self._check_received_class(cmd.cla)
        counter = self._next_counter()
        secured = bool(cmd.cla & CLA_SECURE_MESSAGING)
        if not self._has(SecurityLevel.C_MAC):
            if secured:
                raise self._fail(ScpFormatError("secure messaging not expected at level 00"))
            return cmd
        if not secured:
            raise self._fail(MacError("command without secure messaging in a C-MAC session"))
        if len(cmd.data) < MAC_LENGTH:
            raise self._fail(ScpFormatError("command too short to carry a C-MAC"))
        body, mac = cmd.data[:-MAC_LENGTH], cmd.data[-MAC_LENGTH:]
        full = self._command_mac(cmd.header(), cmd.lc_field(), body)
        if not hmac.compare_digest(full[:MAC_LENGTH], mac):
            raise self._fail(MacError("wrong C-MAC"))
        self._mac_chain = full
        if self._has(SecurityLevel.C_DECRYPTION) and body:
            if len(body) % AES_BLOCK:
                raise self._fail(ScpFormatError("encrypted data are not a multiple of 16 bytes"))
            padded = aes_cbc_decrypt(self._keys.s_enc, self._command_icv(counter), body)
            try:
                body = unpad_iso9797_m2(padded, lenient=True)
            except PaddingError:
                raise self._fail(ScpFormatError("bad padding in decrypted command")) from None
        extended = len(body) > SHORT_MAX_DATA or (cmd.le is not None and cmd.le > SHORT_MAX_LE)
        return CommandApdu(
            cmd.cla & ~CLA_SECURE_MESSAGING,
            cmd.ins,
            cmd.p1,
            cmd.p2,
            data=bytes(body),
            le=cmd.le,
            extended=extended,
        )

    def wrap_response(self, data: bytes, sw: int) -> bytes:
        """Card: protect the response data field for ``sw`` (Amd D §6.2.5, §6.2.7).

        Error status words get an empty data field and no R-MAC. On 9000/62xx/63xx the data are
        encrypted when the level has R-ENCRYPTION and there are data (ICV from the counter of
        the command being answered), then the R-MAC is appended when the level has R-MAC, data
        or not. Returns the data field to send before SW1 SW2.
        """
        self._require(initiated=True)
        if not is_success(sw):
            return b""
        out = bytes(data)
        if self._has(SecurityLevel.R_ENCRYPTION) and out:
            icv = self._response_icv(self._answered_counter())
            out = aes_cbc_encrypt(self._keys.s_enc, icv, pad_iso9797_m2(out))
        if self._has(SecurityLevel.R_MAC):
            self._answered_counter()
            out += self._response_mac(out, sw)
        return out
