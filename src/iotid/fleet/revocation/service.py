"""The revocation slice's rules: revoke one device, or a whole batch (its attestation CA).

Scope: :class:`RevocationService`. A revocation is ONE transaction, under row locks, that

- moves the device(s) to ``revoked`` (a device through ``transition_device`` and its
  ``device.state_changed`` entry; a batch in one bulk statement over its locked rows) and sets
  ``Device.revoked_at`` (a batch also sets ``Batch.revoked_at`` / ``revocation_reason``);
- revokes every unrevoked certificate of those devices (``revoked_at``, RFC 5280 CRLReason);
- inserts a :class:`RevocationEvent` (a batch event lists EVERY device UID of the batch, so the
  gateways refuse them all) and audits it: ``device.revoked`` (subject ``device:UID``) or one
  ``batch.revoked`` entry (subject ``batch:NAME``) carrying the counts, the UIDs and the event id
  (not one entry per device: a 10k-device batch stays one bounded transaction);
- on PostgreSQL ``pg_notify('iotid_revocation', '<event id>')``, delivered at commit.

Idempotence: revoking what is already revoked answers 200 with the existing state
(``created=False``, the latest event about it, nothing written). A terminal device (revoked or
retired) keeps its state; if it still had unrevoked certificates they are revoked with a new
event. A revoked batch revoked again likewise only sweeps up what is still live.

Reasons are RFC 5280 CRLReasons named as ``x509.ReasonFlags`` names (the API's spelling:
key_compromise, superseded, cessation_of_operation, affiliation_changed, unspecified; a batch
also ca_compromise; the RFC spelling ``keyCompromise`` is accepted too). The registry stores the
``ReasonFlags`` *value* (``keyCompromise``), the audit log the name. Certificates revoked with a
batch get ca_compromise when the batch CA was compromised (reason key_compromise or
ca_compromise), else the batch's reason.

Not in scope: SQL (``repository``), HTTP (``api``), propagation to processes (``follower``),
OCSP/CRL (``ocsp``, ``crl``), who the actor is.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from iotid.fleet.db import Database
from iotid.fleet.devices.repository import DeviceRepository
from iotid.fleet.devices.service import normalize_uid, transition_device
from iotid.fleet.errors import InvalidInput, NotFound
from iotid.fleet.issuing import FleetKeys
from iotid.fleet.models import AuditLog, DeviceState, RevocationEvent, utcnow
from iotid.fleet.revocation.repository import RevocationRepository

__all__ = ["BATCH_REASONS", "DEVICE_REASONS", "RevocationResult", "RevocationService"]

R = x509.ReasonFlags
DEVICE_REASONS: frozenset[R] = frozenset(
    {R.key_compromise, R.superseded, R.cessation_of_operation, R.affiliation_changed, R.unspecified}
)
BATCH_REASONS: frozenset[R] = DEVICE_REASONS | {R.ca_compromise}
_TERMINAL = frozenset({DeviceState.REVOKED, DeviceState.RETIRED})


@dataclass(frozen=True)
class RevocationResult:
    #: The event that revoked it (None: revoked outside this slice, e.g. a legacy row).
    event_id: int | None
    kind: str
    subject: str
    revoked_at: dt.datetime | None
    #: Devices and certificates revoked by THIS call (0 when nothing new).
    devices: int
    certificates: int
    #: False when everything was already revoked (nothing written).
    created: bool


def _reason(reason: str, allowed: frozenset[R]) -> R:
    """The CRLReason named ``reason`` (``key_compromise``; the RFC spelling ``keyCompromise``)."""
    for flag in allowed:
        if reason in (flag.name, flag.value):
            return flag
    names = ", ".join(sorted(flag.name for flag in allowed))
    raise InvalidInput("revocation.bad_reason", f"reason must be one of: {names}")


class RevocationService:
    """Revokes devices and batches of one fleet (``keys`` names its issuing CA)."""

    def __init__(
        self, db: Database, keys: FleetKeys, *, clock: Callable[[], dt.datetime] = utcnow
    ) -> None:
        self._db = db
        self._keys = keys
        self._clock = clock

    def revoke_device(self, uid: str | bytes, reason: str, *, actor: str) -> RevocationResult:
        key = normalize_uid(uid)
        why = _reason(reason, DEVICE_REASONS)
        with self._db.transaction() as session:
            repo = RevocationRepository(session)
            repo.lock_revocations()
            device = DeviceRepository(session).lock_device(key)
            if device is None:
                raise NotFound("device.not_found", f"no device {key}")
            now = self._clock()
            state = DeviceState(device.state)
            moved = state not in _TERMINAL
            if moved:
                transition_device(
                    session,
                    key,
                    {state},
                    DeviceState.REVOKED,
                    actor=actor,
                    details={"reason": why.name},
                    now=now,
                )
            serials = repo.revoke_certificates(device_id=device.id, now=now, reason=why.value)
            if not moved and not serials:
                previous = repo.latest_event("device", key) or repo.latest_event(
                    "batch", device.batch.name
                )
                return RevocationResult(
                    None if previous is None else previous.id,
                    "device",
                    key,
                    device.revoked_at,
                    0,
                    0,
                    False,
                )
            if device.revoked_at is None:
                device.revoked_at = now
            device.updated_at = now
            event = repo.add_event(
                RevocationEvent(
                    kind="device",
                    subject=key,
                    uids=[key],
                    serials=serials,
                    reason=why.value,
                    created_by=actor,
                    created_at=now,
                )
            )
            AuditLog(session).append(
                actor=actor,
                action="device.revoked",
                subject=f"device:{key}",
                details={
                    "event_id": event.id,
                    "reason": why.name,
                    "from": state.value,
                    "serials": serials,
                },
                now=now,
            )
            repo.notify(event.id)
            return RevocationResult(
                event.id, "device", key, device.revoked_at, int(moved), len(serials), True
            )

    def revoke_batch(self, name: str, reason: str, *, actor: str) -> RevocationResult:
        why = _reason(reason, BATCH_REASONS)
        cert_reason = R.ca_compromise if why in (R.ca_compromise, R.key_compromise) else why
        with self._db.transaction() as session:
            repo = RevocationRepository(session)
            repo.lock_revocations()
            batch = repo.lock_batch(name)
            if batch is None:
                raise NotFound("batch.not_found", f"no batch {name}")
            devices = repo.lock_batch_devices(batch.id)
            live = [uid for _id, uid, state in devices if state not in _TERMINAL]
            now = self._clock()
            already = batch.revoked_at is not None
            if live:
                repo.revoke_live_devices_of_batch(batch.id, now)
            serials = repo.revoke_certificates(batch_id=batch.id, now=now, reason=cert_reason.value)
            if already and not live and not serials:
                previous = repo.latest_event("batch", name)
                return RevocationResult(
                    None if previous is None else previous.id,
                    "batch",
                    name,
                    batch.revoked_at,
                    0,
                    0,
                    False,
                )
            if not already:
                batch.revoked_at = now
                batch.revocation_reason = why.value
            uids = [uid for _id, uid, _state in devices]
            event = repo.add_event(
                RevocationEvent(
                    kind="batch",
                    subject=name,
                    uids=uids,
                    serials=serials,
                    reason=why.value,
                    created_by=actor,
                    created_at=now,
                )
            )
            AuditLog(session).append(
                actor=actor,
                action="batch.revoked",
                subject=f"batch:{name}",
                details={
                    "event_id": event.id,
                    "reason": why.name,
                    "certificate_reason": cert_reason.name,
                    "devices": len(live),
                    "certificates": len(serials),
                    "revoked_uids": live,
                    "batch_ca_sha256": batch.batch_ca_sha256,
                },
                now=now,
            )
            repo.notify(event.id)
            return RevocationResult(
                event.id, "batch", name, batch.revoked_at, len(live), len(serials), True
            )
