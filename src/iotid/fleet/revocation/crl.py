"""CRLs (RFC 5280 §5) of the fleet's issuing CA, and the root's CRL as the factory issued it.

Scope: :class:`CrlPublisher`. The issuing CA's CRL lists every revoked certificate it issued that
has not yet expired (§3.3: an entry may go once the certificate has expired; a CRL of a
short-lived-certificate fleet stays small), each with its revocation date and a CRLReason entry
extension (§5.3.1; omitted for ``unspecified``). thisUpdate is now, nextUpdate now + 5 minutes:
a relying party holding a stale list fails closed. The CRLNumber (§5.2.3) is
``(newest revocation event id << 40) | unix seconds``: it grows with every re-issue, and a CRL
that includes a newer revocation always outnumbers one that does not, whichever fleet process
signed it.

The DER is cached and rebuilt when a newer revocation event exists (one ``max(id)`` query per
request) or after :data:`CRL_MAX_AGE`: always current, re-issued within a minute without any.

Not in scope: HTTP (``api``), OCSP, delta CRLs, indirect CRLs, per-batch-CA CRLs (the batch
CAs belong to the factory; a revoked batch shows here as its devices' certificates).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotid.fleet.db import Database
from iotid.fleet.issuing import FleetKeys
from iotid.fleet.models import utcnow
from iotid.fleet.revocation.repository import RevocationRepository

__all__ = ["CRL_MAX_AGE", "CRL_NEXT_UPDATE", "CrlPublisher"]

CRL_NEXT_UPDATE = dt.timedelta(minutes=5)
CRL_MAX_AGE = dt.timedelta(seconds=60)


class CrlPublisher:
    def __init__(
        self, db: Database, keys: FleetKeys, *, clock: Callable[[], dt.datetime] = utcnow
    ) -> None:
        self._db = db
        self._keys = keys
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[int, dt.datetime, bytes] | None = None

    def issuing_crl(self) -> bytes:
        """DER of the issuing CA's current CRL."""
        now = self._clock()
        with self._db.transaction(write=False) as session:
            repo = RevocationRepository(session)
            newest = repo.max_event_id()
            with self._lock:
                cached = self._cached
                if cached is not None and cached[0] == newest and now - cached[1] < CRL_MAX_AGE:
                    return cached[2]
            entries = repo.revoked_certificates(self._keys.issuing.sha256, now)
        der = self._build(newest, now, entries)
        with self._lock:
            if self._cached is None or self._cached[0] <= newest:
                self._cached = (newest, now, der)
        return der

    def root_crl(self) -> bytes | None:
        """DER of the root's CRL from the fleet directory, or None when there is none."""
        crl = self._keys.root_crl
        return None if crl is None else crl.public_bytes(serialization.Encoding.DER)

    def _build(
        self, newest: int, now: dt.datetime, entries: list[tuple[str, dt.datetime, str | None]]
    ) -> bytes:
        number = (newest << 40) | int(now.timestamp())
        builder = (
            x509.CertificateRevocationListBuilder()
            .last_update(now)
            .next_update(now + CRL_NEXT_UPDATE)
            .add_extension(x509.CRLNumber(number), critical=False)
        )
        for serial, revoked_at, reason in entries:
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(revoked_at)
            )
            flag = _flag(reason)
            if flag is not None:
                entry = entry.add_extension(x509.CRLReason(flag), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        crl = self._keys.issuing.sign_crl(builder)
        return crl.public_bytes(serialization.Encoding.DER)


def _flag(reason: str | None) -> x509.ReasonFlags | None:
    if reason is None:
        return None
    try:
        flag = x509.ReasonFlags(reason)
    except ValueError:
        return None
    return None if flag is x509.ReasonFlags.unspecified else flag
