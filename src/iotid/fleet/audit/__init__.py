"""The audit slice: reading the hash-chained audit log, verifying it, and tracing a device.

Scope: re-exports of :mod:`iotid.fleet.audit.service` and :mod:`iotid.fleet.audit.trace`.
Not in scope: writing entries (``iotid.fleet.models.audit.AuditLog``, used by every slice inside
its own transaction), the HTTP layer (``iotid.fleet.audit.api``).
"""

from __future__ import annotations

from iotid.fleet.audit.service import (
    MAX_PAGE,
    AuditEntryView,
    AuditPage,
    AuditService,
    AuditVerification,
)
from iotid.fleet.audit.trace import (
    BatchLink,
    CeremonyLink,
    CertificateLink,
    EnrollmentLink,
    RootLink,
    Trace,
)

__all__ = [
    "MAX_PAGE",
    "AuditEntryView",
    "AuditPage",
    "AuditService",
    "AuditVerification",
    "BatchLink",
    "CeremonyLink",
    "CertificateLink",
    "EnrollmentLink",
    "RootLink",
    "Trace",
]
