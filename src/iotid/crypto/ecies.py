"""Hybrid encryption to an identity public key: ECIES for EC keys, RSA-OAEP + AES-GCM for RSA.

Scope: the byte formats and the key schedule, as glue over ``cryptography`` (ECDH, HKDF, AES-GCM,
RSA-OAEP all come from it). The fleet encrypts with :func:`encrypt_for`; the card decrypts in two
halves so that the private-key operation stays in its key store: it parses the blob, runs ECDH
(or OAEP unwrapping) with the slot, then hands the result to
:func:`ecies_decrypt_with_shared_secret` (or :func:`rsa_hybrid_decrypt_with_content_key`).

ECIES (suites 0x01 P-256, 0x02 P-384; in the spirit of SEC 1 v2 §5.1, with an AEAD)::

    blob   = suite (1) || R (X9.62 uncompressed, 65 or 97 bytes) || nonce (12) || ct || tag (16)
    Z      = ECDH(r, recipient) x-coordinate               (SEC 1 v2 §3.3.1, as cryptography does)
    fpr    = SHA-256(recipient SubjectPublicKeyInfo DER)
    info   = b"iotid-ecies-v1" || R || fpr
    K      = HKDF-SHA256(IKM=Z, salt=absent (RFC 5869 §2.2: 32 zero bytes), info, L=32)
    ct||tag = AES-256-GCM(K, nonce (random), plaintext, associated data = aad)

The ephemeral key is fresh per message; the nonce is random and carried in the blob. The curve
of R must be the recipient's (the suite byte names it, so a blob parses without the key).

RSA hybrid (suite 0x03)::

    blob = 0x03 || len(W) (u16 big endian) || W || nonce (12) || ct || tag (16)
    W    = RSA-OAEP(recipient, K) with SHA-256, MGF1-SHA-256, no label (RFC 8017 §7.1)
    K    = 32 random bytes; ct||tag = AES-256-GCM(K, nonce, plaintext, associated data = aad)

Every parse or authentication failure raises :class:`EciesError` (a ``ValueError``) whose
message never carries key, plaintext or ciphertext bytes.

Not covered: key storage and the private-key operations on the card (``iotid.se``), which key
(epoch) a blob is for (the caller says so), streaming of large plaintexts. This package imports
nothing else from ``iotid``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "INFO_LABEL",
    "KEY_LEN",
    "NONCE_LEN",
    "SUITE_ECIES_P256",
    "SUITE_ECIES_P384",
    "SUITE_RSA_OAEP_HYBRID",
    "TAG_LEN",
    "EciesBlob",
    "EciesError",
    "RsaHybridBlob",
    "blob_suite",
    "ecies_decrypt",
    "ecies_decrypt_with_shared_secret",
    "ecies_encrypt",
    "ecies_encrypt_with_ephemeral",
    "ecies_kdf_info",
    "ecies_parse",
    "encrypt_for",
    "recipient_fingerprint",
    "rsa_hybrid_decrypt",
    "rsa_hybrid_decrypt_with_content_key",
    "rsa_hybrid_encrypt",
    "rsa_hybrid_parse",
]

#: Suite byte (first byte of every blob).
SUITE_ECIES_P256 = 0x01
SUITE_ECIES_P384 = 0x02
SUITE_RSA_OAEP_HYBRID = 0x03
#: HKDF info prefix (names the whole ECIES construction and its version).
INFO_LABEL = b"iotid-ecies-v1"
KEY_LEN = 32  # AES-256
NONCE_LEN = 12  # NIST SP 800-38D §8.2: 96-bit IV
TAG_LEN = 16

_UNCOMPRESSED = 0x04  # SEC 1 v2 §2.3.3
_SUITE_CURVES: dict[int, ec.EllipticCurve] = {
    SUITE_ECIES_P256: ec.SECP256R1(),
    SUITE_ECIES_P384: ec.SECP384R1(),
}
_CURVE_SUITES = {curve.name: suite for suite, curve in _SUITE_CURVES.items()}
_WRAP_LEN_BYTES = 2


class EciesError(ValueError):
    """A blob is malformed, for another curve or suite, or fails authentication."""


def _point_len(curve: ec.EllipticCurve) -> int:
    return 1 + 2 * ((curve.key_size + 7) // 8)


@dataclass(frozen=True)
class EciesBlob:
    """A parsed ECIES blob (its ``repr`` shows lengths, never bytes)."""

    suite: int
    ephemeral_point: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)  # ct || tag

    def __repr__(self) -> str:
        return f"EciesBlob(suite=0x{self.suite:02x}, ciphertext=<{len(self.ciphertext)} bytes>)"

    @property
    def curve(self) -> ec.EllipticCurve:
        return _SUITE_CURVES[self.suite]

    def ephemeral_public_key(self) -> ec.EllipticCurvePublicKey:
        """R as a key object (validated on the curve by :func:`ecies_parse` already)."""
        return ec.EllipticCurvePublicKey.from_encoded_point(self.curve, self.ephemeral_point)


@dataclass(frozen=True)
class RsaHybridBlob:
    """A parsed RSA-OAEP hybrid blob (its ``repr`` shows lengths, never bytes)."""

    wrapped_key: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)  # ct || tag

    def __repr__(self) -> str:
        return (
            f"RsaHybridBlob(wrapped_key=<{len(self.wrapped_key)} bytes>, "
            f"ciphertext=<{len(self.ciphertext)} bytes>)"
        )


# -- shared pieces --------------------------------------------------------------------------------
def recipient_fingerprint(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    """SHA-256 of the key's SubjectPublicKeyInfo DER (RFC 5280 §4.1.2.7)."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize()


