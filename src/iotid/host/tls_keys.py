"""tlslite-ng key adapters whose private key stays in the secure element (DESIGN.md §7).

Scope: the :class:`DigestSigner` protocol (what the adapters need from the SE: the identity
public key and digest signatures); :class:`SeEcdsaKey` and :class:`SeRsaKey`, key objects for
tlslite-ng 0.8.2 that hold only the public key and hand every CertificateVerify signature to the
signer; :func:`tls_key`, which picks the right one; the PKCS#1 v1.5 DigestInfo handling
(RFC 8017 §9.2) tlslite's TLS 1.2 RSA path needs; and the TLS error types, defined here so that
this, the lowest TLS module, can raise them (:mod:`iotid.host.tls` re-exports all of it).

Not in scope: connecting, handshake settings and server chain verification
(:mod:`iotid.host.tls`), the optional ``cryptography`` backend for tlslite's AES-GCM and X25519
(:mod:`iotid.host.tls_backend`), the signatures themselves (the SE; tlslite re-verifies each one
with the public key right after it is made), the TLS protocol (tlslite-ng).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from tlslite.utils.python_ecdsakey import Python_ECDSAKey  # type: ignore[import-untyped]
from tlslite.utils.python_rsakey import Python_RSAKey  # type: ignore[import-untyped]

from iotid.host.errors import HostError

__all__ = [
    "DigestSigner",
    "PublicKey",
    "SeEcdsaKey",
    "SeRsaKey",
    "TlsError",
    "TlsHandshakeError",
    "TlsVerificationError",
    "tls_key",
]

_HASHES: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}
#: cryptography curve name -> (python-ecdsa curve name, the hash bound to it: RFC 8446 §4.2.3).
_CURVES = {"secp256r1": ("NIST256p", "sha256"), "secp384r1": ("NIST384p", "sha384")}
#: RFC 8017 §9.2 note 1: DER of DigestInfo up to the digest, for the hashes the SE signs with.
_DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
}


PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class TlsError(HostError):
    """A TLS connection could not be set up or used."""


class TlsHandshakeError(TlsError):
    """The handshake failed (peer alert, protocol error, refused signature, bus error)."""


class TlsVerificationError(TlsError):
    """The server's certificate chain did not validate; the connection has been closed."""


@runtime_checkable
class DigestSigner(Protocol):
    """What the adapter needs from the SE: the identity public key and digest signatures.

    ``hash_name`` is "sha256" or "sha384"; ``scheme`` is "ecdsa" (returns DER), "pss" (salt
    length = digest length, MGF1 with the same hash) or "pkcs1" (RSASSA-PKCS1-v1_5: the signer
    builds the DigestInfo and the padding itself).
    """

    def public_key(self) -> PublicKey: ...

    def sign_digest(self, digest: bytes, hash_name: str, scheme: str) -> bytes: ...


def _check_digest(digest: bytes, hash_name: str) -> None:
    algo = _HASHES.get(hash_name)
    if algo is None:
        raise TlsHandshakeError(f"the peer asked for a {hash_name} signature; SE signs sha256/384")
    if len(digest) != algo.digest_size:
        raise TlsHandshakeError(f"{hash_name} digest of the wrong length ({len(digest)} bytes)")


class _CurveOnly:
    """Stand-in for tlslite's ``private_key``: its TLS 1.2 path reads ``.curve.baselen``."""

    def __init__(self, curve: Any) -> None:
        self.curve = curve

    def __repr__(self) -> str:
        return "<private key held by the secure element>"


