"""Wire contract of the signed-firmware applet (DESIGN.md sections 6.4, 8), shared by card and host.

Scope: the AID, instructions, P1/P2, the TLV tags of commands and responses, verdict and reason
codes, the personalisation DGIs, two wire objects (:class:`ImageVersion` and the raw-mode signed
statement :func:`raw_statement`), and the MCUboot image format constants (header, TLV areas,
TLV types, flags) as imgtool 2.x writes them and MCUboot's bootutil reads them.

Commands (CLA 80; every one answers 6985 before personalisation is complete):

- BEGIN (P1 = :class:`Mode`, P2 = 00): opens a verification session in RAM (any earlier one is
  dropped). MCUboot mode: no data. Raw mode: data = the TLVs ``95`` hash algorithm (1 byte
  :class:`HashAlg`), ``96`` image length (u32), ``92`` version (8 bytes, :data:`VERSION_LEN`),
  ``93`` security counter (u32), each exactly once, any order.
- UPDATE (P1 = P2 = 00): data = the next bytes of the image, 1..65535 of them, any split.
- FINISH (P1 = P2 = 00): MCUboot mode: no data; raw mode: data = the detached signature. Ends the
  session; answers the verdict TLVs: ``90`` :class:`VerdictCode`, ``91`` :class:`Reason`, and
  when known ``92`` version, ``93`` security counter, ``95`` hash algorithm, ``94`` image hash.
  The verdict is also kept in NVM as the *last verdict*.
- CONFIRM (P1 = P2 = 00, no data): after the new firmware booted, raise the anti-rollback floor
  to the security counter of the last verdict; 6985 unless that verdict is VALID and its counter
  is above the floor. Answers ``97`` the new floor (u32).
- GET STATE (P1 = P2 = 00, no data): ``97`` floor (u32), ``98`` number of issuance keys (1 byte),
  ``99`` session (00 none, else the :class:`Mode`), and ``B0`` (constructed) the last verdict's
  TLVs when there is one.

Integers on our wire are big endian; a version is major (1), minor (1), revision (2), build (4).
The MCUboot image itself is little endian (imgtool's default).

Raw mode signature: over :func:`raw_statement` (a label, the hash algorithm, version, security
counter, length and the image hash), with ECDSA (DER) or RSA-PSS (MGF1, salt 32) using the BEGIN
hash algorithm, so that version and counter are signed too, not only the image. A detached
signature *file* (:class:`RawSignature`) carries the signature with the hash algorithm, version
and security counter it was made for, so that an image and its file are all a device needs.

Not covered: the card's behaviour (``iotid.se.applets.firmware``), the parser and verifier
(``iotid.crypto.mcuboot``), the host session (``iotid.host.firmware``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag, unique

from iotid.spec.identity import FIRMWARE_AID

__all__ = [
    "AID",
    "IMAGE_HEADER_SIZE",
    "IMAGE_MAGIC",
    "MAX_KEYS",
    "MAX_SIGNATURE_LEN",
    "MAX_TLV_AREA",
    "P1P2_NONE",
    "PSS_SALT_LEN",
    "RAW_SIGNATURE_MAGIC",
    "RAW_STATEMENT_LABEL",
    "TLV_HEADER_SIZE",
    "TLV_INFO_MAGIC",
    "TLV_INFO_SIZE",
    "TLV_PROT_INFO_MAGIC",
    "VERSION_LEN",
    "Dgi",
    "HashAlg",
    "ImageFlag",
    "ImageVersion",
    "RawSignature",
    "Ins",
    "Mode",
    "Reason",
    "Tag",
    "TlvType",
    "VerdictCode",
    "raw_statement",
]

AID = FIRMWARE_AID


@unique
class Ins(IntEnum):
    """Instructions of the firmware applet (CLA 80; proprietary, even, outside 6x/9x)."""

    BEGIN = 0x40
    UPDATE = 0x42
    FINISH = 0x44
    CONFIRM = 0x46
    GET_STATE = 0x48


#: P1 and P2 of every command except BEGIN's P1; anything else answers 6A86.
P1P2_NONE = 0x00


@unique
class Mode(IntEnum):
    """BEGIN P1: what is streamed."""

    MCUBOOT = 0x01  # an MCUboot image as imgtool writes it (DESIGN.md section 8)
    RAW = 0x02  # raw bytes + detached signature


@unique
class HashAlg(IntEnum):
    """Image hash algorithms (tag 95)."""

    SHA256 = 0x01
    SHA384 = 0x02

    @property
    def digest_size(self) -> int:
        return 32 if self is HashAlg.SHA256 else 48


@unique
class Tag(IntEnum):
    """Primitive context-specific tags (BER-TLV) of BEGIN data and the responses."""

    VERDICT = 0x90  # one VerdictCode byte
    REASON = 0x91  # one Reason byte
    VERSION = 0x92  # VERSION_LEN bytes
    SECURITY_COUNTER = 0x93  # u32
    IMAGE_HASH = 0x94  # 32 or 48 bytes
    HASH_ALG = 0x95  # one HashAlg byte
    IMAGE_LENGTH = 0x96  # u32 (raw mode BEGIN)
    FLOOR = 0x97  # u32
    KEY_COUNT = 0x98  # one byte
    SESSION = 0x99  # 00, or the Mode of the open session
    LAST_VERDICT = 0xB0  # constructed: the last verdict's TLVs


@unique
class VerdictCode(IntEnum):
    """Tag 90. Complementary bit patterns: no single flipped bit turns INVALID into VALID."""

    VALID = 0x5A
    INVALID = 0xA5


@unique
class Reason(IntEnum):
    """Tag 91: why a verdict is what it is (OK only with VALID)."""

    OK = 0x00
    BAD_MAGIC = 0x01  # header magic is not 0x96f3b83d
    BAD_HEADER = 0x02  # header size below 32, sizes overflow 32 bits
    UNSUPPORTED_IMAGE = 0x03  # encrypted image (flags ENCRYPTED_AES128/256)
    TRUNCATED = 0x04  # FINISH before the whole image arrived
    TRAILING_DATA = 0x05  # bytes after the unprotected TLV area (or past the raw length)
    BAD_TLV_INFO = 0x06  # TLV info magic or size wrong, or not matching the header
    MALFORMED_TLV = 0x07  # a TLV runs past its area, or has the wrong length for its type
    TLV_AREA_TOO_LARGE = 0x08  # a TLV area larger than MAX_TLV_AREA
    UNEXPECTED_TLV = 0x09  # a TLV type not allowed where it is (MCUboot's allow list)
    SECURITY_COUNTER_UNPROTECTED = 0x0A  # security counter TLV outside the protected area
    BAD_SECURITY_COUNTER = 0x0B  # security counter TLV not 4 bytes, or more than one
    NO_HASH = 0x0C  # no SHA256/SHA384 TLV
    UNSUPPORTED_HASH = 0x0D  # hash TLV of an algorithm no trusted key uses, or more than one
    HASH_MISMATCH = 0x0E  # the image hash differs from the hash TLV
    NO_SIGNATURE = 0x0F  # no signature TLV at all
    MISSING_KEYHASH = 0x10  # a signature without a KEYHASH before it (MCUboot ignores it)
    UNKNOWN_KEY = 0x11  # KEYHASH of no trusted key: the signatures after it do not count
    BAD_SIGNATURE = 0x12  # a signature under a trusted key does not verify
    ROLLBACK = 0x13  # security counter below the anti-rollback floor

    @property
    def label(self) -> str:
        """``hash-mismatch`` style text (host verdicts, CLI JSON)."""
        return self.name.lower().replace("_", "-")


@unique
class Dgi(IntEnum):
    """Personalisation DGIs (plain: public data)."""

    ISSUANCE_KEY = 0x0401  # SubjectPublicKeyInfo DER; repeated, 1..MAX_KEYS times; mandatory
    ROLLBACK_FLOOR = 0x0402  # u32; optional, default 0; at most once


#: Issuance public keys a card holds.
MAX_KEYS = 4
#: Length of a version on our wire.
VERSION_LEN = 8
#: Largest detached signature FINISH accepts (RSA-3072: 384 bytes; DER ECDSA P-384: <= 104).
MAX_SIGNATURE_LEN = 512
#: Largest protected or unprotected TLV area (info included) the card buffers.
MAX_TLV_AREA = 2048
#: Raw-mode statement prefix (see the module docstring).
RAW_STATEMENT_LABEL = b"iotid-firmware-raw-v1\x00"
#: First bytes of a detached signature file (:class:`RawSignature`).
RAW_SIGNATURE_MAGIC = b"IOTIDFW1"

# -- MCUboot image format (imgtool 2.x image.py; MCUboot bootutil image.h, tlv.c) -------------
IMAGE_MAGIC = 0x96F3B83D
IMAGE_HEADER_SIZE = 32
TLV_INFO_MAGIC = 0x6907  # unprotected TLV area
TLV_PROT_INFO_MAGIC = 0x6908  # protected TLV area
TLV_INFO_SIZE = 4  # u16 magic, u16 total size (the info included)
TLV_HEADER_SIZE = 4  # u16 type, u16 length
#: RSA-PSS salt length MCUboot requires (bootutil image_rsa.c; imgtool rsa.py).
PSS_SALT_LEN = 32


@unique
class TlvType(IntEnum):
    """MCUboot TLV types (bootutil/image.h IMAGE_TLV_*)."""

    KEYHASH = 0x01
    PUBKEY = 0x02
    SHA256 = 0x10
    SHA384 = 0x11
    SHA512 = 0x12
    RSA2048_PSS = 0x20
    ECDSA_SIG = 0x22
    RSA3072_PSS = 0x23
    ED25519 = 0x24
    SIG_PURE = 0x25
    ENC_RSA2048 = 0x30
    ENC_KW = 0x31
    ENC_EC256 = 0x32
    ENC_X25519 = 0x33
    DEPENDENCY = 0x40
    SEC_CNT = 0x50
    BOOT_RECORD = 0x60


class ImageFlag(IntFlag):
    """MCUboot header flags (bootutil/image.h IMAGE_F_*)."""

    PIC = 0x0000_0001
    ENCRYPTED_AES128 = 0x0000_0004
    ENCRYPTED_AES256 = 0x0000_0008
    NON_BOOTABLE = 0x0000_0010
    RAM_LOAD = 0x0000_0020
    ROM_FIXED = 0x0000_0100


_VERSION = struct.Struct(">BBHI")  # our wire: major, minor, revision, build


@dataclass(frozen=True, order=True)
class ImageVersion:
    """major.minor.revision+build (MCUboot struct image_version)."""

    major: int = 0
    minor: int = 0
    revision: int = 0
    build: int = 0

    def __post_init__(self) -> None:
        limits = (("major", 0xFF), ("minor", 0xFF), ("revision", 0xFFFF), ("build", 0xFFFF_FFFF))
        for name, top in limits:
            if not 0 <= getattr(self, name) <= top:
                raise ValueError(f"version {name} out of range 0..{top}")

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.revision}+{self.build}"

    def encode(self) -> bytes:
        """Our wire form: major, minor, revision (u16), build (u32), big endian."""
        return _VERSION.pack(self.major, self.minor, self.revision, self.build)

    @classmethod
    def decode(cls, raw: bytes) -> ImageVersion:
        if len(raw) != VERSION_LEN:
            raise ValueError(f"a version is {VERSION_LEN} bytes")
        return cls(*_VERSION.unpack(raw))

    @classmethod
    def parse(cls, text: str) -> ImageVersion:
        """``1.2.3`` or ``1.2.3+4`` (imgtool's spelling; missing parts are 0)."""
        main, _, build = text.strip().partition("+")
        parts = main.split(".")
        if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"not a version: {text!r}")
        nums = [int(p) for p in parts] + [0] * (3 - len(parts))
        return cls(nums[0], nums[1], nums[2], int(build) if build else 0)


