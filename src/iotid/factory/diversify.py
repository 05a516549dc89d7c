"""Per-card ISD key diversification: the one implementation the factory and its tools share.

Scope: :func:`diversify_isd_keys` turns a batch's ISD diversification master (a 32-byte secret
held in the factory key store, ``batch/<name>/isd-master``) and a card UID into that card's own
SCP03 static key set (Key-ENC, Key-MAC, Key-DEK, AES-128), which personalisation writes with
PUT KEY in place of the GP test keys. The derivation is HKDF-SHA256 (RFC 5869, ``cryptography``)
with no salt, info = ``b"iotid-isd-v1" || UID`` and 48 bytes of output, cut in three 16-byte keys.
Knowing one card's keys tells nothing about another card's (HKDF is a PRF over the info).

Not in scope: where the master lives (``iotid.factory.keystore``), writing the keys to a card
(``iotid.host.personalisation``).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from iotid.scp03 import StaticKeys

__all__ = ["ISD_KDF_INFO", "MIN_ISD_MASTER_LEN", "diversify_isd_keys"]

#: HKDF info prefix (the UID follows); versioned so that a later scheme cannot collide.
ISD_KDF_INFO = b"iotid-isd-v1"
#: A diversification master shorter than 128 bits is refused.
MIN_ISD_MASTER_LEN = 16
_KEY_LEN = 16  # AES-128 (GPC 2.3.1 Amd D §6.1: SCP03 keys of 128 bits at least)


def diversify_isd_keys(isd_master: bytes, uid: bytes) -> StaticKeys:
    """The card's ISD key set: HKDF-SHA256(master, info = "iotid-isd-v1" || UID) -> 48 bytes."""
    if len(isd_master) < MIN_ISD_MASTER_LEN:
        raise ValueError("the ISD diversification master must be at least 16 bytes")
    if not uid:
        raise ValueError("the UID must not be empty")
    okm = HKDF(hashes.SHA256(), 3 * _KEY_LEN, salt=None, info=ISD_KDF_INFO + uid).derive(isd_master)
    return StaticKeys(okm[:_KEY_LEN], okm[_KEY_LEN : 2 * _KEY_LEN], okm[2 * _KEY_LEN :])
