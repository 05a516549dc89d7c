"""Wire contract of the provisioning applet (DESIGN.md section 6.1), shared by card and host.

Scope: the AID, instructions, P1/P2, the TLV tags of the responses, the personalisation DGIs
with their value rules, and the exact bytes the operator signs to authorise an admin re-key.

Commands (CLA 80, P1 = P2 = 00, no command data except REKEY):

- PROVISION: derive (EC) or generate (RSA) the identity key; response: its
  SubjectPublicKeyInfo DER. Refused with 6985 once provisioned.
- GET PUBLIC KEY: response: ``80`` SPKI DER, ``81`` epoch (u32), ``82`` algorithm (one
  :class:`~iotid.spec.algorithms.KeyAlg` byte). 6985 when no identity key is active.
- GET STATE: response: ``83`` provisioned (00/01), ``81`` epoch, ``82`` configured identity
  algorithm, ``84`` re-key generation (u32), ``85`` re-key counter (u32), ``86`` a re-key
  challenge is outstanding (00/01), ``87`` the card UID.
- GET REKEY CHALLENGE: response: a fresh 16-byte card nonce (replaces any earlier one; kept in
  NVM with the current re-key counter). 6985 when not provisioned.
- REKEY: data: a DER ECDSA signature by the operator's re-key authority key over
  :func:`rekey_tbs` (UID, re-key counter, outstanding nonce), with SHA-256 for a P-256 authority
  key and SHA-384 for P-384. 6985 without an outstanding challenge, 6A80 when the data is not a
  DER ECDSA signature, 6982 when it does not verify (nothing changes). On success the identity
  key is destroyed, generation and counter advance by one, the nonce is consumed.

Every operational command answers 6985 before personalisation is complete.
Not covered: the card's behaviour (``iotid.se.applets.provisioning``), the host session
(``iotid.host.provisioning``), the derivation (``iotid.crypto.identity_kdf``).
"""

from __future__ import annotations

from enum import IntEnum, unique

from iotid.spec.algorithms import KeyAlg
from iotid.spec.identity import PROVISIONING_AID

__all__ = [
    "AID",
    "COUNTER_LEN",
    "IDENTITY_ALGS",
    "MASTER_KEY_MAX",
    "MASTER_KEY_MIN",
    "NONCE_LEN",
    "P1P2_NONE",
    "REKEY_AUTHORITY_HASHES",
    "REKEY_SIGNATURE_MAX",
    "REKEY_TBS_LABEL",
    "Dgi",
    "Ins",
    "Tag",
    "rekey_tbs",
]

AID = PROVISIONING_AID


@unique
class Ins(IntEnum):
    """Instructions of the provisioning applet (CLA 80; proprietary, even, outside 6x/9x)."""

    PROVISION = 0x30
    GET_PUBLIC_KEY = 0x32
    GET_STATE = 0x34
    GET_REKEY_CHALLENGE = 0x36
    REKEY = 0x38


#: The only P1 and P2 value of every command; anything else answers 6A86.
P1P2_NONE = 0x00


@unique
class Tag(IntEnum):
    """Primitive context-specific tags of GET PUBLIC KEY and GET STATE (BER-TLV)."""

    PUBLIC_KEY = 0x80  # SubjectPublicKeyInfo, DER
    EPOCH = 0x81  # u32 big endian: 0 before the first provisioning
    ALGORITHM = 0x82  # one KeyAlg byte
    PROVISIONED = 0x83  # 00 or 01
    GENERATION = 0x84  # u32 big endian: admin re-keys done (the KDF generation)
    REKEY_COUNTER = 0x85  # u32 big endian: the anti-replay counter signed in the re-key TBS
    CHALLENGE_PENDING = 0x86  # 00 or 01
    UID = 0x87  # the card UID (10 bytes), as signed in the re-key TBS


@unique
class Dgi(IntEnum):
    """Personalisation DGIs (STORE DATA through the ISD, GPC 2.3.1 section 11.11). All three are
    mandatory; secret DGIs (8000-8FFF) arrive encrypted under the session's Key-DEK."""

    #: The identity algorithm: one KeyAlg byte from :data:`IDENTITY_ALGS`.
    IDENTITY_ALG = 0x0101
    #: The operator's re-key authority public key: SubjectPublicKeyInfo DER, EC P-256 or P-384.
    REKEY_AUTHORITY = 0x0102
    #: The batch master key: 16 to 64 bytes.
    MASTER_KEY = 0x8101


MASTER_KEY_MIN = 16
MASTER_KEY_MAX = 64
IDENTITY_ALGS = frozenset({KeyAlg.EC_P256, KeyAlg.EC_P384, KeyAlg.RSA_2048, KeyAlg.RSA_3072})
#: Curve of the re-key authority key (cryptography's curve name) -> the hash of its signatures.
REKEY_AUTHORITY_HASHES: dict[str, str] = {"secp256r1": "sha256", "secp384r1": "sha384"}
#: Longest DER ECDSA-P384 signature: SEQUENCE(2 + 2 x INTEGER(2 + 49)) = 104 bytes.
REKEY_SIGNATURE_MAX = 104

REKEY_TBS_LABEL = b"iotid-rekey-v1"
COUNTER_LEN = 4
NONCE_LEN = 16
_UID_MAX = 255


def rekey_tbs(uid: bytes, counter: int, nonce: bytes) -> bytes:
    """The message the operator signs to authorise one admin re-key of one card:

    ``b"iotid-rekey-v1" || UID || counter (u32 big endian) || card nonce (16 bytes)``.

    The UID binds it to one card, the nonce (fresh, single use) to one challenge, the counter to
    the card's re-key history. The UID is the card's fixed-length UID (10 bytes on our cards).
    """
    if not 0 < len(uid) <= _UID_MAX:
        raise ValueError("the UID must be 1 to 255 bytes")
    if not 0 <= counter < 1 << (8 * COUNTER_LEN):
        raise ValueError("the re-key counter is a 32-bit unsigned integer")
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"the card nonce is {NONCE_LEN} bytes")
    return REKEY_TBS_LABEL + uid + counter.to_bytes(COUNTER_LEN, "big") + nonce
