"""Firmware signing at the factory: MCUboot images as imgtool 2.x writes them, and raw images with
a detached signature file (DESIGN.md section 8), signed by a key that stays in the key store.

Scope: :func:`sign_mcuboot` lays out the image exactly as ``imgtool sign --pad-header`` does
(imgtool ``image.py`` ``Image.create``/``add_header``; MCUboot ``bootutil/image.h``):

    header (32 bytes) | header padding (erased value) | body | protected TLV area | TLV area

The protected area (magic 0x6908, its size including the 4-byte info) holds the security counter
(0x50, u32). The unprotected area (0x6907) holds, in imgtool's order, the image hash (0x10 SHA256
/ 0x11 SHA384) over header + padding + body + protected area, the KEYHASH (0x01) of the signing
key, and the signature (0x22 ECDSA DER, 0x20/0x23 RSA-PSS salt 32).

What is signed: imgtool 2.5.0's keys are *payload* signers (``keys/general.py`` PayloadSigner):
``key.sign(payload)`` runs ECDSA with the curve's hash, or RSA-PSS SHA-256, over the hashed
region itself. ECDSA/PSS over a message with hash H is the primitive applied to H(message), i.e.
to the image hash; that is what MCUboot checks (``image_validate.c``: ``bootutil_verify_sig`` over
the computed hash) and what :meth:`~iotid.crypto.mcuboot.TrustedKey.verify_digest` checks. So
:meth:`Signer.sign` over the hashed region is the MCUboot signature, provided the image hash is
the one the key's scheme uses (SHA-384 for P-384, SHA-256 otherwise, as imgtool picks). Every
signature is checked against the public key before it is returned, so a backend that hashed
differently fails here, not in the field.

:func:`sign_raw` makes the detached signature file (:class:`~iotid.spec.firmware.RawSignature`)
over :func:`~iotid.spec.firmware.raw_statement`, the same statement as
:func:`iotid.crypto.mcuboot.sign_raw_image`, through the Signer.

Not covered: key storage and unlocking (``factory.keystore`` and its backends), encrypted or
compressed images, ``--pad`` slot trailers (the card refuses them), dependencies, PUBKEY TLVs,
ED25519, big-endian images, verification (``iotid.crypto.mcuboot``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes

from iotid.crypto.mcuboot import TrustedKey
from iotid.factory.keystore import PublicKey, Signer
from iotid.spec.firmware import (
    IMAGE_HEADER_SIZE,
    IMAGE_MAGIC,
    TLV_INFO_MAGIC,
    TLV_INFO_SIZE,
    TLV_PROT_INFO_MAGIC,
    HashAlg,
    ImageFlag,
    ImageVersion,
    RawSignature,
    TlvType,
    raw_statement,
)

__all__ = [
    "DEFAULT_HEADER_SIZE",
    "FirmwareSigningError",
    "SignedImage",
    "SignedRaw",
    "hash_alg_for",
    "sign_mcuboot",
    "sign_mcuboot_detailed",
    "sign_raw",
    "sign_raw_detailed",
]

#: imgtool's usual ``--header-size`` for Zephyr images (0x200); imgtool's own minimum is 32.
DEFAULT_HEADER_SIZE = 0x200
#: ``--align`` values imgtool accepts (image.py ``_trailer_size``).
_ALIGNS = frozenset({1, 2, 4, 8, 16, 32})
#: imgtool image.py DEFAULT_MAX_SECTORS / DEFAULT_MAX_ALIGN (slot trailer size).
_MAX_SECTORS = 128
_DEFAULT_MAX_ALIGN = 8
_BOOT_MAGIC_SIZE = 16
_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFF_FFFF

# bootutil/image.h struct image_header, little endian (imgtool's default): magic, load address,
# header size, protected TLV area size, image size, flags, version (major, minor, revision,
# build), pad.
_HEADER = struct.Struct("<IIHHIIBBHII")
_TLV = struct.Struct("<HH")  # TLV info (magic, total) and TLV header (type, length)
_U32 = struct.Struct("<I")


class FirmwareSigningError(ValueError):
    """Bad signing parameters, or a signature the signer produced does not verify."""


@dataclass(frozen=True)
class SignedImage:
    """An MCUboot image and facts about it (for logs and audit records; nothing secret)."""

    image: bytes
    hash_alg: HashAlg
    image_hash: bytes
    keyhash: bytes
    version: ImageVersion
    security_counter: int

    def __repr__(self) -> str:
        return (
            f"SignedImage({len(self.image)} bytes, {self.version}, "
            f"counter={self.security_counter}, {self.hash_alg.name}={self.image_hash.hex()})"
        )

    def audit_details(self) -> dict[str, object]:
        """What an audit record keeps of this signing (JSON-ready, public facts only)."""
        return {
            "format": "mcuboot",
            "version": str(self.version),
            "security_counter": self.security_counter,
            "hash_alg": self.hash_alg.name,
            "image_hash": self.image_hash.hex(),
            "keyhash": self.keyhash.hex(),
            "signed_size": len(self.image),
        }


@dataclass(frozen=True)
class SignedRaw:
    """A detached signature file and facts about it (nothing secret)."""

    signature_file: bytes
    hash_alg: HashAlg
    image_hash: bytes
    image_size: int
    version: ImageVersion
    security_counter: int

    def __repr__(self) -> str:
        return (
            f"SignedRaw({self.image_size} bytes, {self.version}, "
            f"counter={self.security_counter}, {self.hash_alg.name}={self.image_hash.hex()})"
        )

    def audit_details(self) -> dict[str, object]:
        """What an audit record keeps of this signing (JSON-ready, public facts only)."""
        return {
            "format": "raw",
            "version": str(self.version),
            "security_counter": self.security_counter,
            "hash_alg": self.hash_alg.name,
            "image_hash": self.image_hash.hex(),
            "image_size": self.image_size,
        }


def hash_alg_for(public_key: PublicKey) -> HashAlg:
    """The image hash imgtool pairs with the key (``ALLOWED_KEY_SHA``): SHA-384 for P-384 only.
    ValueError for a key the card cannot trust."""
    return TrustedKey(public_key).hash_alg


def _digest(alg: HashAlg, data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256() if alg is HashAlg.SHA256 else hashes.SHA384())
    h.update(data)
    return h.finalize()


def _trusted(signer: Signer, hash_alg: HashAlg | None) -> tuple[TrustedKey, HashAlg]:
    try:
        key = TrustedKey(signer.public_key())
    except ValueError as exc:
        raise FirmwareSigningError(f"cannot sign firmware with this key: {exc}") from None
    if key.alg is not signer.alg:
        raise FirmwareSigningError("the signer's algorithm does not match its public key")
    # Signer.sign hashes with SHA-384 for P-384 and SHA-256 otherwise, as imgtool and MCUboot pair
    # them: another image hash would not be what the signature covers.
    if hash_alg is not None and hash_alg is not key.hash_alg:
        raise FirmwareSigningError(
            f"{key.alg.name} keys sign {key.hash_alg.name} images (imgtool, MCUboot), "
            f"not {hash_alg.name}"
        )
    return key, key.hash_alg


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= _U32_MAX:
        raise FirmwareSigningError(f"{name} must be 0..{_U32_MAX:#x}")


def _trailer_size(align: int) -> int:
    # imgtool image.py _trailer_size (swap mode, no encryption): status area, four flag words,
    # the boot magic rounded up to max_align.
    max_align = max(_DEFAULT_MAX_ALIGN, align)
    magic = -(-_BOOT_MAGIC_SIZE // max_align) * max_align
    return _MAX_SECTORS * 3 * align + max_align * 4 + magic


def _tlv(kind: TlvType, value: bytes) -> bytes:
    # bootutil/image.h struct image_tlv: u16 type, u16 length, value.
    return _TLV.pack(kind, len(value)) + value


def sign_mcuboot_detailed(
    image: bytes,
    signer: Signer,
    *,
    version: ImageVersion,
    security_counter: int,
    header_size: int = DEFAULT_HEADER_SIZE,
    load_address: int = 0,
    slot_size: int | None = None,
    align: int = 8,
    hash_alg: HashAlg | None = None,
    erased_val: int = 0xFF,
) -> SignedImage:
    """:func:`sign_mcuboot`, returning the image with its hash and key hash."""
    key, alg = _trusted(signer, hash_alg)
    if not IMAGE_HEADER_SIZE <= header_size <= _U16_MAX:
        raise FirmwareSigningError(f"header size must be {IMAGE_HEADER_SIZE}..{_U16_MAX:#x}")
    _check_u32("load address", load_address)
    _check_u32("security counter", security_counter)
    if align not in _ALIGNS:
        raise FirmwareSigningError(f"align must be one of {sorted(_ALIGNS)}")
    if erased_val not in (0x00, 0xFF):
        raise FirmwareSigningError("erased value must be 0x00 or 0xff")

    # Protected TLV area: info + security counter (imgtool adds it whenever one is given).
    sec_cnt = _tlv(TlvType.SEC_CNT, _U32.pack(security_counter))
    protected = _TLV.pack(TLV_PROT_INFO_MAGIC, TLV_INFO_SIZE + len(sec_cnt)) + sec_cnt
    if header_size + len(image) + len(protected) > _U32_MAX:
        raise FirmwareSigningError("image too large for 32-bit MCUboot sizes")

    # imgtool add_header: RAM_LOAD whenever a load address is given; never encrypted here.
    flags = ImageFlag.RAM_LOAD if load_address else ImageFlag(0)
    header = _HEADER.pack(
        IMAGE_MAGIC,
        load_address,
        header_size,
        len(protected),
        len(image),
        int(flags),
        version.major,
        version.minor,
        version.revision,
        version.build,
        0,
    )
    # imgtool --pad-header: the header space is filled with the erased value, then the header
    # written over its start.
    hashed = header + bytes([erased_val]) * (header_size - IMAGE_HEADER_SIZE) + image + protected
    image_hash = _digest(alg, hashed)

    # The signature over the hashed region == over the image hash (module docstring).
    signature = signer.sign(hashed, pss=key.alg.is_rsa)
    if not key.verify_digest(signature, image_hash, alg):
        raise FirmwareSigningError("the key store's signature does not verify; image not written")

    hash_tlv = TlvType.SHA384 if alg is HashAlg.SHA384 else TlvType.SHA256
    keyhash = key.keyhash(alg)
    tlvs = _tlv(hash_tlv, image_hash) + _tlv(TlvType.KEYHASH, keyhash)
    tlvs += _tlv(key.sig_tlv, signature)
    if TLV_INFO_SIZE + len(tlvs) > _U16_MAX:  # unreachable with our key sizes
        raise FirmwareSigningError("TLV area too large")
    out = hashed + _TLV.pack(TLV_INFO_MAGIC, TLV_INFO_SIZE + len(tlvs)) + tlvs

    # imgtool check_trailer: with a slot size, image + swap trailer must fit in the slot.
    if slot_size is not None:
        trailer = _trailer_size(align)
        if len(out) + trailer > slot_size:
            raise FirmwareSigningError(
                f"image size ({len(out):#x}) + trailer ({trailer:#x}) exceeds slot size "
                f"{slot_size:#x}"
            )
    return SignedImage(out, alg, image_hash, keyhash, version, security_counter)


def sign_mcuboot(
    image: bytes,
    signer: Signer,
    *,
    version: ImageVersion,
    security_counter: int,
    header_size: int = DEFAULT_HEADER_SIZE,
    load_address: int = 0,
    slot_size: int | None = None,
    align: int = 8,
    hash_alg: HashAlg | None = None,
    erased_val: int = 0xFF,
) -> bytes:
    """The MCUboot image of ``image`` (the raw firmware body), as
    ``imgtool sign --pad-header --header-size H --align A [--slot-size S] [--load-addr L]
    --version V --security-counter N --key K`` writes it.

    ``hash_alg`` defaults to the key's (SHA-384 for P-384, SHA-256 otherwise); another is refused.
    ``slot_size`` only checks that the image and its swap trailer fit (no padding is written).
    FirmwareSigningError on bad parameters or a signature that does not verify.
    """
    return sign_mcuboot_detailed(
        image,
        signer,
        version=version,
        security_counter=security_counter,
        header_size=header_size,
        load_address=load_address,
        slot_size=slot_size,
        align=align,
        hash_alg=hash_alg,
        erased_val=erased_val,
    ).image


def sign_raw_detailed(
    image: bytes,
    signer: Signer,
    *,
    version: ImageVersion,
    security_counter: int,
    hash_alg: HashAlg | None = None,
) -> SignedRaw:
    """:func:`sign_raw`, returning the signature file with the image hash."""
    key, alg = _trusted(signer, hash_alg)
    _check_u32("security counter", security_counter)
    if len(image) > _U32_MAX:  # the card's BEGIN carries the length as a u32
        raise FirmwareSigningError("raw images are at most 4 GiB")
    image_hash = _digest(alg, image)
    message = raw_statement(alg, len(image), version, security_counter, image_hash)
    signature = signer.sign(message, pss=key.alg.is_rsa)
    if not key.verify_message(signature, message, alg):
        raise FirmwareSigningError("the key store's signature does not verify; nothing written")
    envelope = RawSignature(alg, version, security_counter, signature).encode()
    return SignedRaw(envelope, alg, image_hash, len(image), version, security_counter)


def sign_raw(
    image: bytes,
    signer: Signer,
    *,
    version: ImageVersion,
    security_counter: int,
    hash_alg: HashAlg | None = None,
) -> bytes:
    """The detached signature file (:class:`RawSignature` encoding) of a raw image: ECDSA or
    RSA-PSS (salt 32) over :func:`raw_statement`, the statement the card's raw mode verifies.
    ``hash_alg`` defaults to the key's (as for :func:`sign_mcuboot`); another is refused."""
    return sign_raw_detailed(
        image, signer, version=version, security_counter=security_counter, hash_alg=hash_alg
    ).signature_file