def ecies_kdf_info(ephemeral_point: bytes, recipient: ec.EllipticCurvePublicKey) -> bytes:
    """HKDF info: ``b"iotid-ecies-v1" || R || SHA-256(recipient SPKI DER)``."""
    return INFO_LABEL + ephemeral_point + recipient_fingerprint(recipient)


def _seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise EciesError("authentication failed") from None


def blob_suite(blob: bytes) -> int:
    """The suite byte of a blob (EciesError if the blob is empty or the suite unknown)."""
    if not blob:
        raise EciesError("empty blob")
    if blob[0] not in (*_SUITE_CURVES, SUITE_RSA_OAEP_HYBRID):
        raise EciesError(f"unknown suite 0x{blob[0]:02x}")
    return blob[0]


# -- ECIES ----------------------------------------------------------------------------------------
def _ecies_key(
    shared: bytes, ephemeral_point: bytes, recipient: ec.EllipticCurvePublicKey
) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_LEN,
        salt=None,
        info=ecies_kdf_info(ephemeral_point, recipient),
    )
    return hkdf.derive(shared)


def ecies_encrypt_with_ephemeral(
    recipient: ec.EllipticCurvePublicKey,
    plaintext: bytes,
    aad: bytes = b"",
    *,
    ephemeral: ec.EllipticCurvePrivateKey,
    nonce: bytes,
) -> bytes:
    """ECIES with a caller-chosen ephemeral key and nonce: for known-answer tests ONLY.

    Reusing an ephemeral key or nonce across messages destroys confidentiality; use
    :func:`ecies_encrypt`.
    """
    suite = _CURVE_SUITES.get(recipient.curve.name)
    if suite is None:
        raise EciesError("only P-256 and P-384 recipients")
    if ephemeral.curve.name != recipient.curve.name:
        raise EciesError("ephemeral key is on another curve")
    if len(nonce) != NONCE_LEN:
        raise EciesError(f"nonce must be {NONCE_LEN} bytes")
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    shared = ephemeral.exchange(ec.ECDH(), recipient)
    key = _ecies_key(shared, point, recipient)
    return bytes([suite]) + point + nonce + _seal(key, nonce, plaintext, aad)


def ecies_encrypt(
    recipient: ec.EllipticCurvePublicKey, plaintext: bytes, aad: bytes = b""
) -> bytes:
    """Encrypt ``plaintext`` to an EC public key (P-256 or P-384) with a fresh ephemeral key."""
    if recipient.curve.name not in _CURVE_SUITES:
        raise EciesError("only P-256 and P-384 recipients")
    ephemeral = ec.generate_private_key(recipient.curve)
    return ecies_encrypt_with_ephemeral(
        recipient, plaintext, aad, ephemeral=ephemeral, nonce=os.urandom(NONCE_LEN)
    )


def ecies_parse(blob: bytes) -> EciesBlob:
    """Split an ECIES blob and check R is a point of the suite's curve (SEC 1 v2 §3.2.2.1)."""
    suite = blob_suite(blob)
    if suite not in _SUITE_CURVES:
        raise EciesError("not an ECIES blob")
    curve = _SUITE_CURVES[suite]
    plen = _point_len(curve)
    if len(blob) < 1 + plen + NONCE_LEN + TAG_LEN:
        raise EciesError("blob too short")
    point = blob[1 : 1 + plen]
    if point[0] != _UNCOMPRESSED:
        raise EciesError("ephemeral point is not X9.62 uncompressed")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError:
        raise EciesError("ephemeral point is not on the curve") from None
    nonce = blob[1 + plen : 1 + plen + NONCE_LEN]
    return EciesBlob(suite, point, nonce, blob[1 + plen + NONCE_LEN :])


