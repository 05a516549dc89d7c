"""The fleet's key directory: what ``iotid fleet init`` writes and every fleet process loads.

Scope: :func:`create_fleet_keys` and :meth:`FleetKeys.load` over one directory::

    root.pem                  the issuance root (trust anchor of quotes and of the issuing CA)
    issuing-ca.pem / .key     the fleet issuing CA (P-256; certified by the root through the
                              ``certify`` callback, i.e. the factory's quorum, see the CLI)
    root-crl.pem              optional: the root's CRL covering the issuing CA (from the factory)
    gateway.pem / .key        the device gateway's TLS server certificate, from the issuing CA
    rotation-authority.key    the rotation authority (P-256): acknowledges rotations; its public
    rotation-authority.pem    key is personalised into every card of the fleet's batches

Private keys are PKCS#8 PEM files of mode 0600, encrypted under ``passphrase`` when one is given
(``IOTID_FLEET_KEY_PASSPHRASE`` in the CLI). Files are written under temporary names and renamed,
the directory is complete or ``create_fleet_keys`` raised. :class:`AuthoritySigner` signs
rotation acknowledgements under the rule of ``iotid.spec.rotation`` (ECDSA with the curve's hash).

Not in scope: the factory side of certifying the CA (``iotid.cli``), the rules for using the keys.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from iotid.crypto import identity_rule
from iotid.fleet.issuing.ca import IssuingCA

__all__ = ["AuthoritySigner", "FleetKeys", "FleetKeysError", "create_fleet_keys"]

ROOT = "root.pem"
ROOT_CRL = "root-crl.pem"
ISSUING_CERT = "issuing-ca.pem"
ISSUING_KEY = "issuing-ca.key"
GATEWAY_CERT = "gateway.pem"
GATEWAY_KEY = "gateway.key"
AUTHORITY_KEY = "rotation-authority.key"
AUTHORITY_PUB = "rotation-authority.pem"

Certify = Callable[[x509.CertificateSigningRequest], x509.Certificate]


class FleetKeysError(Exception):
    """The fleet directory is missing, incomplete or inconsistent (the message says what)."""


class AuthoritySigner:
    """The rotation authority's private key; signs acknowledgement and purge to-be-signed bytes."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self._key = private_key

    def __repr__(self) -> str:
        return "AuthoritySigner(<redacted>)"

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, tbs: bytes) -> bytes:
        return identity_rule.sign(self._key, tbs)


@dataclass(frozen=True, repr=False)
class FleetKeys:
    directory: Path
    root: x509.Certificate
    issuing: IssuingCA
    authority: AuthoritySigner
    #: The root's CRL covering the issuing CA, when the factory supplied one.
    root_crl: x509.CertificateRevocationList | None

    def __repr__(self) -> str:
        return f"FleetKeys({str(self.directory)!r})"

    @property
    def gateway_cert_path(self) -> Path:
        return self.directory / GATEWAY_CERT

    @property
    def gateway_key_path(self) -> Path:
        return self.directory / GATEWAY_KEY

    @property
    def root_pem(self) -> bytes:
        return (self.directory / ROOT).read_bytes()

    @property
    def ca_bundle_pem(self) -> bytes:
        """Issuing CA then root: what a device needs to validate the gateway."""
        return (self.directory / ISSUING_CERT).read_bytes() + self.root_pem

    @classmethod
    def load(
        cls,
        directory: Path | str,
        *,
        passphrase: bytes | None = None,
        ocsp_url: str | None = None,
        crl_url: str | None = None,
    ) -> FleetKeys:
        base = Path(directory)
        try:
            root = x509.load_pem_x509_certificate((base / ROOT).read_bytes())
            cert = x509.load_pem_x509_certificate((base / ISSUING_CERT).read_bytes())
            key = _load_ec(base / ISSUING_KEY, passphrase)
            authority = _load_ec(base / AUTHORITY_KEY, passphrase)
            for name in (GATEWAY_CERT, GATEWAY_KEY):
                if not (base / name).is_file():
                    raise FleetKeysError(f"{base / name} is missing")
            crl = None
            if (base / ROOT_CRL).is_file():
                crl = x509.load_pem_x509_crl((base / ROOT_CRL).read_bytes())
        except FileNotFoundError as exc:
            raise FleetKeysError(f"fleet directory {base}: {exc.filename} is missing") from None
        except (ValueError, TypeError) as exc:
            raise FleetKeysError(f"fleet directory {base}: {exc}") from None
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError) as exc:
            raise FleetKeysError(f"the issuing CA is not certified by the root: {exc}") from None
        try:
            issuing = IssuingCA(cert, key, ocsp_url=ocsp_url, crl_url=crl_url)
        except ValueError as exc:
            raise FleetKeysError(str(exc)) from None
        return cls(base, root, issuing, AuthoritySigner(authority), crl)


def _load_ec(path: Path, passphrase: bytes | None) -> ec.EllipticCurvePrivateKey:
    data = path.read_bytes()
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    try:
        key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except (ValueError, TypeError):
        raise FleetKeysError(f"{path.name}: cannot load (wrong passphrase?)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FleetKeysError(f"{path.name}: not an EC private key")
    return key


def _private_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _write(path: Path, data: bytes, *, private: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(tmp, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _pem(item: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return item.public_bytes(serialization.Encoding.PEM)


def create_fleet_keys(
    directory: Path | str,
    root: x509.Certificate,
    certify: Certify,
    *,
    gateway_names: Sequence[str] = ("localhost", "127.0.0.1"),
    passphrase: bytes | None = None,
    root_crl: x509.CertificateRevocationList | None = None,
    name: str = "iotid fleet issuing CA",
    now: dt.datetime | None = None,
) -> FleetKeys:
    """Generate the fleet's keys in ``directory`` (must not hold them yet) and load them.

    ``certify`` receives the issuing CA's CSR and returns its certificate signed by ``root``
    (the factory does this with the quorum present).
    """
    base = Path(directory)
    base.mkdir(parents=True, exist_ok=True)
    if (base / ISSUING_KEY).exists():
        raise FleetKeysError(f"{base} already holds fleet keys")
    when = now or dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(ca_key, hashes.SHA256())
    )
    cert = certify(csr)
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError) as exc:
        raise FleetKeysError(
            f"the certified issuing CA does not chain to the root: {exc}"
        ) from None
    issuing = IssuingCA(cert, ca_key)
    gateway_key = ec.generate_private_key(ec.SECP256R1())
    gateway = issuing.issue_server(gateway_key.public_key(), list(gateway_names), now=when)
    authority = ec.generate_private_key(ec.SECP256R1())
    _write(base / ROOT, _pem(root), private=False)
    _write(base / ISSUING_CERT, _pem(cert), private=False)
    _write(base / ISSUING_KEY, _private_pem(ca_key, passphrase), private=True)
    # The gateway's key stays unencrypted: the TLS listener loads it at every start.
    _write(base / GATEWAY_KEY, _private_pem(gateway_key, None), private=True)
    _write(base / GATEWAY_CERT, _pem(gateway) + _pem(cert), private=False)
    _write(base / AUTHORITY_KEY, _private_pem(authority, passphrase), private=True)
    _write(
        base / AUTHORITY_PUB,
        authority.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        private=False,
    )
    if root_crl is not None:
        _write(base / ROOT_CRL, _pem(root_crl), private=False)
    return FleetKeys.load(base, passphrase=passphrase)
