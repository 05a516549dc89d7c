"""A development PKI: NOT for production. It warns loudly whenever it is constructed.

Scope: everything personalisation needs, kept as files in one directory (created if missing,
reused if present): the issuance root CA (``root.pem``: the trust anchor), a batch attestation CA
under it, the batch master key, a diversification master for per-card ISD keys, the operator's
re-key authority key, the fleet's rotation authority key and a firmware signing key. Private keys
are PEM files with mode 0600, unencrypted: that is why this is development only. The real
ceremony (M-of-N quorum, HSM) is the factory's job.
Not in scope: talking to a card (``iotid.host.personalisation``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotid.factory.diversify import diversify_isd_keys
from iotid.factory.profiles import CA_KEY_USAGE, SIGNING_KEY_USAGE
from iotid.scp03 import StaticKeys
from iotid.spec.algorithms import KeyAlg

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_VALIDITY = dt.timedelta(days=365 * 20)
_FILES = {
    "root": "root.key",
    "batch": "batch-ca.key",
    "operator": "operator-rekey.key",
    "rotation": "rotation-authority.key",
    "firmware": "firmware.key",
}


class DevelopmentOnlyWarning(UserWarning):
    """Raised (as a warning) whenever development key material is used."""


@dataclass(frozen=True)
class DevPki:
    directory: Path
    root_key: ec.EllipticCurvePrivateKey
    root_cert: x509.Certificate
    batch_key: ec.EllipticCurvePrivateKey
    batch_cert: x509.Certificate
    operator_key: ec.EllipticCurvePrivateKey
    rotation_key: ec.EllipticCurvePrivateKey
    firmware_key: ec.EllipticCurvePrivateKey
    _master_key: bytes
    _isd_master: bytes

    def __repr__(self) -> str:
        return f"DevPki(directory={str(self.directory)!r}, DEVELOPMENT ONLY)"

    @property
    def master_key(self) -> bytes:
        """The batch master key (secret; goes to the card encrypted under Key-DEK)."""
        return self._master_key

    @classmethod
    def load_or_create(cls, directory: Path) -> DevPki:
        warnings.warn(
            f"development PKI in {directory}: unencrypted keys on disk, NOT for production",
            DevelopmentOnlyWarning,
            stacklevel=2,
        )
        directory.mkdir(parents=True, exist_ok=True)
        keys = {name: _load_or_make_ec(directory / fname) for name, fname in _FILES.items()}
        master = _load_or_make_secret(directory / "master.key")
        isd_master = _load_or_make_secret(directory / "isd-master.key")
        root_cert = _load_or_make_cert(
            directory / "root.pem",
            lambda: ca_certificate(
                "iotid development root", keys["root"], keys["root"], None, None
            ),
        )
        batch_cert = _load_or_make_cert(
            directory / "batch-ca.pem",
            lambda: ca_certificate(
                "iotid development batch", keys["batch"], keys["root"], root_cert, 0
            ),
        )
        return cls(
            directory,
            keys["root"],
            root_cert,
            keys["batch"],
            batch_cert,
            keys["operator"],
            keys["rotation"],
            keys["firmware"],
            master,
            isd_master,
        )

    def isd_keys(self, uid: bytes) -> StaticKeys:
        """Per-card ISD keys diversified from the ISD master with HKDF-SHA256 over the UID."""
        return diversify_isd_keys(self._isd_master, uid)

    def certify_attestation_key(self, public_key: PublicKey, uid: bytes) -> x509.Certificate:
        """The attestation certificate for a card's on-card attestation key, from the batch CA."""
        now = dt.datetime.now(dt.UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"iotid attestation {uid.hex().upper()}"),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, uid.hex().upper()),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(self.batch_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(SIGNING_KEY_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.batch_key.public_key()),
                critical=False,
            )
        )
        return builder.sign(self.batch_key, hashes.SHA384())


def issue_certificate(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate,
    public_key: PublicKey,
    subject: x509.Name | None,
    *,
    client: bool,
) -> x509.Certificate:
    """An end-entity certificate from a development CA, standing in for the fleet's issuing CA
    (which does not exist yet): ``client`` for a device (clientAuth, subject kept), otherwise a
    server certificate for 127.0.0.1/localhost (serverAuth)."""
    now = dt.datetime.now(dt.UTC)
    name = subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(SIGNING_KEY_USAGE, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if not client:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA384())


def ca_certificate(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    path_length: int | None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "iotid development"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    return builder.sign(issuer_key, hashes.SHA384())


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _load_or_make_ec(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} does not hold an EC private key")
        return key
    key = ec.generate_private_key(ec.SECP384R1() if "root" in path.name else ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(path, pem)
    return key


def _load_or_make_secret(path: Path) -> bytes:
    if path.exists():
        value = bytes.fromhex(path.read_text().strip())
        if len(value) != 32:
            raise ValueError(f"{path} must hold 32 bytes of hex")
        return value
    value = secrets.token_bytes(32)
    _write_private(path, value.hex().encode() + b"\n")
    return value


def _load_or_make_cert(path: Path, make: object) -> x509.Certificate:
    if path.exists():
        return x509.load_pem_x509_certificate(path.read_bytes())
    assert callable(make)  # noqa: S101 - internal
    cert: x509.Certificate = make()
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def identity_alg(name: str) -> KeyAlg:
    """CLI spelling (p256, p384, rsa2048, rsa3072) of an identity algorithm."""
    alg = KeyAlg.from_name(name)
    if not (alg.is_ec or alg.is_rsa):
        raise ValueError("identity keys are EC P-256/P-384 or RSA-2048/3072")
    return alg