def raw_statement(
    hash_alg: HashAlg,
    length: int,
    version: ImageVersion,
    security_counter: int,
    image_hash: bytes,
) -> bytes:
    """What a raw-mode detached signature signs: label, hash algorithm, version, security
    counter (u32), length (u64), image hash; integers big endian."""
    if len(image_hash) != hash_alg.digest_size:
        raise ValueError("image hash length does not match the hash algorithm")
    if not 0 <= security_counter <= 0xFFFF_FFFF or not 0 <= length < 1 << 64:
        raise ValueError("security counter is a u32, length a u64")
    return (
        RAW_STATEMENT_LABEL
        + bytes([hash_alg])
        + version.encode()
        + security_counter.to_bytes(4, "big")
        + length.to_bytes(8, "big")
        + image_hash
    )


_RAW_SIGNATURE_HEAD = struct.Struct(">8sB8sI")  # magic, hash alg, version, security counter


@dataclass(frozen=True)
class RawSignature:
    """A detached signature file: :data:`RAW_SIGNATURE_MAGIC`, hash algorithm (1 byte), version
    (:data:`VERSION_LEN`), security counter (u32 big endian), then the signature itself."""

    hash_alg: HashAlg
    version: ImageVersion
    security_counter: int
    signature: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.security_counter <= 0xFFFF_FFFF:
            raise ValueError("security counter is a u32")
        if not 0 < len(self.signature) <= MAX_SIGNATURE_LEN:
            raise ValueError(f"signature of 1..{MAX_SIGNATURE_LEN} bytes")

    def encode(self) -> bytes:
        head = _RAW_SIGNATURE_HEAD.pack(
            RAW_SIGNATURE_MAGIC, self.hash_alg, self.version.encode(), self.security_counter
        )
        return head + self.signature

    @classmethod
    def decode(cls, raw: bytes) -> RawSignature:
        """ValueError if ``raw`` is not a detached signature file."""
        if len(raw) <= _RAW_SIGNATURE_HEAD.size or not raw.startswith(RAW_SIGNATURE_MAGIC):
            raise ValueError("not an iotid detached signature file")
        _, alg, version, counter = _RAW_SIGNATURE_HEAD.unpack_from(raw)
        return cls(
            HashAlg(alg), ImageVersion.decode(version), counter, raw[_RAW_SIGNATURE_HEAD.size :]
        )
