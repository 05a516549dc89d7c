"""COSE_Sign1 and COSE_Key glue over ``cbor2`` and ``cryptography`` (RFC 9052, RFC 9053, RFC 8230).

Scope, all in this one place:

- building a COSE_Sign1 (RFC 9052 §4.2, CBOR tag 18) from a protected header map, a payload and
  a signer callback that receives the ToBeSigned bytes, i.e. the CBOR-encoded Sig_structure
  ``["Signature1", protected bstr, external_aad, payload]`` (RFC 9052 §4.4);
- the algorithms we use: ES256 (-7), ES384 (-35) (RFC 9053 §2.1: raw ``r || s``, each integer
  left-padded to the curve's size, *not* DER) and PS256 (-37) (RFC 8230 §2: RSASSA-PSS with
  SHA-256, MGF1-SHA-256, salt length 32);
- conversion of DER ECDSA signatures (what ``cryptography`` and the card's key store produce) to
  the raw COSE form and back, with ``cryptography``'s ``decode_dss_signature``;
- COSE_Key encoding of EC2 (RFC 9053 §7.1.1: kty 2, crv 1/2, x, y) and RSA (RFC 8230 §4:
  kty 3, n, e) public keys, and the way back to a ``cryptography`` key;
- a strict decoder (one CBOR item, no trailing bytes, no duplicate map keys, RFC 9052 §3 shape
  checks) and a verifier, for tests and the fleet's attestation verifier.

Every primitive comes from ``cryptography``; this module only arranges bytes. It imports nothing
else from ``iotid``. Not covered: COSE_Sign (multi-signer), MAC, encryption, counter signatures,
detached payloads, certificate path validation (``cryptography.x509.verification``), and what
the payload means (EAT claims: ``iotid.spec.attestation``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, unique
from typing import Any

import cbor2
from cbor2._decoder import CBORDecoder as _PyDecoder  # pure-Python decoder (5.x)
from cbor2._types import CBORError as _PyCborError
from cbor2._types import CBORTag as _PyTag
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = [
    "SIGN1_TAG",
    "CoseAlg",
    "CoseError",
    "CoseKeyLabel",
    "Ec2Label",
    "HeaderLabel",
    "PublicKey",
    "RsaLabel",
    "Sign1",
    "Signer",
    "alg_for_public_key",
    "cose_key",
    "cose_signature",
    "decode_cbor",
    "decode_sign1",
    "ecdsa_der_to_raw",
    "ecdsa_raw_to_der",
    "encode_protected",
    "public_key_from_cose_key",
    "sig_structure",
    "sign1",
    "verify_sign1",
    "verify_signature",
]

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
#: ``signer(to_be_signed) -> signature`` in COSE form (ECDSA: raw ``r || s``; convert a DER
#: signature with :func:`cose_signature`).
Signer = Callable[[bytes], bytes]

#: CBOR tag of a COSE_Sign1 message (RFC 9052 §2, Table 1).
SIGN1_TAG = 18
_SIGNATURE1 = "Signature1"  # RFC 9052 §4.4, context of a COSE_Sign1
_PSS_SALT = 32  # RFC 8230 §2: the salt length equals the hash length (SHA-256)


class CoseError(ValueError):
    """Malformed COSE structure, or an algorithm that does not fit the key."""


@unique
class HeaderLabel(IntEnum):
    """Common header parameters (RFC 9052 §3.1; x5chain: RFC 9360 §2)."""

    ALG = 1
    CRIT = 2
    CONTENT_TYPE = 3
    KID = 4
    X5CHAIN = 33


@unique
class CoseKeyLabel(IntEnum):
    """COSE_Key common parameters (RFC 9052 §7.1)."""

    KTY = 1
    KID = 2
    ALG = 3


@unique
class Ec2Label(IntEnum):
    """EC2 key type parameters (RFC 9053 §7.1.1)."""

    CRV = -1
    X = -2
    Y = -3


@unique
class RsaLabel(IntEnum):
    """RSA key type parameters (RFC 8230 §4)."""

    N = -1
    E = -2


_KTY_EC2 = 2  # RFC 9053 §7.1
_KTY_RSA = 3  # RFC 8230 §4
_CRV_P256 = 1  # RFC 9053 §7.1, Table 18
_CRV_P384 = 2


@unique
class CoseAlg(IntEnum):
    """Signature algorithms (IANA COSE Algorithms registry)."""

    ES256 = -7  # RFC 9053 §2.1
    ES384 = -35
    PS256 = -37  # RFC 8230 §2

    @property
    def hash_name(self) -> str:
        return "sha384" if self is CoseAlg.ES384 else "sha256"

    @property
    def is_ecdsa(self) -> bool:
        return self is not CoseAlg.PS256

    @property
    def coordinate_size(self) -> int:
        """Bytes per integer in a raw ECDSA signature (RFC 9053 §2.1); 0 for PS256."""
        return {CoseAlg.ES256: 32, CoseAlg.ES384: 48}.get(self, 0)

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return hashes.SHA384() if self is CoseAlg.ES384 else hashes.SHA256()


def alg_for_public_key(key: PublicKey) -> CoseAlg:
    """ES256 for P-256, ES384 for P-384, PS256 for RSA (any supported size)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        table = {"secp256r1": CoseAlg.ES256, "secp384r1": CoseAlg.ES384}
        alg = table.get(key.curve.name)
        if alg is None:
            raise CoseError(f"no COSE signature algorithm for curve {key.curve.name}")
        return alg
    return CoseAlg.PS256


