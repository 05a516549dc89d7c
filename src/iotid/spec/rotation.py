"""Key rotation applet: wire contract (DESIGN.md section 6.5).

Scope: the AID, instructions, P1/P2 use, response tags, personalisation DGIs, and the exact byte
strings that are signed (to-be-signed builders), so that the card, the host and the fleet
cannot drift. Constants and pure byte builders only.

Commands (CLA 80; each answers 6985 before personalisation or while no identity key is active):

========== ==== ========= ========================== ===========================================
command    INS  P1 P2     data                       answer
========== ==== ========= ========================== ===========================================
ROTATE     0x40 00 00     fleet nonce (16..64 bytes) 80 new epoch, 81 new SPKI, 82 proof
COMMIT     0x42 00 00     acknowledgement signature  80 new epoch
ABORT      0x44 00 00     none                       none
GET STATE  0x46 00 00     none                       80 epoch, 83 pending, 84 retired, 85 policy,
                                                     86 algorithm
DECRYPT    0x48 epoch     blob (``iotid.crypto.      plaintext; P1P2 = the current epoch:
                (u16)     ecies``, no associated     the active key (fleet commands); a
                          data)                      retained retired epoch: that key
PURGE      0x4A epoch     authority signature        none
                (u16)
========== ==== ========= ========================== ===========================================

Status words: 6700 nonce length / empty data where data is needed, 6A86 P1/P2, 6985 no pending
rotation (COMMIT, ABORT) or not personalised / no active key, 6982 acknowledgement or purge
authorisation absent or bad, 6A88 an epoch that is neither the current one (DECRYPT only) nor a
retained retired one (never retired, or destroyed), 6A80 DECRYPT blob malformed, for another key
or not authentic (one word for every decryption failure, current or retired key alike).

Signatures. The proof of continuity is made by the current identity key, the acknowledgement and
the purge authorisation by the fleet's rotation-authority key (DGI 0501). All use one rule:
ECDSA with the curve's hash (P-256: SHA-256, P-384: SHA-384; DER, RFC 3279 §2.2.3) or RSA-PSS
with SHA-256, MGF1-SHA-256 and a 32-byte salt (RFC 8017 §8.1). See :data:`EC_HASH_BY_CURVE`,
:data:`RSA_HASH`.

Not covered: the card's behaviour (``iotid.se.applets.rotation``), the session
(``iotid.host.rotation``), the encryption format (``iotid.crypto.ecies``).
"""

from __future__ import annotations

from enum import IntEnum, unique

from cryptography.hazmat.primitives import hashes

from iotid.spec.identity import ROTATION_AID

__all__ = [
    "AID",
    "AUTHORITY_RSA_MAX_BITS",
    "AUTHORITY_RSA_MIN_BITS",
    "EC_HASH_BY_CURVE",
    "EPOCH_LEN",
    "LABEL_ACK",
    "LABEL_PURGE",
    "LABEL_ROTATE",
    "NONCE_MAX",
    "NONCE_MIN",
    "RETENTION_LEN",
    "RSA_HASH",
    "UID_LEN",
    "Dgi",
    "Ins",
    "Tag",
    "ack_tbs",
    "purge_tbs",
    "rotation_tbs",
    "spki_digest",
]

AID = ROTATION_AID


@unique
class Ins(IntEnum):
    """Instructions of the rotation applet (CLA 80, GP proprietary class)."""

    ROTATE = 0x40
    COMMIT = 0x42
    ABORT = 0x44
    GET_STATE = 0x46
    DECRYPT = 0x48
    PURGE = 0x4A


@unique
class Tag(IntEnum):
    """Primitive, context-specific BER-TLV tags in responses (ISO 7816-4 §5.2.2)."""

    EPOCH = 0x80  # u32 big endian
    PUBLIC_KEY = 0x81  # SubjectPublicKeyInfo DER
    SIGNATURE = 0x82  # proof of continuity
    PENDING = 0x83  # 00 none, 01 a rotation awaits COMMIT
    RETIRED_EPOCHS = 0x84  # u32 big endian each, ascending; empty if none
    RETENTION = 0x85  # u16 big endian
    ALGORITHM = 0x86  # iotid.spec.algorithms.KeyAlg of the active key


@unique
class Dgi(IntEnum):
    """Personalisation data groupings (STORE DATA through the ISD); both are mandatory."""

    #: The fleet's rotation-authority public key, SubjectPublicKeyInfo DER: EC P-256/P-384 or RSA.
    AUTHORITY_KEY = 0x0501
    #: Retention policy: u16 big endian, the number of retired keys kept (0: none is kept).
    RETENTION = 0x0502


#: Fleet nonce bounds for ROTATE (bytes).
NONCE_MIN = 16
NONCE_MAX = 64
EPOCH_LEN = 4
RETENTION_LEN = 2
#: The card UID length (the CPLC-derived UID of ``iotid.se.card``); fixed, so the TBS is
#: unambiguous with the variable-length nonce last.
UID_LEN = 10
#: RSA authority keys: modulus bounds (bits).
AUTHORITY_RSA_MIN_BITS = 2048
AUTHORITY_RSA_MAX_BITS = 4096

#: Signature rule shared by the proof, the acknowledgement and the purge authorisation.
EC_HASH_BY_CURVE = {"secp256r1": "sha256", "secp384r1": "sha384"}
RSA_HASH = "sha256"  # RSA-PSS, MGF1 with the same hash, salt length = digest length

LABEL_ROTATE = b"iotid-rotate-v1"
LABEL_ACK = b"iotid-rotate-ack-v1"
LABEL_PURGE = b"iotid-purge-v1"


def spki_digest(spki_der: bytes) -> bytes:
    """SHA-256 of a SubjectPublicKeyInfo DER: how the TBS strings name the new key."""
    h = hashes.Hash(hashes.SHA256())
    h.update(spki_der)
    return h.finalize()


def _check(uid: bytes, epoch: int) -> None:
    if len(uid) != UID_LEN:
        raise ValueError(f"UID must be {UID_LEN} bytes")
    if not 0 < epoch < 1 << (8 * EPOCH_LEN):
        raise ValueError("epoch out of range")


def _body(uid: bytes, new_epoch: int, new_spki_der: bytes, nonce: bytes) -> bytes:
    _check(uid, new_epoch)
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise ValueError(f"nonce must be {NONCE_MIN}..{NONCE_MAX} bytes")
    return uid + new_epoch.to_bytes(EPOCH_LEN, "big") + spki_digest(new_spki_der) + nonce


def rotation_tbs(uid: bytes, new_epoch: int, new_spki_der: bytes, nonce: bytes) -> bytes:
    """Proof of continuity, signed by the OLD key:
    ``"iotid-rotate-v1" || UID (10) || new epoch (u32) || SHA-256(new SPKI) || nonce``."""
    return LABEL_ROTATE + _body(uid, new_epoch, new_spki_der, nonce)


def ack_tbs(uid: bytes, new_epoch: int, new_spki_der: bytes, nonce: bytes) -> bytes:
    """Fleet acknowledgement, signed by the rotation authority:
    ``"iotid-rotate-ack-v1" || UID (10) || new epoch (u32) || SHA-256(new SPKI) || nonce``."""
    return LABEL_ACK + _body(uid, new_epoch, new_spki_der, nonce)


def purge_tbs(uid: bytes, epoch: int) -> bytes:
    """Purge authorisation, signed by the rotation authority:
    ``"iotid-purge-v1" || UID (10) || retired epoch (u32)``."""
    _check(uid, epoch)
    return LABEL_PURGE + uid + epoch.to_bytes(EPOCH_LEN, "big")
