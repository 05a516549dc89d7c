"""A small test PKI built with ``cryptography``: keys by :class:`KeyAlg`, names, certificate
builders, CAs that issue CA, server and client certificates, and PEM files.

Profile (one for the whole suite): validity from an hour ago for ``days`` days (1 unless asked);
basicConstraints critical; keyUsage critical with digitalSignature for end entities and
keyCertSign + cRLSign for CAs (each can be overridden to build refused certificates);
subject and authority key identifiers unless ``key_ids=False``; EKU and SAN only when given. A
CA signs with the hash that goes with its key (SHA-384 for P-384, SHA-256 otherwise, as
``KeyAlg.hash_name`` fixes it for the project).

Not covered: certificates signed through a key store (the tests pass :func:`builder`'s output
to ``iotid.factory.x509sign.sign_certificate`` themselves), CRLs, CSRs (the card makes those).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotid.spec.algorithms import KeyAlg

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PemItem = x509.Certificate | x509.CertificateSigningRequest | PrivateKey

_CURVES: dict[KeyAlg, type[ec.EllipticCurve]] = {
    KeyAlg.EC_P256: ec.SECP256R1,
    KeyAlg.EC_P384: ec.SECP384R1,
}
LOCALHOST_SAN: tuple[x509.GeneralName, ...] = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
)


# -- keys and names ------------------------------------------------------------------------------
def new_key(alg: KeyAlg = KeyAlg.EC_P256) -> PrivateKey:
    """A fresh private key: P-256 or P-384, or RSA (exponent 65537) of ``alg``'s size."""
    if alg in _CURVES:
        return ec.generate_private_key(_CURVES[alg]())
    if alg.is_rsa:
        return rsa.generate_private_key(65537, alg.size_bits)
    raise ValueError(f"{alg.name} is not a signature key")


def signature_hash(key: PrivateKey | PublicKey) -> hashes.SHA256 | hashes.SHA384:
    """The hash a certificate signed by ``key`` uses: SHA-384 for P-384, SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(
        key.curve, ec.SECP384R1
    ):
        return hashes.SHA384()
    return hashes.SHA256()


def name(cn: str) -> x509.Name:
    """``CN=cn``."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _as_name(subject: str | x509.Name) -> x509.Name:
    return name(subject) if isinstance(subject, str) else subject


# -- certificates --------------------------------------------------------------------------------
def key_usage(
    *, ca: bool, digital_signature: bool | None = None, cert_sign: bool | None = None
) -> x509.KeyUsage:
    """digitalSignature for an end entity, keyCertSign + cRLSign for a CA (overridable)."""
    return x509.KeyUsage(
        digital_signature=(not ca) if digital_signature is None else digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca if cert_sign is None else cert_sign,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


class Profile(TypedDict, total=False):
    """What a certificate says beyond its names and key; every entry is optional."""

    ca: bool  # basicConstraints cA (default False)
    path_length: int | None  # basicConstraints pathLenConstraint (default None)
    digital_signature: bool | None  # keyUsage override (see key_usage)
    cert_sign: bool | None  # keyUsage override (see key_usage)
    eku: list[x509.ObjectIdentifier] | None  # extendedKeyUsage, when given
    san: list[x509.GeneralName] | None  # subjectAltName, when given
    days: float  # validity after issuance (default 1); it starts an hour ago
    key_ids: bool  # subject and authority key identifiers (default True)


def builder(
    subject: str | x509.Name,
    public: PublicKey,
    *,
    issuer: str | x509.Name | None = None,
    issuer_public: PublicKey | None = None,
    **profile: Unpack[Profile],
) -> x509.CertificateBuilder:
    """The unsigned certificate; ``issuer`` / ``issuer_public`` default to the subject's own
    (self-signed). The authority key identifier names ``issuer_public``."""
    ca = profile.get("ca", False)
    digital_signature, cert_sign = profile.get("digital_signature"), profile.get("cert_sign")
    eku, san = profile.get("eku"), profile.get("san")
    now = dt.datetime.now(dt.UTC)
    subject_name = _as_name(subject)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject_name)
        .issuer_name(subject_name if issuer is None else _as_name(issuer))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=profile.get("days", 1)))
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=profile.get("path_length")), critical=True
        )
        .add_extension(
            key_usage(ca=ca, digital_signature=digital_signature, cert_sign=cert_sign),
            critical=True,
        )
    )
    if profile.get("key_ids", True):
        authority = public if issuer_public is None else issuer_public
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority), critical=False
        )
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b


@dataclass(frozen=True)
class Ca:
    """A certification authority: its private key and its certificate."""

    key: PrivateKey
    cert: x509.Certificate

    def issue(
        self, subject: str | x509.Name, public: PublicKey, **profile: Unpack[Profile]
    ) -> x509.Certificate:
        """A certificate for ``public`` signed by this CA (see :func:`builder`)."""
        issuer, issuer_public = self.cert.subject, self.key.public_key()
        unsigned = builder(subject, public, issuer=issuer, issuer_public=issuer_public, **profile)
        return unsigned.sign(self.key, signature_hash(self.key))

    def sub(self, cn: str, key: PrivateKey | None = None, **profile: Unpack[Profile]) -> Ca:
        """An intermediate CA under this one (a new P-256 key unless ``key`` is given)."""
        key = key or new_key()
        profile["ca"] = True
        return Ca(key, self.issue(cn, key.public_key(), **profile))

    def server(self, alg: KeyAlg = KeyAlg.EC_P256) -> tuple[x509.Certificate, PrivateKey]:
        """A TLS server certificate for ``localhost`` and 127.0.0.1 (serverAuth), and its key."""
        key = new_key(alg)
        cert = self.issue(
            "localhost",
            key.public_key(),
            san=list(LOCALHOST_SAN),
            eku=[ExtendedKeyUsageOID.SERVER_AUTH],
        )
        return cert, key

    def client(
        self,
        subject: str | x509.Name,
        public: PublicKey,
        san: list[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        """A TLS client certificate (clientAuth) for ``public``."""
        return self.issue(subject, public, san=san, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])


def ca(cn: str, key: PrivateKey | None = None, **profile: Unpack[Profile]) -> Ca:
    """A self-signed root CA (a new P-256 key unless ``key`` is given)."""
    key = key or new_key()
    profile["ca"] = True
    return Ca(key, builder(cn, key.public_key(), **profile).sign(key, signature_hash(key)))


# -- PEM -----------------------------------------------------------------------------------------
def pem(item: PemItem) -> bytes:
    """A certificate or CSR as PEM, a private key as unencrypted PKCS#8 PEM."""
    if isinstance(item, x509.Certificate | x509.CertificateSigningRequest):
        return item.public_bytes(serialization.Encoding.PEM)
    return item.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pem(path: Path, item: PemItem) -> Path:
    """Write :func:`pem` of ``item`` to ``path``; return ``path``."""
    path.write_bytes(pem(item))
    return path
