"""A device's chain of evidence, link by link: ``trace UID`` (DESIGN.md section 9).

Scope: the :class:`Trace` dataclasses and the pure checks that build them from registry rows and
the fleet's keys, with no SQL and no I/O (the service loads the rows, and the ceremony record's
bytes when a copy is given). The walk, each link carrying ``ok`` and the ``problem`` that broke
it, so a broken link is visible instead of an exception:

1. the device's client certificates (:class:`CertificateLink`): serial, key epoch, validity,
   revocation; each must parse, name the device in its SAN URI and be signed by the fleet's
   issuing CA (whose own certificate the root signed);
2. the enrollment evidence (:class:`EnrollmentLink`): the stored quote is re-decoded, its
   protected x5chain gives the attestation certificate (subject, serial, SHA-256) and the batch
   CA (SHA-256, which must equal the batch's ``batch_ca_sha256``); the attestation certificate
   must be the manifest's and signed by the batch CA, the quote's signature must verify under it
   and its UID claim must be the device's;
3. the batch (:class:`BatchLink`): name, manifest SHA-256 (recomputed, and the manifest's
   signature re-verified against the root), import time, revocation;
4. the issuance root (:class:`RootLink`): SHA-256, subject, and the ceremony record entry it
   names in its ``anyPolicy`` CPS qualifier ``urn:iotid:ceremony:sha256:<hex>``;
5. the ceremony record (:class:`CeremonyLink`), when a copy is available: its hash chain
   (``iotid.spec.ceremony_record``), the named ``root.key.generated`` entry (whose key must be
   the root's), the ``root.certificate.issued`` entry right after it (this root's SHA-256), and
   the quorum: threshold M of N from the record's header and the custodians present at the root
   key's generation (the entry's actors), at least M of them.

Not in scope: SQL (``repository``), the device's audit entries (the service adds them),
deciding trust for enrollment (``iotid.fleet.enrollment``): a trace only reports.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotid.crypto import cose
from iotid.fleet.enrollment.quote import (
    CERT_PARSE_ERRORS,
    decode_quote,
    parse_claims,
    protected_alg,
    x5chain,
)
from iotid.fleet.enrollment.verdict import QuoteRefusedError
from iotid.fleet.issuing import FleetKeys, certificate_sha256, serial_hex, uid_from_certificate
from iotid.fleet.models import Batch, Certificate, Device, Enrollment
from iotid.spec.ceremony_record import CPS_PREFIX as CEREMONY_CPS_PREFIX
from iotid.spec.ceremony_record import Entry, RecordError, ceremony_reference, parse_record
from iotid.spec.manifest import ManifestError, verify_manifest

__all__ = [
    "CEREMONY_CPS_PREFIX",
    "BatchLink",
    "CeremonyLink",
    "CertificateLink",
    "EnrollmentLink",
    "RootLink",
    "Trace",
    "batch_link",
    "ceremony_link",
    "ceremony_reference",
    "certificate_link",
    "enrollment_link",
    "root_link",
]

#: How the root certificate names its ceremony record entry (``iotid.factory.ceremony``).
_ROOT_KEY_GENERATED = "root.key.generated"
_ROOT_CERT_ISSUED = "root.certificate.issued"


@dataclass(frozen=True)
class CertificateLink:
    serial: str
    key_epoch: int
    not_before: dt.datetime
    not_after: dt.datetime
    revoked_at: dt.datetime | None
    reason: str | None
    issuer_sha256: str
    spki_sha256: str
    ok: bool
    problem: str | None


@dataclass(frozen=True)
class EnrollmentLink:
    created_at: dt.datetime
    certificate_serial: str
    key_epoch: int
    attestation_subject: str | None
    attestation_serial: str | None
    attestation_sha256: str | None
    batch_ca_sha256: str | None
    ok: bool
    problem: str | None


@dataclass(frozen=True)
class BatchLink:
    name: str
    algorithm: str
    manifest_sha256: str
    batch_ca_sha256: str
    batch_ca_subject: str | None
    imported_at: dt.datetime
    revoked_at: dt.datetime | None
    revocation_reason: str | None
    ok: bool
    problem: str | None


@dataclass(frozen=True)
class RootLink:
    subject: str
    sha256: str
    not_after: dt.datetime
    #: The ceremony record entry hash the root names (CPS qualifier), if exactly one.
    ceremony_reference: str | None
    ok: bool
    problem: str | None


@dataclass(frozen=True)
class CeremonyLink:
    reference: str | None
    #: False when no copy of the record was given: the reference is reported, not checked.
    verified: bool
    ceremony_id: str | None = None
    entries: int | None = None
    record_head: str | None = None
    entry_seq: int | None = None
    entry_action: str | None = None
    entry_time: str | None = None
    threshold: int | None = None
    count: int | None = None
    custodians: tuple[str, ...] = ()
    #: Custodians among the actors of the ``root.key.generated`` step.
    custodians_present: tuple[str, ...] = ()
    ok: bool = True
    problem: str | None = None


@dataclass(frozen=True)
class AuditItem:
    seq: int
    time: dt.datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    hash: str


@dataclass(frozen=True)
class Trace:
    uid: str
    state: str
    key_epoch: int
    certificates: tuple[CertificateLink, ...]
    enrollments: tuple[EnrollmentLink, ...]
    batch: BatchLink
    root: RootLink
    ceremony: CeremonyLink
    audit: tuple[AuditItem, ...]

    @property
    def ok(self) -> bool:
        """Every link holds (the ceremony link may be unverified: see :attr:`complete`)."""
        links: list[CertificateLink | EnrollmentLink | BatchLink | RootLink | CeremonyLink] = [
            *self.certificates,
            *self.enrollments,
            self.batch,
            self.root,
            self.ceremony,
        ]
        return all(link.ok for link in links)

    @property
    def complete(self) -> bool:
        """The walk reached a verified ceremony record and every link holds."""
        return self.ok and self.ceremony.verified


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


# -- 1. certificates ------------------------------------------------------------------------------
def certificate_link(row: Certificate, uid: str, keys: FleetKeys) -> CertificateLink:
    problem: str | None = None
    try:
        cert = x509.load_der_x509_certificate(row.der)
    except CERT_PARSE_ERRORS:
        cert = None
        problem = "the stored certificate does not parse"
    if cert is not None:
        issuing = keys.issuing.certificate
        if serial_hex(cert.serial_number) != row.serial:
            problem = "the stored certificate's serial is not the registry's"
        elif uid_from_certificate(cert) != uid:
            problem = "the certificate does not name this device"
        elif row.issuer_sha256 != keys.issuing.sha256 or not _issued_by(cert, issuing):
            problem = "the certificate is not signed by the fleet's issuing CA"
        elif not _issued_by(issuing, keys.root):
            problem = "the issuing CA is not certified by the issuance root"
    return CertificateLink(
        serial=row.serial,
        key_epoch=row.key_epoch,
        not_before=row.not_before,
        not_after=row.not_after,
        revoked_at=row.revoked_at,
        reason=row.reason,
        issuer_sha256=row.issuer_sha256,
        spki_sha256=row.spki_sha256,
        ok=problem is None,
        problem=problem,
    )


# -- 2. enrollment evidence -----------------------------------------------------------------------
def enrollment_link(
    row: Enrollment, device: Device, batch: Batch, serials: Sequence[str]
) -> EnrollmentLink:
    subject = serial = att_sha = ca_sha = None
    problem: str | None = None
    try:
        message = decode_quote(row.quote)
        protected_alg(message)  # no crit, a known algorithm
        attestation, batch_ca = x5chain(message)
        subject = attestation.subject.rfc4514_string()
        serial = serial_hex(attestation.serial_number)
        att_sha, ca_sha = certificate_sha256(attestation), certificate_sha256(batch_ca)
        key = attestation.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            problem = "the attestation certificate's key is not EC or RSA"
        elif not cose.verify_sign1(message, key):
            problem = "the quote's signature does not verify under its attestation certificate"
        elif parse_claims(message.payload).uid.hex().upper() != device.uid:
            problem = "the quote is another device's (UID claim)"
    except QuoteRefusedError as exc:
        problem = f"the stored quote does not decode: {exc}"
    except cose.CoseError as exc:
        problem = f"the stored quote's signature cannot be checked: {exc}"
    if problem is None:
        if att_sha != row.attestation_cert_sha256 or att_sha != device.attestation_cert_sha256:
            problem = "the quote's attestation certificate is not the manifest's"
        elif ca_sha != row.batch_ca_sha256 or ca_sha != batch.batch_ca_sha256:
            problem = "the quote's batch CA is not the batch's (batch_ca_sha256 differs)"
        elif not _issued_by(attestation, batch_ca):
            problem = "the attestation certificate is not signed by the batch CA"
        elif row.certificate_serial not in serials:
            problem = "the certificate this enrollment earned is not in the registry"
    return EnrollmentLink(
        created_at=row.created_at,
        certificate_serial=row.certificate_serial,
        key_epoch=row.key_epoch,
        attestation_subject=subject,
        attestation_serial=serial,
        attestation_sha256=att_sha,
        batch_ca_sha256=ca_sha,
        ok=problem is None,
        problem=problem,
    )


# -- 3. batch -------------------------------------------------------------------------------------
def batch_link(batch: Batch, keys: FleetKeys) -> BatchLink:
    problem: str | None = None
    ca_subject: str | None = None
    manifest = batch.manifest_json.encode("ascii")
    try:
        ca = x509.load_pem_x509_certificate(batch.batch_ca_pem.encode("ascii"))
        ca_subject = ca.subject.rfc4514_string()
    except CERT_PARSE_ERRORS:
        ca = None
    root_sha = certificate_sha256(keys.root)
    if ca is None:
        problem = "the batch CA certificate does not parse"
    elif certificate_sha256(ca) != batch.batch_ca_sha256:
        problem = "the batch CA certificate is not the one batch_ca_sha256 names"
    elif _sha256_hex(manifest) != batch.manifest_sha256:
        problem = "the stored manifest is not the one manifest_sha256 names (edited)"
    elif batch.root_sha256 != root_sha:
        problem = "the batch was issued under another issuance root"
    elif not _issued_by(ca, keys.root):
        problem = "the batch CA is not signed by the issuance root"
    else:
        try:
            verify_manifest(manifest, batch.manifest_signature, keys.root)
        except ManifestError as exc:
            problem = f"the stored manifest does not verify: {exc}"
    return BatchLink(
        name=batch.name,
        algorithm=batch.algorithm,
        manifest_sha256=batch.manifest_sha256,
        batch_ca_sha256=batch.batch_ca_sha256,
        batch_ca_subject=ca_subject,
        imported_at=batch.imported_at,
        revoked_at=batch.revoked_at,
        revocation_reason=batch.revocation_reason,
        ok=problem is None,
        problem=problem,
    )


# -- 4. issuance root -----------------------------------------------------------------------------
def root_link(keys: FleetKeys) -> RootLink:
    root = keys.root
    reference = ceremony_reference(root)
    problem: str | None = None
    if root.issuer != root.subject or not _issued_by(root, root):
        problem = "the issuance root is not self-signed"
    elif reference is None:
        problem = f"the root names no ceremony record entry ({CEREMONY_CPS_PREFIX}<hash>)"
    return RootLink(
        subject=root.subject.rfc4514_string(),
        sha256=certificate_sha256(root),
        not_after=root.not_valid_after_utc,
        ceremony_reference=reference,
        ok=problem is None,
        problem=problem,
    )


# -- 5. ceremony record ---------------------------------------------------------------------------
def ceremony_link(root: x509.Certificate, record: bytes | None) -> CeremonyLink:
    """The record entry the root names, checked against ``record`` (a copy's bytes) if given."""
    reference = ceremony_reference(root)
    if record is None:
        return CeremonyLink(reference=reference, verified=False)
    if reference is None:
        return _broken(reference, "the root names no ceremony record entry")
    try:
        entries = parse_record(record)
    except RecordError as exc:
        return _broken(reference, f"the ceremony record does not verify: {exc}")
    header = entries[0].details.get("header")
    try:
        if not isinstance(header, dict):
            raise TypeError("no header object")
        quorum = header["quorum"]
        threshold, count = int(quorum["threshold"]), int(quorum["count"])
        custodians = tuple(str(c) for c in header["custodians"])
        ceremony_id = str(header["ceremony_id"])
    except (KeyError, TypeError, ValueError):
        return _broken(reference, "the ceremony record's header is incomplete")
    entry = next((e for e in entries if e.hash == reference), None)
    if entry is None:
        return _broken(reference, "the entry the root names is not in this ceremony record")
    present = tuple(c for c in custodians if c in entry.actors)
    problem = _check_root_entries(root, entry, entries)
    if problem is None and len(present) < threshold:
        problem = f"only {len(present)} custodians present, the quorum is {threshold}"
    return CeremonyLink(
        reference=reference,
        verified=True,
        ceremony_id=ceremony_id,
        entries=len(entries),
        record_head=entries[-1].hash,
        entry_seq=entry.seq,
        entry_action=entry.action,
        entry_time=entry.time,
        threshold=threshold,
        count=count,
        custodians=custodians,
        custodians_present=present,
        ok=problem is None,
        problem=problem,
    )


def _broken(reference: str | None, problem: str) -> CeremonyLink:
    return CeremonyLink(reference=reference, verified=True, ok=False, problem=problem)


def _check_root_entries(
    root: x509.Certificate, entry: Entry, entries: Sequence[Entry]
) -> str | None:
    if entry.action != _ROOT_KEY_GENERATED:
        return f"the root names a {entry.action!r} step, not {_ROOT_KEY_GENERATED!r}"
    spki = root.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if entry.details.get("fingerprint") != _sha256_hex(spki):
        return "the root's key is not the key the ceremony generated"
    issued = entries[entry.seq + 1] if entry.seq + 1 < len(entries) else None
    if issued is None or issued.action != _ROOT_CERT_ISSUED:
        return "the record does not show the root certificate's issuance after its key"
    if issued.details.get("certificate_sha256") != certificate_sha256(root):
        return "the record issued another root certificate"
    return None
