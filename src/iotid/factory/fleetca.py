"""The factory's side of the fleet: certifying the fleet's issuing CA and issuing the root's CRL.

Scope: :func:`certify_fleet_ca` checks the fleet's CSR (self-signature, an EC P-256/P-384 key),
unlocks the quorum and issues the fleet issuing CA certificate with the issuance root (CA,
pathLenConstraint 0, keyCertSign + cRLSign, SKI/AKI; RFC 5280 §4.2.1), recording the step in the
ceremony record. :func:`issue_root_crl` issues the root's CRL (RFC 5280 §5) that relying parties
(``openssl verify -crl_check_all``) need for the certificates the root signed: it lists the
serials given (revoked batch or fleet CAs) and is valid for ``next_update`` (the root is offline:
a new one needs the quorum again).

Not in scope: the fleet's keys themselves (``iotid.fleet.issuing.keys`` generates them in the
fleet's directory; the private key never comes here), the fleet's own CRLs and OCSP.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from iotid.factory import ceremony
from iotid.factory.batch import BatchError, custodians_present
from iotid.factory.keystore import fingerprint
from iotid.factory.profiles import CA_KEY_USAGE
from iotid.factory.x509sign import sign_certificate, sign_crl
from iotid.spec.manifest import certificate_sha256

__all__ = ["FLEET_CA_VALIDITY", "certify_fleet_ca", "issue_root_crl"]

FLEET_CA_VALIDITY = dt.timedelta(days=5 * 365)
ROOT_CRL_VALIDITY = dt.timedelta(days=30)


def certify_fleet_ca(
    directory: Path,
    csr: x509.CertificateSigningRequest,
    share_files: Sequence[Path],
    *,
    validity: dt.timedelta = FLEET_CA_VALIDITY,
) -> x509.Certificate:
    """The fleet issuing CA certificate for ``csr``, signed by the root with the quorum."""
    if not csr.is_signature_valid:
        raise BatchError("the fleet CA request is not self-signed correctly")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name not in (
        "secp256r1",
        "secp384r1",
    ):
        raise BatchError("the fleet issuing CA key must be EC P-256 or P-384")
    ceremony.open_record(directory)
    store = ceremony.quorum_unlock(directory, share_files)
    root = ceremony.root_certificate(directory)
    signer = store.signer(ceremony.ROOT_KEY)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(root.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + validity, root.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    )
    cert = sign_certificate(builder, signer)
    ceremony.append_step(
        directory,
        "fleet_ca.certified",
        {
            "subject": csr.subject.rfc4514_string(),
            "fleet_ca_sha256": certificate_sha256(cert),
            "key_fingerprint": fingerprint(public),
            "serial": format(cert.serial_number, "x"),
        },
        custodians_present(share_files),
    )
    return cert


def issue_root_crl(
    directory: Path,
    share_files: Sequence[Path],
    *,
    revoked_serials: Sequence[int] = (),
    next_update: dt.timedelta = ROOT_CRL_VALIDITY,
    number: int | None = None,
) -> x509.CertificateRevocationList:
    """The root's CRL listing ``revoked_serials``, signed with the quorum."""
    ceremony.open_record(directory)
    store = ceremony.quorum_unlock(directory, share_files)
    root = ceremony.root_certificate(directory)
    signer = store.signer(ceremony.ROOT_KEY)
    now = dt.datetime.now(dt.UTC)
    crl_number = number if number is not None else int(now.timestamp())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root.subject)
        .last_update(now)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now)
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
    crl = sign_crl(builder, signer)
    ceremony.append_step(
        directory,
        "root_crl.issued",
        {
            "crl_number": crl_number,
            "revoked": [format(s, "x") for s in revoked_serials],
            "next_update": (now + next_update).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        custodians_present(share_files),
    )
    return crl