def ecies_decrypt_with_shared_secret(
    shared: bytes,
    parsed: EciesBlob,
    aad: bytes = b"",
    *,
    recipient: ec.EllipticCurvePublicKey,
) -> bytes:
    """Second half of decryption: ``shared`` is ECDH(recipient private key, R), computed by the
    key's holder. ``recipient`` (the public key) feeds the KDF info."""
    if recipient.curve.name != parsed.curve.name:
        raise EciesError("blob is for another curve")
    if len(shared) != (parsed.curve.key_size + 7) // 8:
        raise EciesError("shared secret has the wrong length")
    key = _ecies_key(shared, parsed.ephemeral_point, recipient)
    return _open(key, parsed.nonce, parsed.ciphertext, aad)


def ecies_decrypt(private: ec.EllipticCurvePrivateKey, blob: bytes, aad: bytes = b"") -> bytes:
    """Whole decryption with a software key (the card splits it; see the module docstring)."""
    parsed = ecies_parse(blob)
    if private.curve.name != parsed.curve.name:
        raise EciesError("blob is for another curve")
    shared = private.exchange(ec.ECDH(), parsed.ephemeral_public_key())
    return ecies_decrypt_with_shared_secret(shared, parsed, aad, recipient=private.public_key())


# -- RSA-OAEP hybrid ------------------------------------------------------------------------------
def _oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def rsa_hybrid_encrypt(recipient: rsa.RSAPublicKey, plaintext: bytes, aad: bytes = b"") -> bytes:
    """Encrypt to an RSA public key: a random AES-256 key wrapped with RSA-OAEP-SHA256."""
    content_key = os.urandom(KEY_LEN)
    nonce = os.urandom(NONCE_LEN)
    wrapped = recipient.encrypt(content_key, _oaep())
    return (
        bytes([SUITE_RSA_OAEP_HYBRID])
        + len(wrapped).to_bytes(_WRAP_LEN_BYTES, "big")
        + wrapped
        + nonce
        + _seal(content_key, nonce, plaintext, aad)
    )


def rsa_hybrid_parse(blob: bytes) -> RsaHybridBlob:
    """Split an RSA hybrid blob (the wrapped key's length is checked against the key later)."""
    if blob_suite(blob) != SUITE_RSA_OAEP_HYBRID:
        raise EciesError("not an RSA hybrid blob")
    head = 1 + _WRAP_LEN_BYTES
    if len(blob) < head:
        raise EciesError("blob too short")
    wlen = int.from_bytes(blob[1:head], "big")
    if wlen == 0 or len(blob) < head + wlen + NONCE_LEN + TAG_LEN:
        raise EciesError("blob too short")
    wrapped = blob[head : head + wlen]
    nonce = blob[head + wlen : head + wlen + NONCE_LEN]
    return RsaHybridBlob(wrapped, nonce, blob[head + wlen + NONCE_LEN :])


def rsa_hybrid_decrypt_with_content_key(
    content_key: bytes, parsed: RsaHybridBlob, aad: bytes = b""
) -> bytes:
    """Second half of decryption: ``content_key`` is the OAEP-unwrapped key (the card's job)."""
    if len(content_key) != KEY_LEN:
        raise EciesError("unwrapped key has the wrong length")
    return _open(content_key, parsed.nonce, parsed.ciphertext, aad)


def rsa_hybrid_decrypt(private: rsa.RSAPrivateKey, blob: bytes, aad: bytes = b"") -> bytes:
    """Whole decryption with a software key."""
    parsed = rsa_hybrid_parse(blob)
    if len(parsed.wrapped_key) != (private.key_size + 7) // 8:
        raise EciesError("wrapped key does not match the key size")
    try:
        content_key = private.decrypt(parsed.wrapped_key, _oaep())
    except ValueError:
        raise EciesError("authentication failed") from None
    return rsa_hybrid_decrypt_with_content_key(content_key, parsed, aad)


# -- dispatch -------------------------------------------------------------------------------------
def encrypt_for(
    recipient: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, plaintext: bytes, aad: bytes = b""
) -> bytes:
    """ECIES for an EC recipient, the RSA-OAEP hybrid for an RSA one."""
    if isinstance(recipient, ec.EllipticCurvePublicKey):
        return ecies_encrypt(recipient, plaintext, aad)
    return rsa_hybrid_encrypt(recipient, plaintext, aad)
