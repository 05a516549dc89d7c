"""The fleet's issuing CA: client certificates for devices, the gateway's server certificate,
and the signing of the CA's CRLs and OCSP responses.

Scope: :class:`IssuingCA` over an EC private key the fleet holds online (issuing short-lived
certificates is an online job; the CA's own certificate is signed by the issuance root at a
ceremony, see ``iotid fleet init``) and its certificate. Profiles (RFC 5280 §4.2.1):

- device client certificate: subject ``CN=<UID hex>``, SAN URI ``urn:iotid:uid:<uid hex>``
  (``iotid.spec.mtls.UID_URN_PREFIX``), keyUsage digitalSignature (critical), extKeyUsage
  clientAuth, basicConstraints cA=FALSE (critical), SKI/AKI, optional AIA (OCSP) and CRL
  distribution point; short-lived (:data:`CLIENT_CERT_LIFETIME` by default), random 159-bit
  serial;
- gateway server certificate: the same with serverAuth and DNS/IP SANs.

Helpers every slice uses the same way: :func:`serial_hex`, :func:`spki_der`,
:func:`spki_sha256`, :func:`certificate_sha256`, :func:`device_uri`, :func:`uid_from_certificate`.

Not in scope: who may get a certificate (enrollment, rotation), persistence, revocation state.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from iotid.spec.mtls import UID_URN_PREFIX

__all__ = [
    "CLIENT_CERT_LIFETIME",
    "IssuingCA",
    "certificate_sha256",
    "device_uri",
    "serial_hex",
    "spki_der",
    "spki_sha256",
    "uid_from_certificate",
]

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
#: Default lifetime of a device client certificate (renewed over the gateway before it ends).
CLIENT_CERT_LIFETIME = dt.timedelta(hours=24)
#: Backdating of notBefore, for devices whose clocks run a little behind.
CLOCK_SKEW = dt.timedelta(minutes=5)


def serial_hex(serial: int) -> str:
    """The registry's spelling of a certificate serial: lower-case hex, no leading zeros."""
    return format(serial, "x")


def spki_der(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki_sha256(spki: bytes) -> str:
    return hashlib.sha256(spki).hexdigest()


def certificate_sha256(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def device_uri(uid: str) -> str:
    """The SAN URI naming a device (``uid`` in the registry's upper-case hex)."""
    return UID_URN_PREFIX + uid.lower()


def uid_from_certificate(certificate: x509.Certificate) -> str | None:
    """The device UID (upper-case hex) a client certificate names in its SAN URI, or None."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    found = [u[len(UID_URN_PREFIX) :] for u in uris if u.startswith(UID_URN_PREFIX)]
    if len(found) != 1:
        return None
    text = found[0]
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    if not 1 <= len(raw) <= 32 or raw.hex() != text:
        return None
    return text.upper()


def _hash_for(key: ec.EllipticCurvePrivateKey) -> hashes.SHA256 | hashes.SHA384:
    return hashes.SHA384() if key.curve.key_size >= 384 else hashes.SHA256()


class IssuingCA:
    """The fleet's online issuing CA. The private key never leaves this object (no accessor)."""

    def __init__(
        self,
        certificate: x509.Certificate,
        private_key: ec.EllipticCurvePrivateKey,
        *,
        ocsp_url: str | None = None,
        crl_url: str | None = None,
    ) -> None:
        if spki_der(private_key.public_key()) != spki_der(_public(certificate)):
            raise ValueError("the issuing CA key does not match its certificate")
        self.certificate = certificate
        self._key = private_key
        self.ocsp_url = ocsp_url
        self.crl_url = crl_url
        self.sha256 = certificate_sha256(certificate)
        self._ski = x509.SubjectKeyIdentifier.from_public_key(private_key.public_key())

    def __repr__(self) -> str:
        return f"IssuingCA(subject={self.certificate.subject.rfc4514_string()!r})"

    @property
    def hash_algorithm(self) -> hashes.SHA256 | hashes.SHA384:
        return _hash_for(self._key)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def _base(
        self, subject: x509.Name, public_key: PublicKey, now: dt.datetime, lifetime: dt.timedelta
    ) -> x509.CertificateBuilder:
        not_after = min(now + lifetime, self.certificate.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                critical=False,
            )
        )
        if self.ocsp_url:
            builder = builder.add_extension(
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.OCSP,
                            x509.UniformResourceIdentifier(self.ocsp_url),
                        )
                    ]
                ),
                critical=False,
            )
        if self.crl_url:
            builder = builder.add_extension(
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            full_name=[x509.UniformResourceIdentifier(self.crl_url)],
                            relative_name=None,
                            reasons=None,
                            crl_issuer=None,
                        )
                    ]
                ),
                critical=False,
            )
        return builder

    def issue_client(
        self,
        spki: bytes,
        uid: str,
        *,
        now: dt.datetime,
        lifetime: dt.timedelta = CLIENT_CERT_LIFETIME,
    ) -> x509.Certificate:
        """A client certificate for the identity key ``spki`` (DER) of device ``uid`` (hex)."""
        public_key = serialization.load_der_public_key(spki)
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise ValueError("an identity key is EC or RSA")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uid.upper())])
        builder = (
            self._base(subject, public_key, now, lifetime)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(device_uri(uid))]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        return builder.sign(self._key, self.hash_algorithm)

    def issue_server(
        self,
        public_key: PublicKey,
        names: Sequence[str],
        *,
        now: dt.datetime,
        lifetime: dt.timedelta = dt.timedelta(days=365),
    ) -> x509.Certificate:
        """A TLS server certificate (the gateway's) for DNS names and IP addresses ``names``."""
        if not names:
            raise ValueError("a server certificate needs at least one name")
        general: list[x509.GeneralName] = []
        for item in names:
            try:
                general.append(x509.IPAddress(ipaddress.ip_address(item)))
            except ValueError:
                general.append(x509.DNSName(item))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        builder = (
            self._base(subject, public_key, now, lifetime)
            .add_extension(x509.SubjectAlternativeName(general), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        return builder.sign(self._key, self.hash_algorithm)

    def sign_crl(
        self, builder: x509.CertificateRevocationListBuilder
    ) -> x509.CertificateRevocationList:
        """Sign a CRL the revocation slice built (issuer name and AKI are added here)."""
        builder = builder.issuer_name(self.certificate.subject).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
            critical=False,
        )
        return builder.sign(self._key, self.hash_algorithm)

    def sign_ocsp(self, builder: ocsp.OCSPResponseBuilder) -> ocsp.OCSPResponse:
        """Sign an OCSP response as the CA itself (RFC 6960 §4.2.2.2: no delegated responder)."""
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, self.certificate)
        return builder.sign(self._key, self.hash_algorithm)


def _public(certificate: x509.Certificate) -> PublicKey:
    key = certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError("unsupported key type in the issuing CA certificate")
    return key