# -- ECDSA signature encodings -----------------------------------------------------------------
def ecdsa_der_to_raw(der: bytes, size: int) -> bytes:
    """DER ``ECDSA-Sig-Value`` -> ``I2OSP(r, size) || I2OSP(s, size)`` (RFC 9053 §2.1)."""
    try:
        r, s = decode_dss_signature(der)
    except ValueError:
        raise CoseError("not a DER ECDSA signature") from None
    if r.bit_length() > 8 * size or s.bit_length() > 8 * size:
        raise CoseError("ECDSA signature integer longer than the curve size")
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def ecdsa_raw_to_der(raw: bytes) -> bytes:
    """``r || s`` (two halves of equal length) -> DER ``ECDSA-Sig-Value``."""
    if not raw or len(raw) % 2:
        raise CoseError("a raw ECDSA signature has two halves of equal length")
    half = len(raw) // 2
    return encode_dss_signature(
        int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    )


def cose_signature(alg: CoseAlg, signature: bytes) -> bytes:
    """The signature as COSE carries it: ECDSA DER becomes raw ``r || s``; PSS is unchanged."""
    if alg.is_ecdsa:
        return ecdsa_der_to_raw(signature, alg.coordinate_size)
    return signature


# -- building ----------------------------------------------------------------------------------
def _dumps(value: Any) -> bytes:
    # RFC 8949 §4.2.1 core deterministic encoding: the same claims always give the same bytes.
    return cbor2.dumps(value, canonical=True)


def encode_protected(header: Mapping[int, Any]) -> bytes:
    """The protected header bstr contents: empty map -> zero-length string (RFC 9052 §3)."""
    return _dumps(dict(header)) if header else b""


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """ToBeSigned of a COSE_Sign1 (RFC 9052 §4.4): the encoded Sig_structure array."""
    return _dumps([_SIGNATURE1, protected, external_aad, payload])


def sign1(
    protected: Mapping[int, Any],
    payload: bytes,
    signer: Signer,
    *,
    unprotected: Mapping[int, Any] | None = None,
    external_aad: bytes = b"",
    tagged: bool = True,
) -> bytes:
    """Build a COSE_Sign1 (RFC 9052 §4.2).

    ``protected`` must carry the algorithm (label 1, a :class:`CoseAlg`); ``signer`` gets the
    ToBeSigned bytes and returns the signature in COSE form (see :func:`cose_signature`).
    """
    alg = _alg_of(protected)
    protected_bytes = encode_protected(protected)
    tbs = sig_structure(protected_bytes, payload, external_aad)
    signature = signer(tbs)
    if alg.is_ecdsa and len(signature) != 2 * alg.coordinate_size:
        raise CoseError(f"{alg.name} signatures are {2 * alg.coordinate_size} bytes (raw r || s)")
    body = [protected_bytes, dict(unprotected or {}), payload, signature]
    return _dumps(cbor2.CBORTag(SIGN1_TAG, body) if tagged else body)


def _alg_of(header: Mapping[int, Any]) -> CoseAlg:
    value = header.get(HeaderLabel.ALG)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CoseError("the protected header carries no integer algorithm (label 1)")
    try:
        return CoseAlg(value)
    except ValueError:
        raise CoseError(f"unsupported COSE algorithm {value}") from None


