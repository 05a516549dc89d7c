"""The lifecycle tables around a registered device: evidence, rotations, data, firmware, events.

Scope: the SQLAlchemy models

- :class:`Enrollment`: one accepted quote (the COSE bytes verbatim, so anyone can re-verify it)
  and the certificate it earned; what ``trace`` walks from a certificate back to the batch;
- :class:`Rotation`: a two-phase key rotation (``pending`` -> ``committed`` | ``aborted``): the
  card's proof of continuity, the quote covering the pending key and the authority's
  acknowledgement are stored before the acknowledgement leaves, so a retry after a crash gets
  the same answer;
- :class:`Telemetry`: payloads a device signed with its identity key, verified on arrival;
- :class:`Command`: operator commands, ECIES-encrypted to the device's identity key;
- :class:`FirmwareRelease` and :class:`FirmwareAssignment` (one release per group);
- :class:`RevocationEvent`: every revocation, in commit order; its ``id`` is what fleet
  processes follow to drop connections (PostgreSQL NOTIFY wakes them; SQLite processes poll).

Conventions as in ``registry``: UIDs upper-case hex, SPKI DER, SHA-256 lower-case hex.
Not in scope: SQL (the slices' repositories), the rules (services).
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import JSON, ForeignKey, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from iotid.fleet.models.base import Base, UTCDateTime, utcnow

__all__ = [
    "Command",
    "Enrollment",
    "FirmwareAssignment",
    "FirmwareRelease",
    "RevocationEvent",
    "Rotation",
    "RotationState",
    "Telemetry",
]


class Enrollment(Base):
    __tablename__ = "enrollments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="RESTRICT"), index=True
    )
    #: The tagged COSE_Sign1 quote as received.
    quote: Mapped[bytes] = mapped_column(LargeBinary)
    #: SHA-256 of the attestation (leaf) certificate and of the batch CA in the quote's x5chain.
    attestation_cert_sha256: Mapped[str] = mapped_column(String(64))
    batch_ca_sha256: Mapped[str] = mapped_column(String(64))
    key_epoch: Mapped[int] = mapped_column(Integer)
    spki_sha256: Mapped[str] = mapped_column(String(64))
    #: Serial of the client certificate issued for this enrollment (``Certificate.serial``).
    certificate_serial: Mapped[str] = mapped_column(String(42))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"Enrollment(device_id={self.device_id}, serial={self.certificate_serial!r})"


class RotationState(StrEnum):
    PENDING = "pending"
    COMMITTED = "committed"
    ABORTED = "aborted"


class Rotation(Base):
    __tablename__ = "rotations"
    __table_args__ = (UniqueConstraint("device_id", "to_epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="RESTRICT"), index=True
    )
    from_epoch: Mapped[int] = mapped_column(Integer)
    to_epoch: Mapped[int] = mapped_column(Integer)
    old_spki: Mapped[bytes] = mapped_column(LargeBinary)
    new_spki: Mapped[bytes] = mapped_column(LargeBinary)
    #: The fleet nonce the proof is bound to (hex); single use through the nonces table.
    nonce: Mapped[str] = mapped_column(String(128))
    proof: Mapped[bytes] = mapped_column(LargeBinary)
    #: The quote whose pending-key claim (-70006) names ``new_spki``.
    quote: Mapped[bytes] = mapped_column(LargeBinary)
    ack: Mapped[bytes] = mapped_column(LargeBinary)
    #: ``pending`` -> ``committed`` | ``aborted`` (plain string: see ``RotationState``).
    state: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def __repr__(self) -> str:
        return f"Rotation(device_id={self.device_id}, to_epoch={self.to_epoch}, {self.state})"


class Telemetry(Base):
    __tablename__ = "telemetry"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="RESTRICT"), index=True
    )
    key_epoch: Mapped[int] = mapped_column(Integer)
    #: The signed payload bytes exactly as received, and the identity key's signature.
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    def __repr__(self) -> str:
        return f"Telemetry(device_id={self.device_id}, bytes={len(self.payload)})"


class Command(Base):
    __tablename__ = "commands"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="RESTRICT"), index=True
    )
    #: The key epoch the command is encrypted to, and the ECIES blob (``iotid.crypto.ecies``).
    key_epoch: Mapped[int] = mapped_column(Integer)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def __repr__(self) -> str:
        return f"Command(id={self.id}, delivered={self.delivered_at is not None})"


class FirmwareRelease(Base):
    __tablename__ = "firmware_releases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Unique release name; ``version`` as the image states it (MCUboot ``1.2.3+4``).
    name: Mapped[str] = mapped_column(String(64), unique=True)
    version: Mapped[str] = mapped_column(String(64))
    #: ``mcuboot`` (signature in the image's TLVs) or ``raw`` (detached signed statement).
    kind: Mapped[str] = mapped_column(String(16))
    image: Mapped[bytes] = mapped_column(LargeBinary)
    signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"FirmwareRelease(name={self.name!r}, version={self.version!r})"


class FirmwareAssignment(Base):
    """The release a group of devices should run (one row per group)."""

    __tablename__ = "firmware_assignments"

    group_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    release_id: Mapped[int] = mapped_column(
        ForeignKey("firmware_releases.id", ondelete="RESTRICT"), index=True
    )
    assigned_by: Mapped[str] = mapped_column(String(128))
    assigned_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"FirmwareAssignment(group={self.group_name!r}, release_id={self.release_id})"


class RevocationEvent(Base):
    __tablename__ = "revocation_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: ``device`` or ``batch``; ``subject`` the UID or the batch name.
    kind: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(64))
    #: The revoked device UIDs (a batch revocation lists every device of the batch).
    uids: Mapped[list[str]] = mapped_column(JSON)
    #: Certificate serials revoked by this event (hex).
    serials: Mapped[list[str]] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    def __repr__(self) -> str:
        return f"RevocationEvent(id={self.id}, {self.kind}:{self.subject})"
