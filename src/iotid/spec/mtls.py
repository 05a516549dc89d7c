"""mTLS credential applet vocabulary (DESIGN.md section 6.3): AID, instructions, signature
scheme codes, the allowed-schemes bitmap, TLV tags, personalisation DGIs and limits.

Commands (CLA ``80``; every one answers ``6985`` until the applet is personalised and an
identity key is active):

- SIGN DIGEST: P1 = :class:`SignScheme` code, P2 = 00, data = the digest (32 bytes for SHA-256,
  48 for SHA-384, else ``6700``). Returns a DER ``ECDSA-Sig-Value`` for ECDSA, the raw
  signature (modulus length) for RSA. PSS uses MGF1 with the same hash and a salt as long as
  the digest (TLS 1.3, RFC 8446 section 4.2.3); PKCS#1 v1.5 takes the bare digest and the card
  builds the DigestInfo itself. A scheme the personalisation bitmap does not allow, or that does
  not fit the identity key, answers ``6A86``.
- PUT CERT CHAIN: P1 = P2 = 00, data = DER certificates back to back, leaf first, each one issued
  by the next (name chaining and signature). The leaf's public key must be the active identity
  key, else ``6A80``. The chain is stored for the current key epoch only.
- GET CERT CHAIN: the stored chain as sent; ``6A88`` if none, or if it belongs to an older epoch.
- CREATE CSR: data empty or one :attr:`Tag.COMMON_NAME` object (UTF-8, 1..64 characters);
  returns a PKCS#10 request (RFC 2986) built and signed inside the card.
- GET PUBLIC KEY: :attr:`Tag.SPKI` (SubjectPublicKeyInfo DER), :attr:`Tag.EPOCH` (u32 big
  endian), :attr:`Tag.KEY_ALG` (:class:`~iotid.spec.algorithms.KeyAlg` code).

ECDSA schemes are bound to the curve's own hash (P-256/SHA-256, P-384/SHA-384), as TLS 1.3
binds them (RFC 8446 section 4.2.3); RSA keys accept either hash with PSS or PKCS#1 v1.5.

Not in scope: encoding (``iotid.apdu``), the card's behaviour (``iotid.se.applets.mtls``), the
host session (``iotid.host.mtls``).
"""

from __future__ import annotations

from enum import IntEnum, IntFlag, unique

from iotid.spec.algorithms import KeyAlg
from iotid.spec.identity import MTLS_AID

__all__ = [
    "AID",
    "ALL_SCHEME_BITS",
    "DIGEST_SIZES",
    "FAMILY_ECDSA",
    "FAMILY_PKCS1",
    "FAMILY_PSS",
    "MAX_CHAIN_BYTES",
    "MAX_CHAIN_CERTS",
    "MAX_COMMON_NAME_CHARS",
    "P_NONE",
    "UID_URN_PREFIX",
    "Dgi",
    "Ins",
    "SchemeBit",
    "SignScheme",
    "Tag",
    "schemes_for",
    "uid_urn",
]

AID = MTLS_AID


@unique
class Ins(IntEnum):
    """Instructions of the mTLS applet (CLA 80, GP proprietary class)."""

    SIGN_DIGEST = 0x2A
    GET_PUBLIC_KEY = 0x30
    PUT_CERT_CHAIN = 0x32
    GET_CERT_CHAIN = 0x34
    CREATE_CSR = 0x36


#: P1 and P2 of every command but SIGN DIGEST (whose P1 is a scheme code); P2 is always 00.
P_NONE = 0x00


@unique
class Dgi(IntEnum):
    """Personalisation DGIs (STORE DATA through the ISD, GPC 2.3.1 section 11.11)."""

    #: Allowed signature schemes: one byte, a :class:`SchemeBit` combination. Mandatory.
    SIGN_SCHEMES = 0x0301


@unique
class Tag(IntEnum):
    """BER-TLV tags (context-specific, primitive) of the applet's data objects."""

    COMMON_NAME = 0x80
    SPKI = 0x81
    EPOCH = 0x82
    KEY_ALG = 0x83


