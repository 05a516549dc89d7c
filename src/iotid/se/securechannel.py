"""Card side of the Secure Channel Protocol '03' session of a security domain.

Scope: INITIALIZE UPDATE and EXTERNAL AUTHENTICATE (GPC 2.3.1 Amd D section 7.1), the Current
Security Level, unwrapping incoming commands and wrapping responses for the applications that use
the security domain's secure channel, and the session rules of Amd D section 5.6: a security
error aborts the session, an aborted session refuses every later command until a new INITIALIZE
UPDATE or a new selection, a plain command inside a session is a security error.
The cryptography itself is the shared implementation in ``iotid.scp03``.

Not in scope: the session is transient (RAM): it is not in NVM and a reset ends it. The key sets
and the sequence counter are persistent (``iotid.se.keysets``).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass

from iotid.apdu import ApduError, CommandApdu
from iotid.scp03 import (
    ScpError,
    SecureChannel,
    SessionKeys,
    StaticKeys,
    card_cryptogram,
    derive_session_keys,
    host_cryptogram,
    pseudo_random_challenge,
)
from iotid.se.keysets import KeySets
from iotid.spec.gp import (
    DEFAULT_I,
    I_PSEUDO_RANDOM_CHALLENGE,
    SCP03,
    VALID_SECURITY_LEVELS,
    GpIns,
    SecurityLevel,
)
from iotid.spec.iso7816 import CLA_PROPRIETARY, CLA_SECURE_MESSAGING, SW

log = logging.getLogger(__name__)

HOST_CHALLENGE_LEN = 8  # S8 mode
KDD_LEN = 10


@dataclass
class _Pending:
    """State between INITIALIZE UPDATE and EXTERNAL AUTHENTICATE."""

    kvn: int
    static: StaticKeys
    session: SessionKeys
    host_challenge: bytes
    card_challenge: bytes

    def __repr__(self) -> str:
        return f"_Pending(kvn=0x{self.kvn:02x})"


class SecureChannelService:
    """One security domain's secure channel, as the GP API ``SecureChannel`` interface."""

    def __init__(
        self, keysets: KeySets, sd_aid: bytes, kdd: bytes, i_param: int = DEFAULT_I
    ) -> None:
        self._keysets = keysets
        self._aid = sd_aid
        self._kdd = kdd[:KDD_LEN].rjust(KDD_LEN, b"\x00")
        self._i = i_param
        self._pending: _Pending | None = None
        self._channel: SecureChannel | None = None
        self._kvn: int | None = None
        self._aborted = False

    def __repr__(self) -> str:
        return f"SecureChannelService(level=0x{self.security_level:02x}, aborted={self._aborted})"

    # -- GP API -------------------------------------------------------------------------------
    @property
    def security_level(self) -> int:
        """Current Security Level: AUTHENTICATED | the EXTERNAL AUTHENTICATE level, or 0."""
        if self._channel is None:
            return 0
        return int(SecurityLevel.AUTHENTICATED) | self._channel.level

    @property
    def authenticated(self) -> bool:
        return self._channel is not None

    @property
    def session_kvn(self) -> int | None:
        return self._kvn if self._channel is not None else None

    def session_dek(self) -> bytes:
        """Key-DEK of the key set the session was opened with (card-internal)."""
        if self._channel is None or self._kvn is None:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
        keys = self._keysets.get(self._kvn)
        if keys is None:  # deleted during the session
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
        return keys.dek

    def reset(self) -> None:
        """Terminate the session (selection, reset, power off): no longer aborted either."""
        self._pending = None
        self._channel = None
        self._kvn = None
        self._aborted = False

    def abort(self) -> None:
        """Security error: abort the session; commands are refused until a new initiation."""
        self._pending = None
        self._channel = None
        self._kvn = None
        self._aborted = True

    @staticmethod
    def is_security_command(cmd: CommandApdu) -> bool:
        return bool(cmd.cla & CLA_PROPRIETARY) and cmd.ins in (
            GpIns.INITIALIZE_UPDATE,
            GpIns.EXTERNAL_AUTHENTICATE,
        )

    def process_security(self, cmd: CommandApdu) -> bytes:
        if cmd.ins == GpIns.INITIALIZE_UPDATE:
            return self._initialize_update(cmd)
        return self._external_authenticate(cmd)

    # -- INITIALIZE UPDATE (Amd D section 7.1.1) ----------------------------------------------
    def _initialize_update(self, cmd: CommandApdu) -> bytes:
        self.reset()  # a new initiation terminates any current session (Amd D section 5.6)
        if cmd.cla & CLA_SECURE_MESSAGING:
            raise ApduError(SW.CLA_NOT_SUPPORTED)
        if cmd.p2 != 0x00:
            raise ApduError(SW.INCORRECT_P1P2)
        if len(cmd.data) != HOST_CHALLENGE_LEN:
            raise ApduError(SW.WRONG_LENGTH)
        kvn = self._keysets.resolve(cmd.p1)
        static = self._keysets.get(kvn)
        if static is None:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        if self._i & I_PSEUDO_RANDOM_CHALLENGE:
            seq = self._keysets.next_sequence(kvn)
            card_challenge = pseudo_random_challenge(static.enc, seq, self._aid)
            tail = seq.to_bytes(3, "big")
        else:
            card_challenge = secrets.token_bytes(8)
            tail = b""
        session = derive_session_keys(static, cmd.data, card_challenge)
        cryptogram = card_cryptogram(session.s_mac, cmd.data, card_challenge)
        self._pending = _Pending(kvn, static, session, cmd.data, card_challenge)
        return self._kdd + bytes([kvn, SCP03, self._i]) + card_challenge + cryptogram + tail

    # -- EXTERNAL AUTHENTICATE (Amd D section 7.1.2) ------------------------------------------
    def _external_authenticate(self, cmd: CommandApdu) -> bytes:
        pending, self._pending = self._pending, None
        if pending is None:
            # No INITIALIZE UPDATE before it (Amd D section 7.1.2.1).
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        if not cmd.cla & CLA_SECURE_MESSAGING:
            self.abort()
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
        if cmd.p1 not in VALID_SECURITY_LEVELS or cmd.p2 != 0x00:
            raise ApduError(SW.INCORRECT_P1P2)
        if len(cmd.data) != 16:
            raise ApduError(SW.WRONG_LENGTH)
        if (cmd.p1 & SecurityLevel.R_MAC and not self._i & 0x20) or (
            cmd.p1 & SecurityLevel.R_ENCRYPTION and not self._i & 0x40
        ):
            raise ApduError(SW.INCORRECT_P1P2)
        channel = SecureChannel(pending.session, cmd.p1)
        try:
            received = channel.verify_external_authenticate(cmd)
        except ScpError:
            self.abort()
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED) from None
        expected = host_cryptogram(
            pending.session.s_mac, pending.host_challenge, pending.card_challenge
        )
        if not hmac.compare_digest(received, expected):
            raise ApduError(SW.AUTHENTICATION_FAILED)
        self._channel = channel
        self._kvn = pending.kvn
        self._aborted = False
        log.info("secure channel open: kvn 0x%02x level 0x%02x", pending.kvn, cmd.p1)
        return b""

    # -- secure messaging (Amd D sections 5.6, 6.2.4-6.2.7) -----------------------------------
    def unwrap(self, cmd: CommandApdu) -> CommandApdu:
        """The plain command, or ApduError 6982 (and the session aborted) on a security error."""
        if self._aborted:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
        channel = self._channel
        if channel is None:
            if cmd.cla & CLA_SECURE_MESSAGING:
                raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
            return cmd
        if channel.level == 0 and not cmd.cla & CLA_SECURE_MESSAGING:
            return cmd
        try:
            return channel.unwrap_command(cmd)
        except ScpError:
            self.abort()
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED) from None

    def wrap(self, data: bytes, sw: int) -> bytes:
        if self._channel is None:
            return data
        return self._channel.wrap_response(data, sw)
