"""The registry tables: batches, devices and the client certificates issued to them.

Scope: the SQLAlchemy models :class:`Batch`, :class:`Device`, :class:`Certificate`, the device
lifecycle :class:`DeviceState` and its legal edges :data:`ALLOWED_TRANSITIONS` (DESIGN.md
section 9: manufactured -> enrolled -> active -> (rotating) -> revoked / retired).

Conventions: a UID is stored as upper-case hex (the manifest's spelling); public keys as DER
SubjectPublicKeyInfo; fingerprints as lower-case hex SHA-256; a certificate serial as lower-case
hex of the integer without leading zeros (``format(serial, "x")``).

Not in scope: SQL (the slices' repositories), who may move a device along which edge (the
services), the schema's history (``iotid.fleet.migrations``).
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import Enum, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from iotid.fleet.models.base import Base, UTCDateTime, utcnow

__all__ = ["ALLOWED_TRANSITIONS", "Batch", "Certificate", "Device", "DeviceState"]


class DeviceState(StrEnum):
    MANUFACTURED = "manufactured"
    ENROLLED = "enrolled"
    ACTIVE = "active"
    ROTATING = "rotating"
    REVOKED = "revoked"
    RETIRED = "retired"


#: Every legal state change. Revoked and retired are terminal (a revoked device may only be
#: retired); nothing returns to ``manufactured``.
ALLOWED_TRANSITIONS: dict[DeviceState, frozenset[DeviceState]] = {
    DeviceState.MANUFACTURED: frozenset(
        {DeviceState.ENROLLED, DeviceState.REVOKED, DeviceState.RETIRED}
    ),
    DeviceState.ENROLLED: frozenset({DeviceState.ACTIVE, DeviceState.REVOKED, DeviceState.RETIRED}),
    DeviceState.ACTIVE: frozenset({DeviceState.ROTATING, DeviceState.REVOKED, DeviceState.RETIRED}),
    DeviceState.ROTATING: frozenset({DeviceState.ACTIVE, DeviceState.REVOKED, DeviceState.RETIRED}),
    DeviceState.REVOKED: frozenset({DeviceState.RETIRED}),
    DeviceState.RETIRED: frozenset(),
}

DEVICE_STATE_TYPE = Enum(
    DeviceState,
    name="device_state",
    native_enum=False,  # VARCHAR + CHECK on both back ends: adding a state is a plain migration
    create_constraint=True,
    length=16,
    values_callable=lambda states: [s.value for s in states],
    validate_strings=True,
)


class Batch(Base):
    """One imported batch manifest (``iotid-manifest-v1``), kept verbatim as evidence."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: The manifest's spelling: p256, p384, rsa2048, rsa3072.
    algorithm: Mapped[str] = mapped_column(String(16))
    batch_ca_pem: Mapped[str] = mapped_column(Text)
    batch_ca_sha256: Mapped[str] = mapped_column(String(64), index=True)
    #: SHA-256 of the issuance root certificate's DER, as the manifest names it.
    root_sha256: Mapped[str] = mapped_column(String(64))
    #: SHA-256 of the canonical manifest bytes: equal means the same manifest (idempotent import).
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    #: The canonical manifest and its detached signature, so anyone can re-verify the import.
    manifest_json: Mapped[str] = mapped_column(Text)
    manifest_signature: Mapped[bytes] = mapped_column(LargeBinary)
    imported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Set when the batch attestation CA is revoked: no device of the batch may enroll, rotate
    #: or connect any more, and every certificate issued to them is revoked with it.
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: RFC 5280 §5.3.1 CRLReason (``x509.ReasonFlags`` value) of the batch CA's revocation.
    revocation_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)

    devices: Mapped[list[Device]] = relationship(back_populates="batch", lazy="raise")

    def __repr__(self) -> str:
        return f"Batch(name={self.name!r}, algorithm={self.algorithm!r})"


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="RESTRICT"), index=True)
    state: Mapped[DeviceState] = mapped_column(DEVICE_STATE_TYPE, index=True)
    #: DER SubjectPublicKeyInfo of the identity key: the manifest's prediction for EC batches;
    #: NULL for RSA batches until enrollment records the attested key.
    identity_spki: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    attestation_cert_sha256: Mapped[str] = mapped_column(String(64))
    key_epoch: Mapped[int] = mapped_column(Integer, default=0)
    #: Firmware rollout group (``default`` until an operator assigns another).
    group_name: Mapped[str] = mapped_column(String(64), default="default", index=True)
    #: The firmware version the device last reported as running (``None``: never reported).
    firmware_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    enrolled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: When an operator asked this device to rotate its identity key (``None``: not asked, or
    #: the rotation completed); the gateway's whoami answers ``rotation_due`` from it.
    rotation_due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    batch: Mapped[Batch] = relationship(back_populates="devices", lazy="raise")
    certificates: Mapped[list[Certificate]] = relationship(back_populates="device", lazy="raise")

    def __repr__(self) -> str:
        return f"Device(uid={self.uid!r}, state={self.state.value!r})"


class Certificate(Base):
    """A client certificate the fleet's issuing CA issued to a device."""

    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial: Mapped[str] = mapped_column(String(42), unique=True)
    device_id: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="RESTRICT"), index=True
    )
    der: Mapped[bytes] = mapped_column(LargeBinary)
    #: The identity-key epoch the certificate was issued for, and that key's SPKI SHA-256.
    key_epoch: Mapped[int] = mapped_column(Integer, default=0)
    spki_sha256: Mapped[str] = mapped_column(String(64), index=True)
    #: SHA-256 of the issuing CA certificate's DER (OCSP and CRLs are per issuing CA).
    issuer_sha256: Mapped[str] = mapped_column(String(64), index=True)
    not_before: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    not_after: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: RFC 5280 §5.3.1 CRLReason, as ``cryptography``'s ``x509.ReasonFlags`` value.
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    device: Mapped[Device] = relationship(back_populates="certificates", lazy="raise")

    def __repr__(self) -> str:
        return f"Certificate(serial={self.serial!r}, revoked={self.revoked_at is not None})"
