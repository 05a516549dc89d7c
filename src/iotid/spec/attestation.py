"""Wire contract of the attestation applet (DESIGN.md section 6.2), shared by card and host.

Scope: the AID, instructions, P1/P2, the personalisation DGIs with their value rules, the quote
format (claim keys, the profile URI, the UEID construction) and its limits.

Personalisation (STORE DATA through the ISD, GPC 2.3.1 section 11.11), in two sessions because
the factory must certify a key that only exists on the card:

1. DGI 0201 (one :class:`~iotid.spec.algorithms.KeyAlg` byte from :data:`ATTESTATION_ALGS`):
   the card generates the attestation key pair in its own slot (a repeated 0201 replaces the key
   and drops any certificate already stored). The session is left open (no last block), and
   GET ATTESTATION KEY returns the SubjectPublicKeyInfo DER for the batch attestation CA.
2. DGI 0202 (the attestation certificate, DER; its public key must be the on-card key, it must
   not be a CA, a key usage, if present, must allow digitalSignature) and DGI 0203 (the batch
   CA certificate, DER, basicConstraints cA = TRUE, a key usage, if present, must allow
   keyCertSign; it must have issued 0202, signature checked). Certificates are up to
   :data:`CERT_MAX_LEN` bytes (DGI length ``FF xx xx``). A bad value answers 6A80 and stores
   nothing. The last block needs all three DGIs present (else 6985); then the applet is
   personalised and accepts no more personalisation data (6985).

Commands (CLA 80, P1 = P2 = 00, else 6A86):

- GET ATTESTATION KEY: no data; response: SPKI DER of the attestation key. 6985 once
  personalised, 6A88 before DGI 0201.
- ATTEST: data: the verifier's nonce, :data:`NONCE_MIN`..:data:`NONCE_MAX` bytes (else 6700).
  6985 unless personalised and an identity key is active. Response: an EAT (RFC 9711) as a
  tagged COSE_Sign1 (RFC 9052): protected header ``{1: alg, 33: [attestation certificate DER,
  batch CA certificate DER]}`` (x5chain, RFC 9360, leaf first), alg ES256 / ES384 / PS256 after
  the attestation key (P-256 / P-384 / RSA), payload the claims map below. Responses are
  longer than 256 bytes: the card answers 61xx and the host collects with GET RESPONSE.

Claims (keys of the payload map, :class:`Claim`): ``cnf`` (8, RFC 8747 §3.1) ``{1: COSE_Key}``
of the identity public key; ``eat_nonce`` (10) the nonce; ``ueid`` (256) :func:`ueid_for_uid`;
``eat_profile`` (265) :data:`PROFILE`; private claims (keys below -65536, RFC 8392 §9.1 private
use) for the raw UID (bstr), the provisioned flag (bool), the identity key epoch (uint), the
firmware security-counter floor (uint, from ``SHARED_FIRMWARE_FLOOR_RECORD``, 0 when absent) and
the identity algorithm (a KeyAlg code, uint).

Not covered: the card's behaviour (``iotid.se.applets.attestation``), the host session and the
quote decoder (``iotid.host.attestation``), COSE encoding (``iotid.crypto.cose``), verification
(the fleet).
"""

from __future__ import annotations

from enum import IntEnum, unique

from cryptography.hazmat.primitives import hashes

from iotid.spec.algorithms import KeyAlg
from iotid.spec.identity import ATTESTATION_AID

__all__ = [
    "AID",
    "ATTESTATION_ALGS",
    "CERT_MAX_LEN",
    "CNF_COSE_KEY",
    "NONCE_MAX",
    "NONCE_MIN",
    "P1P2_NONE",
    "PROFILE",
    "UEID_LABEL",
    "UEID_LEN",
    "UEID_TYPE_RAND",
    "Claim",
    "Dgi",
    "Ins",
    "ueid_for_uid",
]

AID = ATTESTATION_AID


@unique
class Ins(IntEnum):
    """Instructions of the attestation applet (CLA 80; proprietary, even, outside 6x/9x)."""

    ATTEST = 0x40
    GET_ATTESTATION_KEY = 0x42


#: The only P1 and P2 value of every command; anything else answers 6A86.
P1P2_NONE = 0x00


@unique
class Dgi(IntEnum):
    """Personalisation DGIs (none is secret: the private key is born on the card)."""

    #: One KeyAlg byte: generate the attestation key pair on the card.
    KEY_ALG = 0x0201
    #: The attestation certificate, DER, for the on-card key.
    ATTESTATION_CERT = 0x0202
    #: The batch attestation CA certificate, DER.
    BATCH_CA_CERT = 0x0203


ATTESTATION_ALGS = frozenset({KeyAlg.EC_P256, KeyAlg.EC_P384, KeyAlg.RSA_2048, KeyAlg.RSA_3072})
#: Longest certificate the applet stores (each of 0202 and 0203); longer answers 6A84.
CERT_MAX_LEN = 4096

#: RFC 9711 §4.1: eat_nonce is 8 to 64 bytes.
NONCE_MIN = 8
NONCE_MAX = 64


@unique
class Claim(IntEnum):
    """Keys of the quote's claims map (CWT/EAT claim keys; private ones below -65536)."""

    CNF = 8  # RFC 8747 §3.1: {1: COSE_Key}
    NONCE = 10  # RFC 9711 §4.1 eat_nonce
    UEID = 256  # RFC 9711 §4.2.1
    PROFILE = 265  # RFC 9711 §4.3.2 eat_profile
    # Private-use claims (RFC 8392 §9.1: integer keys below -65536).
    UID = -70001  # bstr: the card UID
    PROVISIONED = -70002  # bool: the provisioning applet's provisioned flag
    KEY_EPOCH = -70003  # uint: the identity key epoch (1 after the first provisioning)
    FIRMWARE_FLOOR = -70004  # uint: the firmware anti-rollback security-counter floor
    IDENTITY_ALG = -70005  # uint: KeyAlg code of the identity key
    #: COSE_Key of the pending identity key during a rotation (absent otherwise). The mTLS
    #: applet signs any digest with the active key, so a rotation proof alone cannot show that
    #: the pending key lives in this SE; a quote by the attestation key (which signs nothing
    #: else) over the pending key can. The fleet requires it before acknowledging a rotation.
    PENDING_IDENTITY_KEY = -70006


#: cnf member holding a COSE_Key (RFC 8747 §3.1).
CNF_COSE_KEY = 1

#: The eat_profile of our quotes (RFC 9711 §4.3.2: a URI; RFC 4151 tag URI).
PROFILE = "tag:iotid.dev,2026:eat-identity-v1"

#: RFC 9711 §4.2.1, Table 1: UEID type 0x01 RAND.
UEID_TYPE_RAND = 0x01
UEID_LABEL = b"iotid-ueid"
#: RAND UEIDs are 16, 24 or 32 bytes after the type byte; ours are 16 (128 bits).
UEID_LEN = 1 + 16


def ueid_for_uid(uid: bytes) -> bytes:
    """The card's UEID: ``0x01 || SHA-256(b"iotid-ueid" || UID)[:16]``.

    RFC 9711 §4.2.1 lets a RAND UEID be built by feeding identifiers that are universally unique
    through a cryptographic hash (the UID is, within our fleets; the label separates this use).
    """
    digest = hashes.Hash(hashes.SHA256())
    digest.update(UEID_LABEL + uid)
    return bytes([UEID_TYPE_RAND]) + digest.finalize()[: UEID_LEN - 1]