class SeEcdsaKey(Python_ECDSAKey):  # type: ignore[misc]
    """ECDSA key for tlslite whose private half stays in the SE (DESIGN.md §7)."""

    def __init__(self, signer: DigestSigner, public_key: PublicKey | None = None) -> None:
        pub = public_key if public_key is not None else signer.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name not in _CURVES:
            raise ValueError("SeEcdsaKey needs a P-256 or P-384 public key")
        numbers = pub.public_numbers()
        curve_name, self.hash_name = _CURVES[pub.curve.name]
        super().__init__(numbers.x, numbers.y, curve_name)
        self.signer = signer
        self._pub = pub
        self.private_key = _CurveOnly(self.public_key.curve)

    def __repr__(self) -> str:
        return f"SeEcdsaKey({self.curve_name}, private key in the SE)"

    def hasPrivateKey(self) -> bool:  # noqa: N802 - tlslite's API
        return True

    def _verify(self, signature: bytes | bytearray, hash_bytes: bytes | bytearray) -> bool:
        # tlslite re-checks each signature right after _sign: do it with cryptography, not
        # python-ecdsa (same answer, ~50x faster). The digest always has the curve hash's size.
        algo = _HASHES[self.hash_name]
        if len(hash_bytes) != algo.digest_size:
            return bool(super()._verify(signature, hash_bytes))
        try:
            self._pub.verify(bytes(signature), bytes(hash_bytes), ec.ECDSA(Prehashed(algo)))
        except InvalidSignature:
            return False
        return True

    def _sign(self, data: bytes | bytearray, hAlg: str) -> bytearray:  # noqa: N803
        digest = bytes(data)
        _check_digest(digest, hAlg)
        return bytearray(self.signer.sign_digest(digest, hAlg, "ecdsa"))

    def _hashAndSign(self, data: bytes | bytearray, hAlg: str) -> bytearray:  # noqa: N802, N803
        algo = _HASHES.get(hAlg)
        if algo is None:
            raise TlsHandshakeError(f"the peer asked for a {hAlg} signature; SE signs sha256/384")
        h = hashes.Hash(algo)
        h.update(bytes(data))
        return self._sign(h.finalize(), hAlg)


class SeRsaKey(Python_RSAKey):  # type: ignore[misc]
    """RSA key for tlslite whose private half stays in the SE (DESIGN.md §7)."""

    def __init__(self, signer: DigestSigner, public_key: PublicKey | None = None) -> None:
        pub = public_key if public_key is not None else signer.public_key()
        if not isinstance(pub, rsa.RSAPublicKey):
            raise ValueError("SeRsaKey needs an RSA public key")
        numbers = pub.public_numbers()
        super().__init__(numbers.n, numbers.e)
        self.signer = signer

    def __repr__(self) -> str:
        return f"SeRsaKey({int(self.n).bit_length()} bits, private key in the SE)"

    def hasPrivateKey(self) -> bool:  # noqa: N802 - tlslite's API
        return True

    def sign(
        self,
        data: bytes | bytearray,
        padding: str = "pkcs1",
        hashAlg: str | None = None,  # noqa: N803
        saltLen: int | None = None,  # noqa: N803
    ) -> bytearray:
        data = bytes(data)
        padding = padding.lower()
        if padding == "pss":
            # TLS 1.3 / 1.2 rsa_pss_rsae_*: tlslite passes the digest (RFC 8446 §4.2.3).
            if hashAlg is None:
                raise TlsHandshakeError("PSS signature without a hash")
            _check_digest(data, hashAlg)
            if saltLen is not None and saltLen != len(data):
                raise TlsHandshakeError("PSS salt length must equal the digest length")
            sig = self.signer.sign_digest(data, hashAlg, "pss")
        elif padding == "pkcs1":
            digest, hash_name = _split_digest_info(data, hashAlg)
            sig = self.signer.sign_digest(digest, hash_name, "pkcs1")
        else:
            raise TlsHandshakeError(f"unsupported RSA padding {padding!r}")
        if len(sig) != (self.n.bit_length() + 7) // 8:
            raise TlsHandshakeError("the SE returned an RSA signature of the wrong length")
        return bytearray(sig)


def _split_digest_info(data: bytes, hash_name: str | None) -> tuple[bytes, str]:
    """PKCS#1 v1.5 input -> (digest, hash name).

    tlslite 0.8.2 hands TLS 1.2 CertificateVerify as DigestInfo || digest with no hash name
    (``KeyExchange.calcVerifyBytes`` already added the prefix); with a hash name it passes the
    bare digest.
    """
    if hash_name is not None:
        _check_digest(data, hash_name)
        return data, hash_name
    for name, prefix in _DIGEST_INFO.items():  # RFC 8017 §9.2 step 2
        if data.startswith(prefix) and len(data) == len(prefix) + _HASHES[name].digest_size:
            return data[len(prefix) :], name
    raise TlsHandshakeError("PKCS#1 v1.5 input is not a SHA-256/384 DigestInfo")


def tls_key(signer: DigestSigner, public_key: PublicKey | None = None) -> SeEcdsaKey | SeRsaKey:
    """The tlslite key object for ``signer`` (``public_key``: its key, if already fetched)."""
    pub = public_key if public_key is not None else signer.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        return SeRsaKey(signer, pub)
    return SeEcdsaKey(signer, pub)
