"""The devices slice's rules: manifest import, device listing, lookup and state transitions.

Scope:

- :meth:`DeviceService.import_manifest`: the manifest is checked with
  ``iotid.spec.manifest.verify_manifest`` against the issuance root the service was configured
  with; a batch already imported with the same canonical bytes is a no-op (idempotent), with other
  bytes a :class:`Conflict`; a UID already registered elsewhere is a :class:`Conflict`; otherwise
  the batch and every card (as a *manufactured* device) are inserted with one ``batch.imported``
  audit entry, all in one transaction.
- listing with filters and keyset paging, one device, and :meth:`lookup_manifest_card`, the
  deny-by-default question enrollment asks (None for anything that is not a registered UID).
- :func:`transition_device`: one state change under a row lock, with its audit entry, inside the
  caller's transaction (other slices compose it); :meth:`DeviceService.transition` wraps it in a
  transaction of its own.

Results are frozen dataclasses detached from the session, safe to hand to the API layer.
Not in scope: SQL (``repository``), HTTP (the API), who the actor is (authentication), what
happens around a transition (enrollment, rotation and revocation slices).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from iotid.fleet.db import Database
from iotid.fleet.devices.repository import DeviceRepository
from iotid.fleet.errors import Conflict, InvalidInput, NotFound
from iotid.fleet.models import ALLOWED_TRANSITIONS, AuditLog, Batch, Device, DeviceState, utcnow
from iotid.spec.manifest import (
    Manifest,
    ManifestError,
    alg_name,
    certificate_sha256,
    verify_manifest,
)

__all__ = [
    "DevicePage",
    "DeviceService",
    "DeviceView",
    "ImportResult",
    "ManifestCardRecord",
    "normalize_uid",
    "transition_device",
]

_UID_HEX = re.compile(r"(?:[0-9A-Fa-f]{2}){1,32}")
_PREFIX_HEX = re.compile(r"[0-9A-Fa-f]{1,64}")
MAX_PAGE = 1000


def normalize_uid(uid: str | bytes) -> str:
    """A UID (bytes, or hex in any case) as the registry spells it: upper-case hex."""
    if isinstance(uid, bytes):
        if not 1 <= len(uid) <= 32:
            raise InvalidInput("device.bad_uid", "a UID is 1 to 32 bytes")
        return uid.hex().upper()
    text = uid.strip()
    if _UID_HEX.fullmatch(text) is None:
        raise InvalidInput("device.bad_uid", "a UID is 1 to 32 bytes in hexadecimal")
    return text.upper()


@dataclass(frozen=True)
class DeviceView:
    uid: str
    batch: str
    algorithm: str
    state: DeviceState
    #: DER SubjectPublicKeyInfo of the identity key (None: RSA batch, not enrolled yet).
    identity_spki: bytes | None
    attestation_cert_sha256: str
    key_epoch: int
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, device: Device) -> DeviceView:
        return cls(
            uid=device.uid,
            batch=device.batch.name,
            algorithm=device.batch.algorithm,
            state=DeviceState(device.state),
            identity_spki=device.identity_spki,
            attestation_cert_sha256=device.attestation_cert_sha256,
            key_epoch=device.key_epoch,
            created_at=device.created_at,
            updated_at=device.updated_at,
        )


@dataclass(frozen=True)
class DevicePage:
    items: tuple[DeviceView, ...]
    #: Pass as ``cursor`` for the next page; None on the last page.
    next_cursor: str | None


@dataclass(frozen=True)
class ImportResult:
    batch: str
    manifest_sha256: str
    devices: int
    #: False when the same manifest had already been imported (nothing changed).
    created: bool


@dataclass(frozen=True)
class ManifestCardRecord:
    """What the registry knows of one manufactured card: the enrollment checks' reference."""

    uid: str
    batch: str
    algorithm: str
    #: The manifest's identity key (EC) or, for RSA, the attested key once enrolled (else None).
    identity_spki: bytes | None
    attestation_cert_sha256: str
    batch_ca_pem: str
    batch_ca_sha256: str
    root_sha256: str
    state: DeviceState
    key_epoch: int