# -- COSE_Key ----------------------------------------------------------------------------------
def _unsigned(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def cose_key(key: PublicKey) -> dict[int, Any]:
    """A public key as a COSE_Key map (EC2 with fixed-length coordinates, or RSA)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = {"secp256r1": _CRV_P256, "secp384r1": _CRV_P384}.get(key.curve.name)
        if crv is None:
            raise CoseError(f"no COSE curve for {key.curve.name}")
        size = (key.curve.key_size + 7) // 8
        numbers = key.public_numbers()
        # RFC 9053 §7.1.1: x and y keep their leading zero octets.
        return {
            CoseKeyLabel.KTY: _KTY_EC2,
            Ec2Label.CRV: crv,
            Ec2Label.X: numbers.x.to_bytes(size, "big"),
            Ec2Label.Y: numbers.y.to_bytes(size, "big"),
        }
    rsa_numbers = key.public_numbers()
    # RFC 8230 §4: n and e as unsigned big-endian byte strings without leading zeros.
    return {
        CoseKeyLabel.KTY: _KTY_RSA,
        RsaLabel.N: _unsigned(rsa_numbers.n),
        RsaLabel.E: _unsigned(rsa_numbers.e),
    }


def public_key_from_cose_key(mapping: Mapping[Any, Any]) -> PublicKey:
    """The ``cryptography`` public key of an EC2 (P-256/P-384) or RSA COSE_Key; CoseError else."""
    kty = mapping.get(CoseKeyLabel.KTY)
    try:
        if kty == _KTY_EC2:
            curves: dict[Any, ec.EllipticCurve] = {
                _CRV_P256: ec.SECP256R1(),
                _CRV_P384: ec.SECP384R1(),
            }
            curve = curves.get(mapping.get(Ec2Label.CRV))
            x, y = mapping.get(Ec2Label.X), mapping.get(Ec2Label.Y)
            if curve is None or not isinstance(x, bytes) or not isinstance(y, bytes):
                raise CoseError("EC2 COSE_Key needs crv 1 or 2 and bstr x, y")
            size = (curve.key_size + 7) // 8
            if len(x) != size or len(y) != size:
                raise CoseError("EC2 coordinates must have the curve's length")
            return ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            ).public_key()
        if kty == _KTY_RSA:
            n, e = mapping.get(RsaLabel.N), mapping.get(RsaLabel.E)
            if not isinstance(n, bytes) or not isinstance(e, bytes) or not n or not e:
                raise CoseError("RSA COSE_Key needs bstr n and e")
            return rsa.RSAPublicNumbers(
                int.from_bytes(e, "big"), int.from_bytes(n, "big")
            ).public_key()
    except CoseError:
        raise
    except ValueError:
        raise CoseError("COSE_Key does not describe a valid public key") from None
    raise CoseError(f"unsupported COSE_Key type {kty!r}")


# -- decoding and verifying --------------------------------------------------------------------
@dataclass(frozen=True)
class Sign1:
    """A decoded COSE_Sign1: the protected header both as bytes (what was signed) and as a map."""

    protected_bytes: bytes
    protected: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes = field(repr=False)
    tagged: bool = True

    @property
    def alg(self) -> CoseAlg:
        return _alg_of(self.protected)

    def to_be_signed(self, external_aad: bytes = b"") -> bytes:
        # RFC 9052 §4.4: with no protected attributes, the Sig_structure carries a zero-length
        # bstr, even when the message encoded the empty map as h'A0'.
        protected = self.protected_bytes if self.protected else b""
        return sig_structure(protected, self.payload, external_aad)


#: cbor2 5.x: the C and the pure-Python decoders have distinct tag classes.
_TAG_TYPES = (cbor2.CBORTag, _PyTag)


class _StrictDecoder5(_PyDecoder):
    """cbor2 5.x has no ``allow_duplicate_keys``: count each map's entries against its declared
    length, and refuse indefinite-length maps (not deterministic encoding, RFC 8949 section 4.2).
    Every nested item is decoded through :meth:`decode`, so the check reaches every map."""

    def decode(self, immutable: bool = False, unshared: bool = False) -> Any:
        start = self.fp.tell()
        initial = self.fp.read(1)
        self.fp.seek(start)
        if not initial or initial[0] >> 5 != 5:  # major type 5: map
            return super().decode(immutable, unshared)
        self.fp.seek(start + 1)
        declared = self._decode_length(initial[0] & 31, allow_indefinite=True)
        self.fp.seek(start)
        if declared is None:
            raise ValueError("indefinite-length map")
        result = super().decode(immutable, unshared)
        if len(result) != declared:
            raise ValueError("duplicate map key")
        return result


def _strict_decoder(fp: io.BytesIO) -> Any:
    try:  # cbor2 >= 6
        return cbor2.CBORDecoder(fp, allow_duplicate_keys=False, max_depth=32)  # type: ignore[call-arg]
    except TypeError:
        return _StrictDecoder5(fp)


def decode_cbor(data: bytes) -> Any:
    """Exactly one CBOR data item, duplicate map keys refused (RFC 9052 §3: no duplicate labels;
    RFC 8392 §7.2: a CWT with duplicate claim keys is invalid). CoseError if malformed."""
    fp = io.BytesIO(data)
    try:
        item = _strict_decoder(fp).decode()
    except (cbor2.CBORError, _PyCborError, EOFError, ValueError, TypeError, RecursionError):
        raise CoseError("not well-formed CBOR") from None
    if fp.tell() != len(data):
        raise CoseError("trailing bytes after the CBOR item")
    return item


def decode_sign1(data: bytes, *, require_tag: bool = False) -> Sign1:
    """Parse a COSE_Sign1 (tagged 18 or untagged). Structure only: no signature check."""
    item = decode_cbor(data)
    tagged = isinstance(item, _TAG_TYPES)
    if isinstance(item, _TAG_TYPES):
        if item.tag != SIGN1_TAG:
            raise CoseError(f"CBOR tag {item.tag} is not COSE_Sign1 ({SIGN1_TAG})")
        item = item.value
    elif require_tag:
        raise CoseError("a tagged COSE_Sign1 was expected")
    if not isinstance(item, (list, tuple)) or len(item) != 4:
        raise CoseError("COSE_Sign1 is an array of four elements")
    protected_bytes, unprotected, payload, signature = item
    if not isinstance(protected_bytes, bytes):
        raise CoseError("the protected header is a byte string")
    protected: Any = decode_cbor(protected_bytes) if protected_bytes else {}
    if not isinstance(protected, Mapping):
        raise CoseError("the protected header does not encode a map")
    if not isinstance(unprotected, Mapping):
        raise CoseError("the unprotected header is a map")
    if set(protected) & set(unprotected):
        raise CoseError("a label appears in both headers")  # RFC 9052 §3
    if not isinstance(payload, bytes):
        raise CoseError("the payload is an attached byte string")
    if not isinstance(signature, bytes):
        raise CoseError("the signature is a byte string")
    return Sign1(protected_bytes, dict(protected), dict(unprotected), payload, signature, tagged)


def verify_signature(alg: CoseAlg, key: PublicKey, to_be_signed: bytes, signature: bytes) -> bool:
    """Check a COSE signature over ToBeSigned bytes; CoseError if ``alg`` does not fit ``key``."""
    algorithm = alg.hash_algorithm()
    if alg.is_ecdsa:
        if not isinstance(key, ec.EllipticCurvePublicKey) or alg_for_public_key(key) is not alg:
            raise CoseError(f"{alg.name} needs an EC key on its own curve")
        if len(signature) != 2 * alg.coordinate_size:
            return False
        try:
            key.verify(ecdsa_raw_to_der(signature), to_be_signed, ec.ECDSA(algorithm))
        except InvalidSignature:
            return False
        return True
    if not isinstance(key, rsa.RSAPublicKey):
        raise CoseError(f"{alg.name} needs an RSA key")
    pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=_PSS_SALT)
    try:
        key.verify(signature, to_be_signed, pss, algorithm)
    except InvalidSignature:
        return False
    return True


def verify_sign1(message: Sign1, key: PublicKey, *, external_aad: bytes = b"") -> bool:
    """True when ``message`` carries a valid signature by ``key`` under its protected algorithm.

    RFC 9052 §4.4 verification; the algorithm is read from the *protected* header only.
    Certificate paths, claims and freshness are the caller's business.
    """
    return verify_signature(message.alg, key, message.to_be_signed(external_aad), message.signature)