class SchemeBit(IntFlag):
    """Bits of the allowed-schemes byte (DGI 0301)."""

    ECDSA_SHA256 = 0x01
    ECDSA_SHA384 = 0x02
    RSA_PSS_SHA256 = 0x04
    RSA_PSS_SHA384 = 0x08
    RSA_PKCS1_SHA256 = 0x10
    RSA_PKCS1_SHA384 = 0x20


#: Every bit defined; any other bit in DGI 0301 is refused (6A80).
ALL_SCHEME_BITS = int(
    SchemeBit.ECDSA_SHA256
    | SchemeBit.ECDSA_SHA384
    | SchemeBit.RSA_PSS_SHA256
    | SchemeBit.RSA_PSS_SHA384
    | SchemeBit.RSA_PKCS1_SHA256
    | SchemeBit.RSA_PKCS1_SHA384
)

#: Digest length of each hash the applet signs.
DIGEST_SIZES: dict[str, int] = {"sha256": 32, "sha384": 48}

#: Scheme families, as the host names them.
FAMILY_ECDSA = "ecdsa"
FAMILY_PSS = "pss"
FAMILY_PKCS1 = "pkcs1"


@unique
class SignScheme(IntEnum):
    """SIGN DIGEST P1: the signature scheme. High nibble = family, low nibble = hash."""

    ECDSA_SHA256 = 0x01
    ECDSA_SHA384 = 0x02
    RSA_PSS_SHA256 = 0x11
    RSA_PSS_SHA384 = 0x12
    RSA_PKCS1_SHA256 = 0x21
    RSA_PKCS1_SHA384 = 0x22

    @property
    def bit(self) -> SchemeBit:
        return SchemeBit[self.name]

    @property
    def family(self) -> str:
        return {0x00: FAMILY_ECDSA, 0x10: FAMILY_PSS, 0x20: FAMILY_PKCS1}[self & 0xF0]

    @property
    def hash_name(self) -> str:
        return "sha256" if self & 0x0F == 0x01 else "sha384"

    @property
    def digest_size(self) -> int:
        return DIGEST_SIZES[self.hash_name]

    @property
    def label(self) -> str:
        """Text name: ``ecdsa-sha256``, ``rsa-pss-sha384``, ``rsa-pkcs1-sha256`` ..."""
        return self.name.lower().replace("_", "-")

    def fits(self, alg: KeyAlg) -> bool:
        """Whether this scheme can be used with an identity key of ``alg``."""
        if alg.is_ec:
            return self.family == FAMILY_ECDSA and self.hash_name == alg.hash_name
        if alg.is_rsa:
            return self.family in (FAMILY_PSS, FAMILY_PKCS1)
        return False

    @classmethod
    def from_label(cls, label: str) -> SignScheme:
        for scheme in cls:
            if scheme.label == label.lower():
                return scheme
        raise ValueError(f"unknown signature scheme {label!r}; expected one of {_labels()}")

    @classmethod
    def from_parts(cls, family: str, hash_name: str) -> SignScheme:
        """``("ecdsa" | "pss" | "pkcs1", "sha256" | "sha384")`` -> scheme; ValueError otherwise."""
        for scheme in cls:
            if scheme.family == family.lower() and scheme.hash_name == hash_name.lower():
                return scheme
        raise ValueError(f"unsupported signature scheme {family!r} with hash {hash_name!r}")


def _labels() -> list[str]:
    return [s.label for s in SignScheme]


def schemes_for(alg: KeyAlg) -> list[SignScheme]:
    """Every scheme that fits an identity key of ``alg``."""
    return [s for s in SignScheme if s.fits(alg)]


#: Limits of the stored chain (the card answers 6A84 beyond them).
MAX_CHAIN_BYTES = 16384
MAX_CHAIN_CERTS = 8
#: X.520 ub-common-name (RFC 5280 Appendix A.1).
MAX_COMMON_NAME_CHARS = 64

#: Subject alternative name URI of a device: ``urn:iotid:uid:`` + lowercase UID hex.
UID_URN_PREFIX = "urn:iotid:uid:"


def uid_urn(uid: bytes) -> str:
    return UID_URN_PREFIX + uid.hex()
