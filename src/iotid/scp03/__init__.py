"""GlobalPlatform Secure Channel Protocol '03' (GPC 2.3.1 Amendment D), one implementation.

Scope: static and session keys, the §4.1.5 derivations, and the secure-messaging state machine
used by both the card emulator (``iotid.se``) and the host (``iotid.host``). S8 mode,
AES-128/192/256, security levels 00/01/03/11/13/33. Not covered: the INITIALIZE UPDATE /
EXTERNAL AUTHENTICATE command handling and key-set storage (the ISD and the host session do
that), S16 mode, BEGIN/END R-MAC SESSION, logical channels 4-19.
"""

from __future__ import annotations

from .channel import MacError, ScpError, ScpFormatError, SecureChannel
from .kdf import (
    DerivationConstant,
    card_cryptogram,
    decrypt_sensitive,
    derive,
    derive_session_keys,
    encrypt_sensitive,
    host_cryptogram,
    pseudo_random_challenge,
)
from .keys import SessionKeys, StaticKeys

__all__ = [
    "DerivationConstant",
    "MacError",
    "ScpError",
    "ScpFormatError",
    "SecureChannel",
    "SessionKeys",
    "StaticKeys",
    "card_cryptogram",
    "decrypt_sensitive",
    "derive",
    "derive_session_keys",
    "encrypt_sensitive",
    "host_cryptogram",
    "pseudo_random_challenge",
]
