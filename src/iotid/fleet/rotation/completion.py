"""Moving a pending rotation to its end, inside the caller's transaction and device lock.

Scope: the write steps shared by :class:`~iotid.fleet.rotation.service.RotationService` and by
other slices that already hold a device's row lock (the enrollment slice recovering a rotation
the card COMMITted but the fleet never completed):

- :func:`commit_locked`: Rotation ``committed``, the registry's identity key and epoch move,
  the operator's schedule (``rotation_due_at``) is cleared, ``rotating`` -> ``active``, every
  certificate of an older epoch revoked (``superseded``, with a revocation event so every fleet
  process drops connections made with them), audit ``rotation.completed``;
- :func:`abort_locked`: Rotation ``aborted``, its certificate revoked, optionally back to
  ``active``, audit ``rotation.aborted``;
- :func:`complete_pending_in` and :func:`pending_key_in`: the enrollment slice's entry points.

Every function runs in the caller's write transaction with the device row already locked
(``DeviceRepository.lock_device``). Not in scope: checks on requests (``service``), SQL
(``repository``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from sqlalchemy.orm import Session

from iotid.fleet.devices.service import transition_device
from iotid.fleet.issuing.ca import spki_sha256
from iotid.fleet.models import AuditLog, Certificate, Device, DeviceState, Rotation, RotationState
from iotid.fleet.rotation.repository import RotationRepository

__all__ = [
    "SUPERSEDED",
    "abort_locked",
    "commit_locked",
    "complete_pending_in",
    "device_actor",
    "pending_key_in",
    "revoke_superseded",
]

#: CRL reason of certificates a rotation retires (``x509.ReasonFlags.superseded.value``).
SUPERSEDED = x509.ReasonFlags.superseded.value


def device_actor(uid: str) -> str:
    return f"device:{uid}"


def commit_locked(
    session: Session, device: Device, rotation: Rotation, now: dt.datetime, *, via: str
) -> None:
    repo = RotationRepository(session)
    actor = device_actor(device.uid)
    from_epoch = device.key_epoch
    rotation.state = RotationState.COMMITTED.value
    rotation.completed_at = now
    device.key_epoch = rotation.to_epoch
    device.identity_spki = rotation.new_spki
    device.rotation_due_at = None  # the operator's schedule is fulfilled
    device.updated_at = now
    if DeviceState(device.state) == DeviceState.ROTATING:
        transition_device(
            session,
            device.uid,
            [DeviceState.ROTATING],
            DeviceState.ACTIVE,
            actor=actor,
            details={"epoch": rotation.to_epoch},
            now=now,
        )
    retired = revoke_superseded(
        session,
        device.uid,
        repo.live_certificates(device.id, below_epoch=rotation.to_epoch),
        actor,
        now,
    )
    AuditLog(session).append(
        actor=actor,
        action="rotation.completed",
        subject=f"device:{device.uid}",
        details={
            "from_epoch": from_epoch,
            "to_epoch": rotation.to_epoch,
            "spki_sha256": spki_sha256(rotation.new_spki),
            "superseded": retired,
            "via": via,
        },
        now=now,
    )


def revoke_superseded(
    session: Session,
    uid: str,
    certs: Sequence[Certificate],
    actor: str,
    now: dt.datetime,
) -> list[str]:
    rows = list(certs)
    for row in rows:
        row.revoked_at = now
        row.reason = SUPERSEDED
    serials = [row.serial for row in rows]
    if serials:
        RotationRepository(session).revocation_event(uid, serials, SUPERSEDED, actor, now)
    return serials


def complete_pending_in(
    session: Session, device: Device, epoch: int, spki: bytes, *, now: dt.datetime, via: str
) -> bool:
    """Inside the CALLER's write transaction, with ``device`` row-locked by the caller
    (``DeviceRepository.lock_device``): if the device's pending rotation is to ``epoch`` and
    key ``spki``, commit it (as :meth:`RotationService.complete` does) and return True; False
    when there is no such pending rotation (nothing changed). For the enrollment slice, which
    holds the device lock while it decides on a VERIFIED quote: calling
    :meth:`RotationService.complete_from_quote` there would wait for its own lock."""
    rotation = RotationRepository(session).pending(device.id)
    if rotation is None or rotation.to_epoch != epoch or rotation.new_spki != spki:
        return False
    commit_locked(session, device, rotation, now, via=via)
    return True


def pending_key_in(session: Session, device: Device) -> tuple[int, bytes] | None:
    """(new epoch, new SPKI DER) of the device's pending rotation, or None: what a quote from a
    card that COMMITted but never completed shows (the enrollment slice's registry lookup for a
    ``rotating`` device)."""
    rotation = RotationRepository(session).pending(device.id)
    return None if rotation is None else (rotation.to_epoch, rotation.new_spki)


def abort_locked(
    session: Session,
    device: Device,
    rotation: Rotation,
    actor: str,
    now: dt.datetime,
    *,
    back_to_active: bool,
) -> None:
    repo = RotationRepository(session)
    rotation.state = RotationState.ABORTED.value
    rotation.completed_at = now
    certs = repo.live_certificates(
        device.id, epoch=rotation.to_epoch, spki_sha256=spki_sha256(rotation.new_spki)
    )
    revoked = revoke_superseded(session, device.uid, certs, actor, now)
    if back_to_active:
        transition_device(
            session,
            device.uid,
            [DeviceState.ROTATING],
            DeviceState.ACTIVE,
            actor=actor,
            now=now,
        )
    AuditLog(session).append(
        actor=actor,
        action="rotation.aborted",
        subject=f"device:{device.uid}",
        details={
            "to_epoch": rotation.to_epoch,
            "new_spki_sha256": spki_sha256(rotation.new_spki),
            "revoked": revoked,
        },
        now=now,
    )
