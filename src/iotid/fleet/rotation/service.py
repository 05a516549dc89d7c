"""The rotation slice's rules: a two-phase identity-key rotation that a crash cannot tear.

Scope: :class:`RotationService` (DESIGN.md section 9: nonce-bound, epoch + 1, refused for a
revoked key, two-phase so a crash at any step loses nothing):

1. :meth:`~RotationService.new_nonce`: a single-use nonce of purpose ``rotate`` bound to the UID.
2. :meth:`~RotationService.prepare`: the card's ROTATE answer (new epoch, new SPKI, proof) and an
   ATTEST quote over the same nonce. Checks, each a ``DomainError`` with a stable code: the
   device exists, is neither revoked nor of a revoked batch, is enrolled/active (or rotating: see
   below); the epoch is the registry's + 1; the nonce was issued to this UID for ``rotate``, is
   unexpired and unconsumed; the proof verifies under the registry's CURRENT key; the quote
   (``iotid.fleet.rotation.checks``) names this UID, this nonce, the current key and epoch, and
   exactly the new SPKI as the pending key. Then in ONE transaction under the device row lock:
   the nonce is consumed, a ``pending`` Rotation row stores proof, quote and the authority's
   acknowledgement, a client certificate for the new key (``key_epoch`` = the new epoch) is
   stored, the device goes to ``rotating``, with audit ``rotation.prepared`` and
   ``certificate.issued``. Everything returned was stored first: a retry after a crash (same
   nonce, epoch and new SPKI, proof valid) gets the stored acknowledgement and certificate
   back, the nonce's consumption notwithstanding. A new, fully checked request while another
   rotation is pending (the device restarted its rotation: the card's ROTATE replaced its
   pending key) supersedes it: the old pending rotation is aborted and its certificate revoked.
3. :meth:`~RotationService.complete`: the device connects with the new key's certificate (the
   card has COMMITted): the rotation is ``committed``, the registry's key and epoch move, the
   device is ``active``, every older certificate is revoked (``superseded``) so OCSP and CRLs
   stop vouching for the retired key. Idempotent. :meth:`~RotationService.observe_certificate`
   is the gateway's cheap per-connection form; :meth:`~RotationService.complete_from_quote`
   the enrollment path's (a verified quote shows the card at the pending epoch and key).
4. :meth:`~RotationService.abort`: pending -> aborted, device back to active, its new
   certificate revoked.

Every refusal leaves the registry (devices, rotations, certificates, nonces) unchanged; a
refusal about a known device is audited as ``rotation.refused``.

Not in scope: SQL (``repository``), the card (``iotid.se.applets.rotation``), HTTP
(``gateway``), purging retired keys on the card, renewing certificates of the current key.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.orm import Session

from iotid.fleet.db import Database
from iotid.fleet.devices.repository import DeviceRepository
from iotid.fleet.devices.service import normalize_uid, transition_device
from iotid.fleet.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound
from iotid.fleet.faults import crash_point
from iotid.fleet.issuing import FleetKeys
from iotid.fleet.issuing.ca import certificate_sha256, serial_hex, spki_sha256
from iotid.fleet.models import (
    AuditLog,
    Certificate,
    Device,
    DeviceState,
    Nonce,
    Rotation,
    RotationState,
    utcnow,
)
from iotid.fleet.rotation.checks import DeviceFacts, check_proof, check_quote, load_spki
from iotid.fleet.rotation.completion import (
    abort_locked,
    commit_locked,
    complete_pending_in,
    device_actor,
    pending_key_in,
)
from iotid.fleet.rotation.repository import PURPOSE, RotationRepository
from iotid.spec import rotation as spec

__all__ = ["PrepareResult", "RotationService", "complete_pending_in", "pending_key_in"]

NONCE_LEN = 32
_PREPARABLE = (DeviceState.ENROLLED, DeviceState.ACTIVE, DeviceState.ROTATING)


@dataclass(frozen=True)
class PrepareResult:
    """What the device needs to COMMIT and then connect with its new key."""

    uid: str
    epoch: int
    #: The rotation authority's signature over ``ack_tbs(uid, epoch, new SPKI, nonce)``.
    ack: bytes
    certificate: x509.Certificate
    #: The issuing CA certificate (the client certificate's issuer).
    chain: tuple[x509.Certificate, ...]
    serial: str
    not_after: dt.datetime
    #: True when this is the stored answer to an earlier identical request.
    replayed: bool = False

    def __repr__(self) -> str:
        return f"PrepareResult(uid={self.uid!r}, epoch={self.epoch}, serial={self.serial!r})"


def _check_not_revoked(device: Device) -> None:
    if device.revoked_at is not None or device.state == DeviceState.REVOKED:
        raise Forbidden("rotation.device_revoked", f"device {device.uid} is revoked")
    if device.batch.revoked_at is not None:
        raise Forbidden("rotation.batch_revoked", f"the batch of device {device.uid} is revoked")


def _check_nonce(row: Nonce | None, uid: str, now: dt.datetime) -> Nonce:
    if row is None or row.purpose != PURPOSE:
        raise Forbidden("rotation.nonce_unknown", "the rotation nonce was not issued")
    if row.device_uid != uid:
        raise Forbidden("rotation.nonce_wrong_device", "the nonce was issued to another device")
    if row.consumed_at is not None:
        raise Forbidden("rotation.nonce_reused", "the nonce was used already")
    if now > row.expires_at:
        raise Forbidden("rotation.nonce_expired", "the nonce has expired")
    return row


def _check_inputs(
    uid: bytes, nonce: object, epoch: object, new_spki: object, proof: object, quote: object
) -> None:
    if len(uid) != spec.UID_LEN:
        raise InvalidInput("rotation.bad_uid", f"a rotating card's UID is {spec.UID_LEN} bytes")
    if not isinstance(nonce, bytes) or not spec.NONCE_MIN <= len(nonce) <= spec.NONCE_MAX:
        raise InvalidInput("rotation.bad_nonce", "the nonce is 16 to 64 bytes")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 < epoch < 1 << 32:
        raise InvalidInput("rotation.bad_epoch", "the epoch is a positive u32")
    if not isinstance(new_spki, bytes) or not isinstance(proof, bytes) or not proof:
        raise InvalidInput("rotation.bad_request", "new_spki and proof are byte strings")
    if not isinstance(quote, bytes) or not quote:
        raise InvalidInput("rotation.bad_request", "the quote is a byte string")
    load_spki(new_spki)


class RotationService:
    """Identity-key rotations of one fleet (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        keys: FleetKeys,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        cert_lifetime: dt.timedelta = dt.timedelta(hours=24),
        nonce_ttl: dt.timedelta = dt.timedelta(seconds=300),
    ) -> None:
        if cert_lifetime <= dt.timedelta(0) or nonce_ttl <= dt.timedelta(0):
            raise ValueError("lifetimes must be positive")
        self._db = db
        self._keys = keys
        self._clock = clock
        self._lifetime = cert_lifetime
        self._ttl = nonce_ttl

    def __repr__(self) -> str:
        return f"RotationService({self._db!r})"

    # -- 1. nonce --------------------------------------------------------------------------------
    def new_nonce(self, uid: str | bytes) -> bytes:
        """A fresh rotate nonce for ``uid`` (single use, valid for the nonce TTL)."""
        key = normalize_uid(uid)
        now = self._clock()
        nonce = secrets.token_bytes(NONCE_LEN)
        with self._db.transaction() as session:
            device = DeviceRepository(session).device(key)
            if device is None:
                raise NotFound("device.not_found", f"no device {key}")
            _check_not_revoked(device)
            RotationRepository(session).add_nonce(nonce.hex(), key, now, now + self._ttl)
        return nonce

    # -- 2. prepare ------------------------------------------------------------------------------
    def prepare(
        self,
        uid: str | bytes,
        nonce: bytes,
        epoch: int,
        new_spki: bytes,
        proof: bytes,
        quote: bytes,
    ) -> PrepareResult:
        """Check the rotation request and store its acknowledgement and certificate (module
        docstring, step 2); the stored answer again for an identical retry."""
        key = normalize_uid(uid)
        try:
            _check_inputs(bytes.fromhex(key), nonce, epoch, new_spki, proof, quote)
            result = self._prepare(key, nonce, epoch, new_spki, proof, quote)
        except DomainError as refusal:
            self._audit_refusal(key, refusal)
            raise
        crash_point("rotate.prepare.after_commit")  # stored and committed; the answer not sent
        return result

    def _prepare(
        self, key: str, nonce: bytes, epoch: int, new_spki: bytes, proof: bytes, quote: bytes
    ) -> PrepareResult:
        uid = bytes.fromhex(key)
        now = self._clock()
        with self._db.transaction(write=False) as session:
            device = DeviceRepository(session).device(key)
            if device is None:
                raise NotFound("device.not_found", f"no device {key}")
            _check_not_revoked(device)
            stored = self._stored(session, device, epoch, nonce, new_spki)
            if stored is not None:
                old_spki, result = stored
            else:
                facts = self._facts(device, epoch)
                nonce_row = RotationRepository(session).nonce(nonce.hex())
        if stored is not None:  # a retry: the same request, its proof valid, gets the answer
            check_proof(load_spki(old_spki), uid, epoch, new_spki, nonce, proof)
            return result
        # The checks that cost CPU run outside any write lock.
        _check_nonce(nonce_row, key, now)
        check_proof(load_spki(facts.identity_spki), uid, epoch, new_spki, nonce, proof)
        check_quote(self._keys.root, facts, quote, nonce, new_spki, self._clock)
        with self._db.transaction() as session:
            device = DeviceRepository(session).lock_device(key)
            if device is None:  # pragma: no cover - devices are never deleted
                raise NotFound("device.not_found", f"no device {key}")
            _check_not_revoked(device)
            stored = self._stored(session, device, epoch, nonce, new_spki)
            if stored is not None:  # an identical request committed meanwhile
                return stored[1]
            if self._facts(device, epoch) != facts:
                raise Conflict("rotation.registry_changed", f"device {key} changed; retry")
            repo = RotationRepository(session)
            _check_nonce(repo.nonce(nonce.hex(), lock=True), key, now).consumed_at = now
            return self._store(session, device, facts, nonce, new_spki, proof, quote, now)

    def _facts(self, device: Device, epoch: int) -> DeviceFacts:
        """The state checks of step 2 on a device row; the facts the crypto checks use."""
        state = DeviceState(device.state)
        if state not in _PREPARABLE:
            raise Conflict(
                "device.wrong_state", f"device {device.uid} is {state.value}: it cannot rotate"
            )
        if device.identity_spki is None or device.key_epoch < 1:
            raise Conflict("rotation.not_enrolled", f"device {device.uid} has not enrolled")
        if epoch != device.key_epoch + 1:
            raise Conflict(
                "rotation.bad_epoch",
                f"device {device.uid} is at epoch {device.key_epoch}: the next is "
                f"{device.key_epoch + 1}, not {epoch}",
            )
        return DeviceFacts(
            uid=device.uid,
            algorithm=device.batch.algorithm,
            key_epoch=device.key_epoch,
            identity_spki=device.identity_spki,
            attestation_cert_sha256=device.attestation_cert_sha256,
            batch_ca_sha256=device.batch.batch_ca_sha256,
            batch_revoked=device.batch.revoked_at is not None,
        )

    def _stored(
        self, session: Session, device: Device, epoch: int, nonce: bytes, new_spki: bytes
    ) -> tuple[bytes, PrepareResult] | None:
        """(old SPKI, the stored answer) of a pending or committed rotation with exactly this
        epoch, nonce and new key; None otherwise."""
        repo = RotationRepository(session)
        rotation = repo.rotation(device.id, epoch)
        if (
            rotation is None
            or rotation.state == RotationState.ABORTED.value
            or rotation.nonce != nonce.hex()
            or rotation.new_spki != new_spki
        ):
            return None
        row = repo.first_certificate(device.id, epoch, spki_sha256(new_spki))
        if row is None:  # pragma: no cover - stored together with the rotation
            return None
        return rotation.old_spki, self._result(device.uid, rotation, row, replayed=True)

    def _result(
        self, uid: str, rotation: Rotation, row: Certificate, *, replayed: bool
    ) -> PrepareResult:
        return PrepareResult(
            uid=uid,
            epoch=rotation.to_epoch,
            ack=rotation.ack,
            certificate=x509.load_der_x509_certificate(row.der),
            chain=(self._keys.issuing.certificate,),
            serial=row.serial,
            not_after=row.not_after,
            replayed=replayed,
        )

    def _store(
        self,
        session: Session,
        device: Device,
        facts: DeviceFacts,
        nonce: bytes,
        new_spki: bytes,
        proof: bytes,
        quote: bytes,
        now: dt.datetime,
    ) -> PrepareResult:
        epoch = facts.key_epoch + 1
        repo = RotationRepository(session)
        uid = device.uid
        actor = device_actor(uid)
        previous = repo.pending(device.id)
        if previous is not None:  # the device restarted its rotation: supersede
            abort_locked(session, device, previous, actor, now, back_to_active=False)
        if DeviceState(device.state) == DeviceState.ENROLLED:  # enrolled -> active -> rotating
            transition_device(
                session, uid, [DeviceState.ENROLLED], DeviceState.ACTIVE, actor=actor, now=now
            )
        if DeviceState(device.state) == DeviceState.ACTIVE:
            transition_device(
                session,
                uid,
                [DeviceState.ACTIVE],
                DeviceState.ROTATING,
                actor=actor,
                details={"to_epoch": epoch},
                now=now,
            )
        ack = self._keys.authority.sign(spec.ack_tbs(bytes.fromhex(uid), epoch, new_spki, nonce))
        certificate = self._keys.issuing.issue_client(
            new_spki, uid, now=now, lifetime=self._lifetime
        )
        row = repo.add_certificate(
            Certificate(
                serial=serial_hex(certificate.serial_number),
                device_id=device.id,
                der=certificate.public_bytes(serialization.Encoding.DER),
                key_epoch=epoch,
                spki_sha256=spki_sha256(new_spki),
                issuer_sha256=certificate_sha256(self._keys.issuing.certificate),
                not_before=certificate.not_valid_before_utc,
                not_after=certificate.not_valid_after_utc,
                created_at=now,
            )
        )
        values = {
            "from_epoch": device.key_epoch,
            "to_epoch": epoch,
            "old_spki": facts.identity_spki,
            "new_spki": new_spki,
            "nonce": nonce.hex(),
            "proof": proof,
            "quote": quote,
            "ack": ack,
            "state": RotationState.PENDING.value,
            "created_at": now,
            "completed_at": None,
        }
        rotation = repo.rotation(device.id, epoch)  # an aborted attempt at this epoch: reuse it
        if rotation is None:
            rotation = repo.add_rotation(Rotation(device_id=device.id, **values))
        else:
            for name, value in values.items():
                setattr(rotation, name, value)
        device.updated_at = now
        audit = AuditLog(session)
        audit.append(
            actor=actor,
            action="rotation.prepared",
            subject=f"device:{uid}",
            details={
                "from_epoch": device.key_epoch,
                "to_epoch": epoch,
                "new_spki_sha256": spki_sha256(new_spki),
                "serial": row.serial,
            },
            now=now,
        )
        audit.append(
            actor=actor,
            action="certificate.issued",
            subject=f"device:{uid}",
            details={
                "serial": row.serial,
                "key_epoch": epoch,
                "spki_sha256": row.spki_sha256,
                "not_after": row.not_after.isoformat(),
                "via": "rotation",
            },
            now=now,
        )
        crash_point("rotate.prepare.before_commit")  # everything stored, nothing committed
        return self._result(uid, rotation, row, replayed=False)

    # -- 3. complete -----------------------------------------------------------------------------
    def complete(self, uid: str | bytes, serial: str) -> int:
        """The device presented certificate ``serial`` (lower-case hex): if it is the pending
        rotation's, commit it; the registry's epoch after. Idempotent."""
        key = normalize_uid(uid)
        now = self._clock()
        with self._db.transaction() as session:
            device = self._locked(session, key)
            repo = RotationRepository(session)
            row = repo.certificate(serial.lower())
            if row is None or row.device_id != device.id:
                raise Forbidden("rotation.certificate_unknown", "not a certificate of this device")
            if row.revoked_at is not None:
                raise Forbidden("rotation.certificate_revoked", f"certificate {serial} is revoked")
            current = device.identity_spki
            if (
                row.key_epoch == device.key_epoch
                and current is not None
                and row.spki_sha256 == spki_sha256(current)
            ):
                return device.key_epoch  # already the current key: nothing to complete
            rotation = repo.pending(device.id)
            if (
                rotation is None
                or rotation.to_epoch != row.key_epoch
                or spki_sha256(rotation.new_spki) != row.spki_sha256
            ):
                raise Conflict(
                    "rotation.not_pending", f"no pending rotation of device {key} for {serial}"
                )
            commit_locked(session, device, rotation, now, via=f"certificate:{row.serial}")
            epoch = rotation.to_epoch
            crash_point("rotate.complete.before_commit")  # the rows changed, nothing committed
        crash_point("rotate.complete.after_commit")  # committed; the caller not yet answered
        return epoch

    def observe_certificate(self, uid: str | bytes, serial: str) -> int | None:
        """The gateway's per-connection hook: completes a pending rotation when the device
        first connects with the new key's certificate; the new epoch then, else None. A cheap
        read for every other connection; never raises a DomainError."""
        try:
            key = normalize_uid(uid)
            with self._db.transaction(write=False) as session:
                device = DeviceRepository(session).device(key)
                if device is None or DeviceState(device.state) != DeviceState.ROTATING:
                    return None
                row = RotationRepository(session).certificate(serial.lower())
                if row is None or row.device_id != device.id or row.key_epoch <= device.key_epoch:
                    return None
            return self.complete(key, serial)
        except DomainError:
            return None

    def complete_from_quote(self, uid: str | bytes, epoch: int, spki: bytes) -> int | None:
        """Enrollment-path recovery: a VERIFIED quote (chain, signature, consumed nonce: the
        caller's job) shows the card at ``epoch`` with identity key ``spki``. If that is the
        pending rotation (the card COMMITted, the fleet never saw the new certificate), commit
        it now and return the epoch; if it is already the registry's key and epoch, return the
        epoch; otherwise None (the caller decides: a mismatch is a refusal)."""
        key = normalize_uid(uid)
        now = self._clock()
        with self._db.transaction() as session:
            device = self._locked(session, key)
            if device.key_epoch == epoch and device.identity_spki == spki:
                return epoch
            if complete_pending_in(session, device, epoch, spki, now=now, via="quote"):
                return epoch
            return None

    def _locked(self, session: Session, key: str) -> Device:
        device = DeviceRepository(session).lock_device(key)
        if device is None:
            raise NotFound("device.not_found", f"no device {key}")
        _check_not_revoked(device)
        return device

    # -- 4. abort --------------------------------------------------------------------------------
    def pending_epoch(self, uid: str | bytes) -> int | None:
        """The epoch the device's pending rotation leads to, or None (NotFound: no device)."""
        key = normalize_uid(uid)
        with self._db.transaction() as session:
            device = DeviceRepository(session).device(key)
            if device is None:
                raise NotFound("device.not_found", f"no device {key}")
            rotation = RotationRepository(session).pending(device.id)
            return None if rotation is None else rotation.to_epoch

    def abort(self, uid: str | bytes, *, actor: str) -> int:
        """Abort the device's pending rotation (an operator, or a device restarting it); the
        aborted epoch. The device returns to active; the new key's certificate is revoked."""
        key = normalize_uid(uid)
        now = self._clock()
        with self._db.transaction() as session:
            device = DeviceRepository(session).lock_device(key)
            if device is None:
                raise NotFound("device.not_found", f"no device {key}")
            rotation = RotationRepository(session).pending(device.id)
            if rotation is None:
                raise Conflict("rotation.not_pending", f"device {key} has no pending rotation")
            active = DeviceState(device.state) == DeviceState.ROTATING
            abort_locked(session, device, rotation, actor, now, back_to_active=active)
            return rotation.to_epoch

    # -- refusals --------------------------------------------------------------------------------
    def _audit_refusal(self, key: str, refusal: DomainError) -> None:
        """``rotation.refused`` for a known device, in a transaction of its own."""
        if isinstance(refusal, NotFound):
            return
        with self._db.transaction() as session:
            if DeviceRepository(session).device(key) is None:
                return
            AuditLog(session).append(
                actor=device_actor(key),
                action="rotation.refused",
                subject=f"device:{key}",
                details={"code": refusal.code, "status": refusal.status},
                now=self._clock(),
            )
