"""The fleet registry's SQLAlchemy 2 models (typed declarative), one ``MetaData`` for Alembic.

Scope: re-exports of every table so that importing this package registers them all on
:data:`Base.metadata` (what ``migrations/env.py`` compares against). Not in scope: SQL queries
(repositories), migrations (``iotid.fleet.migrations``).
"""

from __future__ import annotations

from iotid.fleet.models.audit import (
    GENESIS_PREV,
    AuditChainError,
    AuditEntry,
    AuditHead,
    AuditLog,
    entry_hash,
    format_time,
)
from iotid.fleet.models.base import Base, UTCDateTime, utcnow
from iotid.fleet.models.lifecycle import (
    Command,
    Enrollment,
    FirmwareAssignment,
    FirmwareRelease,
    RevocationEvent,
    Rotation,
    RotationState,
    Telemetry,
)
from iotid.fleet.models.nonce import Nonce
from iotid.fleet.models.registry import (
    ALLOWED_TRANSITIONS,
    Batch,
    Certificate,
    Device,
    DeviceState,
)
from iotid.fleet.models.token import ApiToken, Role

__all__ = [
    "ALLOWED_TRANSITIONS",
    "ApiToken",
    "Role",
    "GENESIS_PREV",
    "AuditChainError",
    "AuditEntry",
    "AuditHead",
    "AuditLog",
    "Base",
    "Batch",
    "Certificate",
    "Device",
    "DeviceState",
    "Command",
    "Enrollment",
    "FirmwareAssignment",
    "FirmwareRelease",
    "Nonce",
    "RevocationEvent",
    "Rotation",
    "RotationState",
    "Telemetry",
    "UTCDateTime",
    "entry_hash",
    "format_time",
    "utcnow",
]
