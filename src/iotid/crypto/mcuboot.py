"""Streaming verification of MCUboot images as imgtool 2.x writes them, and the types shared with
raw images with a detached signature (DESIGN.md section 8).

Scope: :class:`McubootVerifier`, an incremental state machine without I/O: ``feed`` it the image
in any chunking; it parses the 32-byte header, hashes header + padding + body + protected TLV
area as they stream (SHA-256 and/or SHA-384 from ``cryptography``, whichever the trusted keys
use), keeps only the header and the two TLV areas (at most ``max_tlv_area`` bytes each), never
the body, and ``finish`` decides with MCUboot's rules (bootutil ``image_validate.c``, ``tlv.c``),
not ``imgtool verify``'s laxer ones:

- the protected area (magic 0x6908) must be exactly the header's protected size; the unprotected
  area (0x6907) follows; nothing may follow it;
- exactly one hash TLV (0x10 SHA256 / 0x11 SHA384), of an algorithm a trusted key uses; it must
  match;
- a signature (0x22 ECDSA DER, 0x20/0x23 RSA-PSS salt 32) counts only when the last KEYHASH
  (0x01, the image hash algorithm over the key's SPKI DER for EC, PKCS#1 RSAPublicKey for RSA)
  before it, since the previous signature, names a trusted key; at least one must count and
  every counted one must verify;
- only KEYHASH, hash and signature TLVs may be unprotected; the security counter (0x50, u32) is
  valid only in the protected area (absent: 0); other protected TLVs are signed and ignored;
- encrypted images are refused; the security counter must not be below the floor.

:class:`TrustedKey`, :class:`ImageVerdict`, the key aliases and the hash helpers are shared with
raw mode, which lives in :mod:`iotid.crypto.firmware_raw` (:class:`RawVerifier`: raw bytes of an
announced length, the detached signature covering :func:`raw_statement`, so version and security
counter are signed, not just the image; :func:`sign_raw_image`); import those from there.

Not covered: raw mode itself (:mod:`iotid.crypto.firmware_raw`), APDUs and persistence
(``iotid.se.applets.firmware``), ED25519, SHA-512, ECDSA signatures padded for MCUboot < 1.5,
encrypted or "pure" signature images, image dependencies.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, auto

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from iotid.spec.algorithms import KeyAlg
from iotid.spec.firmware import (
    IMAGE_HEADER_SIZE,
    IMAGE_MAGIC,
    MAX_TLV_AREA,
    PSS_SALT_LEN,
    TLV_HEADER_SIZE,
    TLV_INFO_MAGIC,
    TLV_INFO_SIZE,
    TLV_PROT_INFO_MAGIC,
    HashAlg,
    ImageFlag,
    ImageVersion,
    Reason,
    TlvType,
    raw_statement,
)

__all__ = [
    "ImageHeader",
    "ImageVerdict",
    "ImageVersion",
    "McubootVerifier",
    "PublicKey",
    "TrustedKey",
    "raw_statement",
]

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# bootutil/image.h struct image_header, little endian: magic, load address, header size,
# protected TLV size, image size, flags, version (major, minor, revision, build), pad.
_HEADER = struct.Struct("<IIHHIIBBHII")
_U16X2 = struct.Struct("<HH")  # TLV info (magic, total) and TLV header (type, length)
_U32 = struct.Struct("<I")
_U32_MAX = 0xFFFF_FFFF
_HASH_TLVS = {TlvType.SHA256: HashAlg.SHA256, TlvType.SHA384: HashAlg.SHA384}
_SIG_TLVS = {TlvType.ECDSA_SIG, TlvType.RSA2048_PSS, TlvType.RSA3072_PSS}
#: MCUboot's allowed_unprot_tlvs (image_validate.c, MCUBOOT_USE_TLV_ALLOW_LIST), our key types.
_UNPROTECTED_ALLOWED = {TlvType.KEYHASH, *_HASH_TLVS, *_SIG_TLVS}
#: Types that make no sense inside the hashed area (they would have to cover themselves).
_NOT_PROTECTED = {
    TlvType.KEYHASH,
    TlvType.PUBKEY,
    TlvType.SHA512,
    TlvType.ED25519,
    TlvType.SIG_PURE,
    *_HASH_TLVS,
    *_SIG_TLVS,
}


def _hash(alg: HashAlg) -> hashes.HashAlgorithm:
    return hashes.SHA256() if alg is HashAlg.SHA256 else hashes.SHA384()


def _digest(alg: HashAlg, data: bytes) -> bytes:
    h = hashes.Hash(_hash(alg))
    h.update(data)
    return h.finalize()


@dataclass(frozen=True)
class ImageHeader:
    """The fields of an MCUboot image header (after the magic)."""

    load_addr: int
    hdr_size: int
    protect_tlv_size: int
    img_size: int
    flags: int
    version: ImageVersion


@dataclass(frozen=True)
class ImageVerdict:
    """The outcome of a verification. ``valid`` holds exactly when ``reason`` is OK."""

    valid: bool
    reason: Reason
    version: ImageVersion | None = None
    security_counter: int | None = None
    hash_alg: HashAlg | None = None
    image_hash: bytes | None = None

    def __post_init__(self) -> None:
        if self.valid != (self.reason is Reason.OK):
            raise ValueError("a verdict is valid exactly when its reason is OK")


class TrustedKey:
    """An issuance public key as MCUboot knows it: its bytes, their KEYHASH, its algorithm."""

    __slots__ = ("_keyhash", "alg", "mcuboot_bytes", "public_key", "spki")

    def __init__(self, public_key: PublicKey) -> None:
        self.public_key = public_key
        self.spki = public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            curves = {"secp256r1": KeyAlg.EC_P256, "secp384r1": KeyAlg.EC_P384}
            if public_key.curve.name not in curves:
                raise ValueError(f"unsupported curve {public_key.curve.name}")
            self.alg = curves[public_key.curve.name]
            self.mcuboot_bytes = self.spki  # imgtool keys/ecdsa.py: SPKI DER
        elif isinstance(public_key, rsa.RSAPublicKey):
            sizes = {2048: KeyAlg.RSA_2048, 3072: KeyAlg.RSA_3072}
            if public_key.key_size not in sizes:
                raise ValueError(f"unsupported RSA key size {public_key.key_size}")
            self.alg = sizes[public_key.key_size]
            self.mcuboot_bytes = public_key.public_bytes(  # imgtool keys/rsa.py: PKCS#1
                serialization.Encoding.DER, serialization.PublicFormat.PKCS1
            )
        else:
            raise ValueError("issuance keys are EC P-256/P-384 or RSA-2048/3072")
        self._keyhash = {a: _digest(a, self.mcuboot_bytes) for a in HashAlg}

    @classmethod
    def from_spki(cls, der: bytes) -> TrustedKey:
        """Parse a SubjectPublicKeyInfo; ValueError if malformed, unsupported or not canonical."""
        try:
            key = serialization.load_der_public_key(der)
        except Exception as exc:  # cryptography raises ValueError or UnsupportedAlgorithm
            raise ValueError("not a SubjectPublicKeyInfo") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise ValueError("issuance keys are EC P-256/P-384 or RSA-2048/3072")
        out = cls(key)
        if out.spki != der:
            raise ValueError("SubjectPublicKeyInfo is not in canonical DER")
        return out

    def __repr__(self) -> str:
        return f"TrustedKey({self.alg.name}, keyhash={self._keyhash[self.hash_alg][:8].hex()}..)"

    @property
    def hash_alg(self) -> HashAlg:
        """The image hash MCUboot and imgtool pair with this key (SHA-384 for P-384 only)."""
        return HashAlg.SHA384 if self.alg is KeyAlg.EC_P384 else HashAlg.SHA256

    @property
    def sig_tlv(self) -> TlvType:
        if self.alg.is_ec:
            return TlvType.ECDSA_SIG
        return TlvType.RSA2048_PSS if self.alg is KeyAlg.RSA_2048 else TlvType.RSA3072_PSS

    def keyhash(self, alg: HashAlg) -> bytes:
        return self._keyhash[alg]

    def matches_keyhash(self, alg: HashAlg, value: bytes) -> bool:
        return hmac.compare_digest(self._keyhash[alg], value)

    def _verify(self, signature: bytes, data: bytes, alg: HashAlg, *, prehashed: bool) -> bool:
        h = _hash(alg)
        algorithm: hashes.HashAlgorithm | utils.Prehashed = utils.Prehashed(h) if prehashed else h
        key = self.public_key
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, data, ec.ECDSA(algorithm))
            else:
                key.verify(signature, data, padding.PSS(padding.MGF1(h), PSS_SALT_LEN), algorithm)
        except (InvalidSignature, ValueError):
            return False
        return True

    def verify_digest(self, signature: bytes, digest: bytes, alg: HashAlg) -> bool:
        """An MCUboot signature: ECDSA or RSA-PSS over the image hash ``digest``."""
        return self._verify(signature, digest, alg, prehashed=True)

    def verify_message(self, signature: bytes, message: bytes, alg: HashAlg) -> bool:
        """A raw-mode signature: ECDSA or RSA-PSS with ``alg`` over ``message``."""
        return self._verify(signature, message, alg, prehashed=False)


class _Phase(Enum):
    HEADER = auto()
    PADDING = auto()
    BODY = auto()
    PROTECTED = auto()
    INFO = auto()
    UNPROTECTED = auto()
    DONE = auto()
    FAILED = auto()


_HASHED = frozenset({_Phase.HEADER, _Phase.PADDING, _Phase.BODY, _Phase.PROTECTED})
_KEPT = frozenset({_Phase.HEADER, _Phase.PROTECTED, _Phase.INFO, _Phase.UNPROTECTED})


class _RejectError(Exception):
    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.label)
        self.reason = reason


def _tlvs(area: bytes, start: int) -> list[tuple[int, bytes]]:
    """The TLVs of ``area[start:]``, which they must fill exactly (u16 type, u16 length)."""
    out: list[tuple[int, bytes]] = []
    off = start
    while off < len(area):
        if off + TLV_HEADER_SIZE > len(area):
            raise _RejectError(Reason.MALFORMED_TLV)
        kind, length = _U16X2.unpack_from(area, off)
        end = off + TLV_HEADER_SIZE + length
        if end > len(area):
            raise _RejectError(Reason.MALFORMED_TLV)
        out.append((kind, area[off + TLV_HEADER_SIZE : end]))
        off = end
    return out


class McubootVerifier:
    """Incremental MCUboot image verifier (see the module docstring for the rules).

    ``feed`` never raises on image content: a structural error is remembered, later bytes are
    discarded unread, and ``finish`` reports it. ``buffered``/``peak_buffered`` count the bytes
    kept (header and TLV areas), never more than ``32 + 2 * max_tlv_area``.
    """

    def __init__(self, keys: Sequence[TrustedKey], *, max_tlv_area: int = MAX_TLV_AREA) -> None:
        if not keys:
            raise ValueError("at least one trusted key")
        self._keys = tuple(keys)
        self._max_tlv_area = max_tlv_area
        self._hashers = {k.hash_alg: hashes.Hash(_hash(k.hash_alg)) for k in self._keys}
        self._digests: dict[HashAlg, bytes] = {}
        self._phase = _Phase.HEADER
        self._need = IMAGE_HEADER_SIZE
        self._kept = bytearray()  # the header or TLV area being received
        self._unprotected: list[tuple[int, bytes]] = []
        self._unprotected_size = 0
        self._error: Reason | None = None
        self._header: ImageHeader | None = None
        self._security_counter: int | None = None
        self._consumed = 0
        self._peak = 0

    def __repr__(self) -> str:
        return f"McubootVerifier(phase={self._phase.name}, consumed={self._consumed})"

    # -- observation ----------------------------------------------------------------------------
    @property
    def header(self) -> ImageHeader | None:
        return self._header

    @property
    def consumed(self) -> int:
        return self._consumed

    @property
    def buffered(self) -> int:
        """Bytes held now: the partial header or TLV area, plus the parsed unprotected TLVs."""
        return len(self._kept) + self._unprotected_size

    @property
    def peak_buffered(self) -> int:
        return self._peak

    @property
    def failure(self) -> Reason | None:
        return self._error

    # -- streaming ------------------------------------------------------------------------------
    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._consumed += len(view)
        while view:
            phase = self._phase
            if phase is _Phase.FAILED:
                return
            if phase is _Phase.DONE:
                self._fail(Reason.TRAILING_DATA)
                return
            take = min(self._need, len(view))
            piece = view[:take]
            if phase in _HASHED:
                for h in self._hashers.values():
                    h.update(piece)
            if phase in _KEPT:
                self._kept += piece
                self._peak = max(self._peak, self.buffered)
            view = view[take:]
            self._need -= take
            if self._need == 0:
                try:
                    self._complete(phase)
                except _RejectError as failure:
                    self._fail(failure.reason)

    def _fail(self, reason: Reason) -> None:
        if self._error is None:
            self._error = reason
        self._phase = _Phase.FAILED
        self._kept = bytearray()
        self._unprotected, self._unprotected_size = [], 0
        self._hashers = {}

    def _enter(self, phase: _Phase, need: int) -> None:
        self._phase, self._need = phase, need
        if need == 0 and phase is not _Phase.DONE:
            self._complete(phase)

    def _complete(self, phase: _Phase) -> None:
        kept, self._kept = bytes(self._kept), bytearray()
        if phase is _Phase.HEADER:
            header = self._parse_header(kept)
            self._enter(_Phase.PADDING, header.hdr_size - IMAGE_HEADER_SIZE)
        elif phase is _Phase.PADDING:
            self._enter(_Phase.BODY, self._require_header().img_size)
        elif phase is _Phase.BODY:
            protected = self._require_header().protect_tlv_size
            if protected:
                self._enter(_Phase.PROTECTED, protected)
            else:
                self._finalize_hashes()
                self._enter(_Phase.INFO, TLV_INFO_SIZE)
        elif phase is _Phase.PROTECTED:
            self._parse_protected(kept)
            self._finalize_hashes()
            self._enter(_Phase.INFO, TLV_INFO_SIZE)
        elif phase is _Phase.INFO:
            magic, total = _U16X2.unpack(kept)
            # tlv.c bootutil_tlv_iter_begin: a protected area the header does not announce fails.
            if magic != TLV_INFO_MAGIC or total < TLV_INFO_SIZE:
                raise _RejectError(Reason.BAD_TLV_INFO)
            if total > self._max_tlv_area:
                raise _RejectError(Reason.TLV_AREA_TOO_LARGE)
            self._enter(_Phase.UNPROTECTED, total - TLV_INFO_SIZE)
        elif phase is _Phase.UNPROTECTED:
            self._parse_unprotected(kept)
            self._enter(_Phase.DONE, 0)

    def _require_header(self) -> ImageHeader:
        if self._header is None:  # unreachable: the header phase comes first
            raise _RejectError(Reason.BAD_HEADER)
        return self._header

    def _parse_header(self, raw: bytes) -> ImageHeader:
        magic, load, hdr_size, prot, img_size, flags, *version, _pad = _HEADER.unpack(raw)
        if magic != IMAGE_MAGIC:
            raise _RejectError(Reason.BAD_MAGIC)
        header = ImageHeader(load, hdr_size, prot, img_size, flags, ImageVersion(*version))
        self._header = header
        if hdr_size < IMAGE_HEADER_SIZE or hdr_size + img_size + prot > _U32_MAX:
            raise _RejectError(Reason.BAD_HEADER)
        if flags & (ImageFlag.ENCRYPTED_AES128 | ImageFlag.ENCRYPTED_AES256):
            raise _RejectError(Reason.UNSUPPORTED_IMAGE)
        if prot and prot < TLV_INFO_SIZE:
            raise _RejectError(Reason.BAD_TLV_INFO)
        if prot > self._max_tlv_area:
            raise _RejectError(Reason.TLV_AREA_TOO_LARGE)
        return header

    def _parse_protected(self, area: bytes) -> None:
        magic, total = _U16X2.unpack_from(area)
        if magic != TLV_PROT_INFO_MAGIC or total != len(area):
            raise _RejectError(Reason.BAD_TLV_INFO)
        for kind, value in _tlvs(area, TLV_INFO_SIZE):
            if kind == TlvType.SEC_CNT:
                if len(value) != _U32.size or self._security_counter is not None:
                    raise _RejectError(Reason.BAD_SECURITY_COUNTER)
                (self._security_counter,) = _U32.unpack(value)
            elif kind in _NOT_PROTECTED:
                raise _RejectError(Reason.UNEXPECTED_TLV)

    def _parse_unprotected(self, body: bytes) -> None:
        tlvs = _tlvs(body, 0)
        for kind, _ in tlvs:
            if kind == TlvType.SEC_CNT:
                raise _RejectError(Reason.SECURITY_COUNTER_UNPROTECTED)
            if kind not in _UNPROTECTED_ALLOWED:
                raise _RejectError(Reason.UNEXPECTED_TLV)
        self._unprotected, self._unprotected_size = tlvs, len(body)

    def _finalize_hashes(self) -> None:
        self._digests = {alg: h.finalize() for alg, h in self._hashers.items()}
        self._hashers = {}

    # -- decision -------------------------------------------------------------------------------
    def finish(self, floor: int) -> ImageVerdict:
        """The verdict; the image's security counter must be at least ``floor``."""
        hash_alg: HashAlg | None = None
        image_hash: bytes | None = None
        reason = self._error
        if reason is None and self._phase is not _Phase.DONE:
            reason = Reason.TRUNCATED
        if reason is None:
            try:
                hash_alg, image_hash = self._check_hash()
                self._check_signatures(hash_alg, image_hash)
            except _RejectError as failure:
                reason = failure.reason
        counter = None
        if self._header is not None and self._phase in (
            _Phase.INFO,
            _Phase.UNPROTECTED,
            _Phase.DONE,
        ):
            counter = self._security_counter or 0
        if reason is None and (counter or 0) < floor:
            reason = Reason.ROLLBACK
        reason = reason or Reason.OK
        version = None if self._header is None else self._header.version
        return ImageVerdict(reason is Reason.OK, reason, version, counter, hash_alg, image_hash)

    def _check_hash(self) -> tuple[HashAlg, bytes]:
        found = [(kind, v) for kind, v in self._unprotected if kind in _HASH_TLVS]
        if not found:
            raise _RejectError(Reason.NO_HASH)
        if len(found) > 1:
            raise _RejectError(Reason.UNSUPPORTED_HASH)
        kind, value = found[0]
        alg = _HASH_TLVS[TlvType(kind)]
        digest = self._digests.get(alg)
        if digest is None:
            raise _RejectError(Reason.UNSUPPORTED_HASH)
        if len(value) != alg.digest_size:
            raise _RejectError(Reason.MALFORMED_TLV)
        if not hmac.compare_digest(digest, value):
            raise _RejectError(Reason.HASH_MISMATCH)
        return alg, digest

    def _check_signatures(self, alg: HashAlg, digest: bytes) -> None:
        # image_validate.c: KEYHASH selects a key (or none); the next signature uses it, resets it.
        key: TrustedKey | None = None
        keyhash_seen = unknown_key = unkeyed = bad = False
        verified = 0
        for kind, value in self._unprotected:
            if kind == TlvType.KEYHASH:
                keyhash_seen = True
                key = next((k for k in self._keys if k.matches_keyhash(alg, value)), None)
                unknown_key = unknown_key or key is None
            elif kind in _SIG_TLVS:
                if key is None:
                    unkeyed = unkeyed or not keyhash_seen
                elif kind == key.sig_tlv and key.hash_alg is alg:
                    if key.verify_digest(value, digest, alg):
                        verified += 1
                    else:
                        bad = True
                else:
                    bad = True  # a trusted key named, the wrong signature type or hash
                key, keyhash_seen = None, False
        if bad:
            raise _RejectError(Reason.BAD_SIGNATURE)
        if not verified:
            if unknown_key:
                raise _RejectError(Reason.UNKNOWN_KEY)
            raise _RejectError(Reason.MISSING_KEYHASH if unkeyed else Reason.NO_SIGNATURE)
