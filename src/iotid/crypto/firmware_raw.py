"""Raw firmware images with a detached signature (DESIGN.md section 8).

Scope: :class:`RawVerifier`, an incremental verifier without I/O that hashes raw image bytes of
an announced length as they stream (SHA-256 or SHA-384 from ``cryptography``), keeps none of
them, and at ``finish`` checks the detached signature (ECDSA DER, or RSA-PSS MGF1 salt 32) over
:func:`~iotid.spec.firmware.raw_statement`, so that version and security counter are signed, not
just the image; and :func:`sign_raw_image`, which makes such a signature. The shared types
(:class:`~iotid.crypto.mcuboot.TrustedKey`, :class:`~iotid.crypto.mcuboot.ImageVerdict`, the hash
helpers) live in :mod:`iotid.crypto.mcuboot`, which also re-exports both names of this module.

Not covered: MCUboot images (:class:`~iotid.crypto.mcuboot.McubootVerifier`), APDUs and
persistence (``iotid.se.applets.firmware``), ED25519, SHA-512, the statement's encoding
(:mod:`iotid.spec.firmware`).
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from iotid.crypto.mcuboot import (
    _U32_MAX,
    ImageVerdict,
    PrivateKey,
    TrustedKey,
    _digest,
    _hash,
)
from iotid.spec.firmware import PSS_SALT_LEN, HashAlg, ImageVersion, Reason, raw_statement

__all__ = ["RawVerifier", "sign_raw_image"]


def sign_raw_image(
    private_key: PrivateKey,
    image: bytes,
    *,
    version: ImageVersion,
    security_counter: int,
    hash_alg: HashAlg = HashAlg.SHA256,
) -> bytes:
    """The detached signature of a raw image (ECDSA DER, or RSA-PSS MGF1 salt 32)."""
    message = raw_statement(
        hash_alg, len(image), version, security_counter, _digest(hash_alg, image)
    )
    h = _hash(hash_alg)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(message, ec.ECDSA(h))
    return private_key.sign(message, padding.PSS(padding.MGF1(h), PSS_SALT_LEN), h)


class RawVerifier:
    """Raw image of an announced length + detached signature over :func:`raw_statement`."""

    def __init__(
        self,
        keys: Sequence[TrustedKey],
        *,
        hash_alg: HashAlg,
        length: int,
        version: ImageVersion,
        security_counter: int,
    ) -> None:
        if not keys:
            raise ValueError("at least one trusted key")
        if not 0 <= length <= _U32_MAX or not 0 <= security_counter <= _U32_MAX:
            raise ValueError("length and security counter are u32")
        self._keys = tuple(keys)
        self._hash_alg = hash_alg
        self._hasher: hashes.Hash | None = hashes.Hash(_hash(hash_alg))
        self._length = length
        self._version = version
        self._security_counter = security_counter
        self._consumed = 0
        self._error: Reason | None = None

    def __repr__(self) -> str:
        return f"RawVerifier(consumed={self._consumed}, length={self._length})"

    @property
    def consumed(self) -> int:
        return self._consumed

    @property
    def buffered(self) -> int:
        return 0

    @property
    def peak_buffered(self) -> int:
        return 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        n = len(memoryview(data).cast("B"))
        self._consumed += n
        if self._hasher is None:
            return
        if self._consumed > self._length:
            self._error, self._hasher = Reason.TRAILING_DATA, None
            return
        self._hasher.update(data)

    def finish(self, signature: bytes, floor: int) -> ImageVerdict:
        reason = self._error
        image_hash = None
        if reason is None and self._consumed < self._length:
            reason = Reason.TRUNCATED
        if reason is None and self._hasher is not None:
            image_hash = self._hasher.finalize()
            self._hasher = None
            message = raw_statement(
                self._hash_alg, self._length, self._version, self._security_counter, image_hash
            )
            if not any(k.verify_message(signature, message, self._hash_alg) for k in self._keys):
                reason = Reason.BAD_SIGNATURE
            elif self._security_counter < floor:
                reason = Reason.ROLLBACK
        reason = reason or Reason.OK
        return ImageVerdict(
            reason is Reason.OK,
            reason,
            self._version,
            self._security_counter,
            self._hash_alg if image_hash is not None else None,
            image_hash,
        )
