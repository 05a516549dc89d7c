"""Opening an SCP03 session from the host (GPC 2.3.1 Amd D sections 5.2 and 7.1).

Scope: INITIALIZE UPDATE, checking the card cryptogram, EXTERNAL AUTHENTICATE at the chosen
security level, and installing the secure messaging processor on the protocol object.
Not in scope: the cryptography (``iotid.scp03``), what is sent inside the session.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from iotid.apdu import ApduError, CommandApdu
from iotid.host.errors import AuthenticationError, BadResponseError
from iotid.host.protocol import SmartCardProtocol
from iotid.scp03 import (
    SecureChannel,
    StaticKeys,
    card_cryptogram,
    derive_session_keys,
    host_cryptogram,
)
from iotid.spec.gp import I_PSEUDO_RANDOM_CHALLENGE, I_S16, SCP03, VALID_SECURITY_LEVELS, GpIns
from iotid.spec.iso7816 import SW


@dataclass(frozen=True)
class ScpSessionInfo:
    """Public facts returned by INITIALIZE UPDATE."""

    key_diversification_data: bytes
    kvn: int
    i_param: int
    sequence_counter: int | None
    level: int


def open_scp03(
    protocol: SmartCardProtocol,
    keys: StaticKeys,
    *,
    kvn: int = 0,
    level: int = 0x33,
    host_challenge: bytes | None = None,
) -> ScpSessionInfo:
    """Authenticate with ``keys`` and protect every later command at ``level``."""
    if level not in VALID_SECURITY_LEVELS:
        raise ValueError(f"security level 0x{level:02x} is not one of Amd D Table 7-6")
    protocol.end_secure_channel()
    challenge = host_challenge if host_challenge is not None else secrets.token_bytes(8)
    resp = protocol.send_plain(
        CommandApdu(0x80, GpIns.INITIALIZE_UPDATE, kvn, 0x00, challenge, 256)
    )
    if resp.sw != SW.OK:
        raise ApduError(resp.sw, resp.data)
    data = resp.data
    if len(data) not in (29, 32):
        raise BadResponseError("INITIALIZE UPDATE answer has the wrong length")
    kdd, (card_kvn, scp, i_param) = data[:10], data[10:13]
    if scp != SCP03 or i_param & I_S16:
        raise BadResponseError("the card does not offer SCP03 in S8 mode")
    card_challenge, cryptogram = data[13:21], data[21:29]
    seq = int.from_bytes(data[29:32], "big") if i_param & I_PSEUDO_RANDOM_CHALLENGE else None
    session = derive_session_keys(keys, challenge, card_challenge)
    if not hmac.compare_digest(
        card_cryptogram(session.s_mac, challenge, card_challenge), cryptogram
    ):
        raise AuthenticationError(
            f"card cryptogram mismatch: the card does not hold this key set (KVN 0x{card_kvn:02x})"
        )
    channel = SecureChannel(session, level)
    ea = channel.external_authenticate_command(
        host_cryptogram(session.s_mac, challenge, card_challenge)
    )
    resp = protocol.send_plain(ea)
    if resp.sw != SW.OK:
        raise ApduError(resp.sw, resp.data)
    protocol.start_secure_channel(channel)
    return ScpSessionInfo(kdd, card_kvn, i_param, seq, level)
