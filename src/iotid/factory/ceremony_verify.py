"""Verifying a key ceremony: the record's hash chain and the root certificate's tie to it.

Scope: :func:`verify_ceremony` re-checks a ceremony directory that ``ceremony.init_ceremony``
made: the record (``record``) verifies end to end; the root certificate names, through its
``anyPolicy`` CPS qualifier (``ceremony.CPS_PREFIX``), the record's ``root.key.generated``
entry; that entry's key is the certificate's key; the certificate is a self-signed CA allowed to
sign certificates; and the entry right after the one named is ``root.certificate.issued`` with
this certificate's SHA-256 (see ``ceremony`` for why the loop is closed this way).
:class:`CeremonyReport` summarises what was checked; :func:`ceremony_reference` reads the entry
hash back out of a certificate.
Not in scope: running the ceremony, unlocking or opening its key store, extending its record
(all in ``ceremony``, which owns the layout, constants and :class:`~ceremony.CeremonyError`);
the share files (a custodian's share is not needed to verify); key store backends; batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from iotid.factory.ceremony import (
    CPS_PREFIX,
    ROOT_CERT_FILE,
    ROOT_CERT_ISSUED,
    ROOT_KEY_GENERATED,
    CeremonyError,
    open_record,
    root_certificate,
)
from iotid.factory.keystore import fingerprint
from iotid.factory.record import Entry
from iotid.spec.ceremony_record import ceremony_reference
from iotid.spec.manifest import certificate_sha256


@dataclass(frozen=True)
class CeremonyReport:
    directory: Path
    ceremony_id: str
    created: str
    threshold: int
    count: int
    custodians: tuple[str, ...]
    backend: str
    root_subject: str
    root_fingerprint: str
    root_key_fingerprint: str
    not_after: str
    reference: Entry
    entries: int
    record_head: str
    #: Entries after the root certificate's issuance (batches and other later steps).
    later_steps: int


def verify_ceremony(directory: Path) -> CeremonyReport:
    """Check the record's chain and the root certificate's tie to it; CeremonyError if not."""
    directory = Path(directory)
    record = open_record(directory)
    cert = root_certificate(directory)
    reference = ceremony_reference(cert)
    if reference is None:
        raise CeremonyError(
            "the root certificate is not tied to a ceremony record "
            f"(no single {CPS_PREFIX}<hash> CPS qualifier)"
        )
    entry = record.find(reference)
    if entry is None:
        raise CeremonyError(
            f"the root certificate names record entry {reference[:16]}..., "
            "which is not in this ceremony record"
        )
    if entry.action != ROOT_KEY_GENERATED:
        raise CeremonyError(
            f"the root certificate names record line {entry.seq + 1}, a {entry.action!r} step, "
            f"not {ROOT_KEY_GENERATED!r}"
        )
    cert_key_fp = fingerprint(_public_key(cert))
    if entry.details.get("fingerprint") != cert_key_fp:
        raise CeremonyError(
            f"key mismatch: the root certificate's key ({cert_key_fp[:16]}...) is not the root "
            f"key recorded on line {entry.seq + 1} "
            f"({str(entry.details.get('fingerprint'))[:16]}...)"
        )
    _check_root(cert)
    entries = record.entries
    issued = entries[entry.seq + 1] if entry.seq + 1 < len(entries) else None
    if issued is None or issued.action != ROOT_CERT_ISSUED:
        raise CeremonyError(
            f"the record does not show the root certificate's issuance right after line "
            f"{entry.seq + 1} (entries were removed?)"
        )
    if issued.details.get("certificate_sha256") != certificate_sha256(cert):
        raise CeremonyError(
            f"{ROOT_CERT_FILE} is not the certificate the record says was issued "
            f"(line {issued.seq + 1})"
        )
    header = record.header
    try:
        quorum = header["quorum"]
        threshold, count = int(quorum["threshold"]), int(quorum["count"])
        ceremony_id, custodians = str(header["ceremony_id"]), tuple(header["custodians"])
    except (KeyError, TypeError, ValueError):
        raise CeremonyError("the ceremony record's header is incomplete") from None
    return CeremonyReport(
        directory=directory,
        ceremony_id=ceremony_id,
        created=entries[0].time,
        threshold=threshold,
        count=count,
        custodians=custodians,
        backend=str(entry.details.get("backend", "unknown")),
        root_subject=cert.subject.rfc4514_string(),
        root_fingerprint=certificate_sha256(cert),
        root_key_fingerprint=cert_key_fp,
        not_after=cert.not_valid_after_utc.isoformat(),
        reference=entry,
        entries=len(entries),
        record_head=record.head_hash,
        later_steps=len(entries) - issued.seq - 1,
    )


def _public_key(cert: x509.Certificate) -> Any:
    try:
        return cert.public_key()
    except (ValueError, TypeError):
        raise CeremonyError("the root certificate's public key cannot be read") from None


def _check_root(cert: x509.Certificate) -> None:
    if cert.issuer != cert.subject:
        raise CeremonyError("the root certificate is not self-issued (issuer != subject)")
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError):
        raise CeremonyError("the root certificate's self-signature does not verify") from None
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        raise CeremonyError("the root certificate lacks BasicConstraints or KeyUsage") from None
    if not (basic.critical and basic.value.ca):
        raise CeremonyError("the root certificate is not a CA (BasicConstraints cA, critical)")
    if not (usage.critical and usage.value.key_cert_sign):
        raise CeremonyError("the root certificate may not sign certificates (KeyUsage)")


__all__ = [
    "CeremonyReport",
    "ceremony_reference",
    "verify_ceremony",
]