def _check_edges(from_states: Collection[DeviceState], to_state: DeviceState) -> None:
    if not from_states:
        raise ValueError("a transition needs at least one state to start from")
    for state in from_states:
        if to_state not in ALLOWED_TRANSITIONS[state]:
            raise ValueError(f"{state.value} -> {to_state.value} is not a device transition")


def transition_device(
    session: Session,
    uid: str,
    from_states: Collection[DeviceState],
    to_state: DeviceState,
    *,
    actor: str,
    details: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> Device:
    """Move one device (normalised ``uid``) to ``to_state`` inside the caller's transaction.

    The row stays locked until that transaction ends. Raises NotFound for an unknown UID and
    Conflict when the current state is not in ``from_states``; ValueError for an illegal edge
    (a programming error, not a client's).
    """
    _check_edges(from_states, to_state)
    device = DeviceRepository(session).lock_device(uid)
    if device is None:
        raise NotFound("device.not_found", f"no device {uid}")
    current = DeviceState(device.state)
    if current not in from_states:
        expected = ", ".join(sorted(s.value for s in from_states))
        raise Conflict(
            "device.wrong_state", f"device {uid} is {current.value}, expected one of: {expected}"
        )
    when = now or utcnow()
    device.state = to_state
    device.updated_at = when
    AuditLog(session).append(
        actor=actor,
        action="device.state_changed",
        subject=f"device:{uid}",
        details={**(details or {}), "from": current.value, "to": to_state.value},
        now=when,
    )
    return device


class DeviceService:
    """Devices and batches of one fleet, trusting manifests issued under ``issuance_root``."""

    def __init__(
        self,
        db: Database,
        issuance_root: x509.Certificate,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._db = db
        self._root = issuance_root
        self._clock = clock

    # -- import ----------------------------------------------------------------------------------
    def import_manifest(self, manifest: bytes, signature: bytes, *, actor: str) -> ImportResult:
        try:
            parsed = verify_manifest(manifest, signature, self._root)
        except ManifestError as exc:
            raise InvalidInput("manifest.invalid", str(exc)) from None
        digest = hashlib.sha256(manifest).hexdigest()
        try:
            return self._import_once(parsed, manifest, signature, digest, actor)
        except IntegrityError:
            # Imports are serialised (repository.lock_imports), so this takes a registry written
            # by something else at the same time; decide again against what is now there.
            try:
                return self._import_once(parsed, manifest, signature, digest, actor)
            except IntegrityError:
                raise Conflict(
                    "batch.concurrent_import", "the registry changed during the import; retry"
                ) from None

    def _import_once(
        self, manifest: Manifest, data: bytes, signature: bytes, digest: str, actor: str
    ) -> ImportResult:
        with self._db.transaction() as session:
            repo = DeviceRepository(session)
            repo.lock_imports()
            existing = repo.batch_by_name(manifest.batch)
            if existing is not None:
                if existing.manifest_sha256 != digest:
                    raise Conflict(
                        "batch.conflict",
                        f"batch {manifest.batch} was already imported with other content",
                    )
                return ImportResult(manifest.batch, digest, repo.count_devices(existing), False)
            uids = [card.uid.hex().upper() for card in manifest.cards]
            taken = repo.existing_uids(uids)
            if taken:
                raise Conflict(
                    "device.uid_taken",
                    f"{len(taken)} UID(s) already registered in another batch, e.g. {taken[0]}",
                )
            now = self._clock()
            ca_sha256 = certificate_sha256(manifest.batch_ca)
            algorithm = alg_name(manifest.algorithm)
            batch = repo.add_batch(
                Batch(
                    name=manifest.batch,
                    algorithm=algorithm,
                    batch_ca_pem=manifest.batch_ca.public_bytes(serialization.Encoding.PEM).decode(
                        "ascii"
                    ),
                    batch_ca_sha256=ca_sha256,
                    root_sha256=manifest.root_sha256,
                    manifest_sha256=digest,
                    manifest_json=data.decode("ascii"),
                    manifest_signature=signature,
                    imported_at=now,
                )
            )
            count = repo.add_devices(
                {
                    "uid": uid,
                    "batch_id": batch.id,
                    "state": DeviceState.MANUFACTURED,
                    "identity_spki": _spki(card.identity_public_key),
                    "attestation_cert_sha256": card.attestation_cert_sha256,
                    "key_epoch": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for uid, card in zip(uids, manifest.cards, strict=True)
            )
            AuditLog(session).append(
                actor=actor,
                action="batch.imported",
                subject=f"batch:{manifest.batch}",
                details={
                    "manifest_sha256": digest,
                    "batch_ca_sha256": ca_sha256,
                    "root_sha256": manifest.root_sha256,
                    "algorithm": algorithm,
                    "devices": count,
                },
                now=now,
            )
            return ImportResult(manifest.batch, digest, count, True)

    # -- queries ---------------------------------------------------------------------------------
    def list_devices(
        self,
        *,
        state: DeviceState | str | None = None,
        batch: str | None = None,
        uid_prefix: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> DevicePage:
        """Devices ordered by UID; ``cursor`` is the previous page's ``next_cursor``."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput("page.bad_limit", f"limit must be between 1 and {MAX_PAGE}")
        wanted_state: DeviceState | None = None
        if state is not None:
            try:
                wanted_state = DeviceState(state)
            except ValueError:
                raise InvalidInput("device.bad_state", "unknown device state") from None
        if uid_prefix is not None and _PREFIX_HEX.fullmatch(uid_prefix) is None:
            raise InvalidInput("device.bad_uid_prefix", "a UID prefix is hexadecimal")
        after = None
        if cursor is not None:
            try:
                after = normalize_uid(cursor)
            except InvalidInput:
                raise InvalidInput("page.bad_cursor", "the cursor is not a UID") from None
        with self._db.transaction(write=False) as session:
            rows = DeviceRepository(session).list_devices(
                state=wanted_state,
                batch=batch,
                uid_prefix=None if uid_prefix is None else uid_prefix.upper(),
                after=after,
                limit=limit + 1,
            )
            items = tuple(DeviceView.of(d) for d in rows[:limit])
        next_cursor = items[-1].uid if len(rows) > limit else None
        return DevicePage(items, next_cursor)

    def get_device(self, uid: str | bytes) -> DeviceView:
        key = normalize_uid(uid)
        with self._db.transaction(write=False) as session:
            device = DeviceRepository(session).device(key)
            if device is None:
                raise NotFound("device.not_found", f"no device {key}")
            return DeviceView.of(device)

    def lookup_manifest_card(self, uid: str | bytes) -> ManifestCardRecord | None:
        """The manifest's record of ``uid``; None for anything not registered (deny by default)."""
        try:
            key = normalize_uid(uid)
        except InvalidInput:
            return None
        with self._db.transaction(write=False) as session:
            device = DeviceRepository(session).device(key)
            if device is None:
                return None
            return ManifestCardRecord(
                uid=device.uid,
                batch=device.batch.name,
                algorithm=device.batch.algorithm,
                identity_spki=device.identity_spki,
                attestation_cert_sha256=device.attestation_cert_sha256,
                batch_ca_pem=device.batch.batch_ca_pem,
                batch_ca_sha256=device.batch.batch_ca_sha256,
                root_sha256=device.batch.root_sha256,
                state=DeviceState(device.state),
                key_epoch=device.key_epoch,
            )

    # -- transitions -----------------------------------------------------------------------------
    def transition(
        self,
        uid: str | bytes,
        from_states: Collection[DeviceState],
        to_state: DeviceState,
        *,
        actor: str,
        details: Mapping[str, Any] | None = None,
    ) -> DeviceView:
        """One state change in its own transaction (see :func:`transition_device`)."""
        key = normalize_uid(uid)
        with self._db.transaction() as session:
            device = transition_device(
                session, key, from_states, to_state, actor=actor, details=details, now=self._clock()
            )
            return DeviceView.of(device)


def _spki(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | None) -> bytes | None:
    if key is None:
        return None
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
