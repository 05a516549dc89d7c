"""The firmware slice's rules: publish releases, assign them to groups, serve and track them.

Scope: :class:`FirmwareService`

- :meth:`~FirmwareService.publish`: the kind is detected from the bytes: an MCUboot image
  (header magic 0x96f3b83d) is parsed by ``iotid.crypto.mcuboot.McubootVerifier`` (header,
  TLV areas, image hash, a signature TLV present) and its version is the header's; anything else
  is a *raw* image, which needs a detached signature file (``iotid.spec.firmware.RawSignature``,
  which names hash algorithm, version and security counter). The fleet does not hold the
  firmware issuance key and does not judge signatures (the card does, at the device): it refuses
  what is malformed, unsigned or corrupted (an MCUboot hash that does not match), images over
  :data:`MAX_IMAGE_SIZE`, and a name already published with other bytes (Conflict; the same
  bytes again are a no-op). Audited ``firmware.published``.
- :meth:`~FirmwareService.assign` (one release per group, upserted under a lock; audited
  ``firmware.assigned``), :meth:`~FirmwareService.set_group` (a device's rollout group under its
  row lock; audited ``device.group_changed``), :meth:`~FirmwareService.releases`,
  :meth:`~FirmwareService.rollout` (per group: release, devices, devices running its version,
  devices that reported it applied / invalid).
- device side: :meth:`~FirmwareService.release_for` (the release of the device's group),
  :meth:`~FirmwareService.device_image` / :meth:`~FirmwareService.device_signature` (only that
  release: a device cannot download arbitrary releases), :meth:`~FirmwareService.report`
  (``applied`` sets ``Device.firmware_version``; ``invalid`` and ``applied`` are audited as
  ``firmware.reported``, ``valid`` is not recorded: telemetry volume).

Not in scope: SQL (``repository``), HTTP (``api``, ``gateway``), verifying signatures.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.exc import IntegrityError

from iotid.crypto.mcuboot import McubootVerifier, TrustedKey
from iotid.fleet.db import Database
from iotid.fleet.devices.repository import DeviceRepository
from iotid.fleet.devices.service import normalize_uid
from iotid.fleet.errors import Conflict, InvalidInput, NotFound
from iotid.fleet.firmware.repository import REPORT_ACTION, FirmwareRepository
from iotid.fleet.models import AuditLog, FirmwareAssignment, FirmwareRelease, utcnow
from iotid.spec.firmware import IMAGE_MAGIC, ImageVersion, RawSignature, Reason

__all__ = [
    "MAX_IMAGE_SIZE",
    "FirmwareService",
    "GroupRollout",
    "PublishResult",
    "ReleaseView",
    "ReportVerdict",
]

#: Largest image accepted.
MAX_IMAGE_SIZE = 32 * 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_GROUP = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: Outcomes that only the card, holding the issuance keys, can turn into a verdict.
_KEY_DEPENDENT = frozenset({Reason.OK, Reason.UNKNOWN_KEY, Reason.BAD_SIGNATURE, Reason.ROLLBACK})


class ReportVerdict(StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    APPLIED = "applied"


@dataclass(frozen=True)
class ReleaseView:
    name: str
    version: str
    kind: str
    sha256: str
    size: int
    created_by: str
    created_at: dt.datetime

    @classmethod
    def of(cls, row: FirmwareRelease) -> ReleaseView:
        return cls(
            row.name, row.version, row.kind, row.sha256, row.size, row.created_by, row.created_at
        )


@dataclass(frozen=True)
class PublishResult:
    release: ReleaseView
    #: False when the same release had already been published (nothing changed).
    created: bool


@dataclass(frozen=True)
class GroupRollout:
    group: str
    #: The assigned release (None: no release assigned) and its version.
    release: str | None
    version: str | None
    devices: int
    #: Devices of the group whose last reported running version is the release's.
    reported_version_count: int
    #: Devices of the group that reported the release applied (the card said VALID first) and
    #: that reported it invalid (``valid`` reports are not recorded).
    valid: int
    invalid: int


@dataclass(frozen=True)
class _Parsed:
    kind: str
    version: str
    security_counter: int


@functools.cache
def _probe_keys() -> tuple[TrustedKey, ...]:
    """Keys that match no image: they make the verifier hash with SHA-256 and SHA-384 and run
    every structural check, while the key-dependent outcome stays the card's to decide."""
    return tuple(
        TrustedKey(ec.generate_private_key(curve).public_key())
        for curve in (ec.SECP256R1(), ec.SECP384R1())
    )


def _parse_mcuboot(image: bytes) -> _Parsed:
    verifier = McubootVerifier(_probe_keys())
    verifier.feed(image)
    verdict = verifier.finish(0)
    if verdict.reason in (Reason.NO_SIGNATURE, Reason.MISSING_KEYHASH):
        raise InvalidInput("firmware.unsigned", "the MCUboot image carries no keyed signature")
    if verdict.reason not in _KEY_DEPENDENT or verdict.version is None:
        raise InvalidInput(
            "firmware.malformed", f"not a well-formed MCUboot image ({verdict.reason.label})"
        )
    return _Parsed("mcuboot", str(verdict.version), verdict.security_counter or 0)


def _parse_raw(image: bytes, signature: bytes | None) -> _Parsed:
    if signature is None:
        raise InvalidInput(
            "firmware.signature_required",
            "not an MCUboot image: a raw image needs its detached signature file",
        )
    try:
        statement = RawSignature.decode(signature)
    except ValueError as exc:
        raise InvalidInput("firmware.bad_signature_file", f"signature: {exc}") from None
    return _Parsed("raw", str(statement.version), statement.security_counter)


def check_group(group: str) -> str:
    if not isinstance(group, str) or _GROUP.fullmatch(group) is None:
        raise InvalidInput("firmware.bad_group", "a group is 1-64 of A-Z a-z 0-9 . _ -")
    return group


def _normal_version(version: str) -> str:
    try:
        return str(ImageVersion.parse(version))
    except ValueError:
        raise InvalidInput(
            "firmware.bad_version", "a version is major.minor.revision[+build]"
        ) from None


class FirmwareService:
    """Firmware releases and their rollout to device groups."""

    def __init__(self, db: Database, *, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    def __repr__(self) -> str:
        return f"FirmwareService({self._db!r})"

    # -- publishing -----------------------------------------------------------------------------
    def publish(
        self, name: str, image: bytes, signature: bytes | None, *, actor: str
    ) -> PublishResult:
        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            raise InvalidInput("firmware.bad_name", "a release name is 1-64 of A-Z a-z 0-9 . _ + -")
        if not image:
            raise InvalidInput("firmware.empty", "the image is empty")
        if len(image) > MAX_IMAGE_SIZE:
            raise InvalidInput("firmware.too_large", f"images are at most {MAX_IMAGE_SIZE} bytes")
        if int.from_bytes(image[:4], "little") == IMAGE_MAGIC:
            if signature is not None:
                raise InvalidInput(
                    "firmware.unexpected_signature",
                    "an MCUboot image carries its signature: no detached signature",
                )
            parsed = _parse_mcuboot(image)
        else:
            parsed = _parse_raw(image, signature)
        digest = hashlib.sha256(image).hexdigest()
        try:
            return self._publish_once(name, image, signature, digest, parsed, actor)
        except IntegrityError:  # published concurrently: decide against what is there now
            try:
                return self._publish_once(name, image, signature, digest, parsed, actor)
            except IntegrityError:
                raise Conflict(
                    "firmware.concurrent_publish", "the release changed during publishing; retry"
                ) from None

    def _publish_once(
        self,
        name: str,
        image: bytes,
        signature: bytes | None,
        digest: str,
        parsed: _Parsed,
        actor: str,
    ) -> PublishResult:
        with self._db.transaction() as session:
            repo = FirmwareRepository(session)
            existing = repo.release(name)
            if existing is not None:
                if existing.sha256 != digest or existing.signature != signature:
                    raise Conflict(
                        "firmware.conflict",
                        f"release {name} was already published with other bytes",
                    )
                return PublishResult(ReleaseView.of(existing), False)
            now = self._clock()
            row = repo.add_release(
                FirmwareRelease(
                    name=name,
                    version=parsed.version,
                    kind=parsed.kind,
                    image=image,
                    signature=signature,
                    sha256=digest,
                    size=len(image),
                    created_by=actor,
                    created_at=now,
                )
            )
            AuditLog(session).append(
                actor=actor,
                action="firmware.published",
                subject=f"firmware:{name}",
                details={
                    "version": parsed.version,
                    "kind": parsed.kind,
                    "sha256": digest,
                    "size": len(image),
                    "security_counter": parsed.security_counter,
                },
                now=now,
            )
            return PublishResult(ReleaseView.of(row), True)

    def releases(self) -> list[ReleaseView]:
        with self._db.transaction(write=False) as session:
            return [ReleaseView.of(r) for r in FirmwareRepository(session).releases()]

    # -- rollout --------------------------------------------------------------------------------
    def assign(self, group: str, release_name: str, *, actor: str) -> ReleaseView:
        """Make ``release_name`` the release of ``group`` (replacing any other)."""
        check_group(group)
        with self._db.transaction() as session:
            repo = FirmwareRepository(session)
            release = repo.release(release_name)
            if release is None:
                raise NotFound("firmware.not_found", f"no release {release_name}")
            repo.lock_assignments()
            now = self._clock()
            current = repo.assignment(group)
            previous: int | None = None
            if current is None:
                repo.add_assignment(
                    FirmwareAssignment(
                        group_name=group, release_id=release.id, assigned_by=actor, assigned_at=now
                    )
                )
            else:
                previous = current.release_id
                current.release_id, current.assigned_by, current.assigned_at = (
                    release.id,
                    actor,
                    now,
                )
            if previous != release.id:
                AuditLog(session).append(
                    actor=actor,
                    action="firmware.assigned",
                    subject=f"firmware:{release.name}",
                    details={"group": group, "version": release.version},
                    now=now,
                )
            return ReleaseView.of(release)

    def set_group(self, uid: str | bytes, group: str, *, actor: str) -> str:
        """Move a device to rollout ``group``; returns the group it was in."""
        key = normalize_uid(uid)
        check_group(group)
        with self._db.transaction() as session:
            device = DeviceRepository(session).lock_device(key)
            if device is None:
                raise NotFound("device.not_found", f"no device {key}")
            before = device.group_name
            if before != group:
                now = self._clock()
                device.group_name, device.updated_at = group, now
                AuditLog(session).append(
                    actor=actor,
                    action="device.group_changed",
                    subject=f"device:{key}",
                    details={"from": before, "to": group},
                    now=now,
                )
            return before

    def rollout(self) -> list[GroupRollout]:
        """Every group that has devices or a release, in name order."""
        with self._db.transaction(write=False) as session:
            repo = FirmwareRepository(session)
            assigned = {a.group_name: r for a, r in repo.assignments()}
            devices: dict[str, int] = defaultdict(int)
            running: dict[tuple[str, str | None], int] = {}
            for group, version, count in repo.version_counts():
                devices[group] += count
                running[(group, version)] = count
            # The latest recorded report per (device, release); then counted per group.
            latest: dict[tuple[str, str], str] = {}
            for subject, details in repo.reports():
                release = details.get("release")
                verdict = details.get("verdict")
                if isinstance(release, str) and isinstance(verdict, str):
                    latest[(subject.removeprefix("device:"), release)] = verdict
            groups_of = repo.device_groups(sorted({uid for uid, _ in latest}))
        tallies: dict[tuple[str, str, str], int] = defaultdict(int)
        for (uid, release_name), verdict in latest.items():
            group_of = groups_of.get(uid)
            if group_of is not None:
                tallies[(group_of, release_name, verdict)] += 1
        out = []
        for group in sorted(set(devices) | set(assigned)):
            row = assigned.get(group)
            name = None if row is None else row.name
            version = None if row is None else row.version
            out.append(
                GroupRollout(
                    group=group,
                    release=name,
                    version=version,
                    devices=devices.get(group, 0),
                    reported_version_count=0 if row is None else running.get((group, version), 0),
                    valid=0 if name is None else tallies[(group, name, ReportVerdict.APPLIED)],
                    invalid=0 if name is None else tallies[(group, name, ReportVerdict.INVALID)],
                )
            )
        return out

    # -- device side ----------------------------------------------------------------------------
    def release_for(self, uid: str | bytes) -> ReleaseView | None:
        """The release assigned to the device's group, or None (NotFound: unknown device)."""
        key = normalize_uid(uid)
        with self._db.transaction(write=False) as session:
            repo = FirmwareRepository(session)
            group = repo.device_group(key)
            if group is None:
                raise NotFound("device.not_found", f"no device {key}")
            release = repo.release_for_group(group)
            return None if release is None else ReleaseView.of(release)

    def _assigned_row(self, uid: str | bytes, name: str) -> FirmwareRelease:
        key = normalize_uid(uid)
        with self._db.transaction(write=False) as session:
            repo = FirmwareRepository(session)
            group = repo.device_group(key)
            assigned = None if group is None else repo.release_for_group(group)
            # One answer for "no such release" and "not yours": a device learns nothing else.
            if assigned is None or assigned.name != name:
                raise NotFound("firmware.not_found", f"no release {name} for this device")
            row = repo.release(name, with_image=True)
            if row is None:  # deleted in between: cannot happen (RESTRICT), but fail closed
                raise NotFound("firmware.not_found", f"no release {name} for this device")
            return row

    def device_image(self, uid: str | bytes, name: str) -> bytes:
        """The image of release ``name``, only if it is the one assigned to the device's group."""
        return self._assigned_row(uid, name).image

    def device_signature(self, uid: str | bytes, name: str) -> bytes:
        """The detached signature file of the device's raw release (NotFound for MCUboot)."""
        signature = self._assigned_row(uid, name).signature
        if signature is None:
            raise NotFound("firmware.no_signature", f"release {name} has no detached signature")
        return signature

    # -- operator side --------------------------------------------------------------------------
    def image(self, name: str) -> bytes:
        with self._db.transaction(write=False) as session:
            row = FirmwareRepository(session).release(name, with_image=True)
            if row is None:
                raise NotFound("firmware.not_found", f"no release {name}")
            return row.image

    def signature(self, name: str) -> bytes | None:
        with self._db.transaction(write=False) as session:
            row = FirmwareRepository(session).release(name)
            if row is None:
                raise NotFound("firmware.not_found", f"no release {name}")
            return row.signature

    def report(self, uid: str | bytes, version: str, verdict: ReportVerdict | str) -> None:
        """A device's report on its release: ``applied`` records the version it now runs."""
        key = normalize_uid(uid)
        try:
            outcome = ReportVerdict(verdict)
        except ValueError:
            raise InvalidInput(
                "firmware.bad_verdict", "verdict is valid, invalid or applied"
            ) from None
        running = _normal_version(version)
        if outcome is ReportVerdict.VALID:
            with self._db.transaction(write=False) as session:
                if FirmwareRepository(session).device_group(key) is None:
                    raise NotFound("device.not_found", f"no device {key}")
            return  # not recorded (volume): the applied report follows
        with self._db.transaction() as session:
            device = DeviceRepository(session).lock_device(key)
            if device is None:
                raise NotFound("device.not_found", f"no device {key}")
            release = FirmwareRepository(session).release_for_group(device.group_name)
            now = self._clock()
            if outcome is ReportVerdict.APPLIED:
                device.firmware_version, device.updated_at = running, now
            AuditLog(session).append(
                actor=f"device:{key}",
                action=REPORT_ACTION,
                subject=f"device:{key}",
                details={
                    "release": None if release is None else release.name,
                    "version": running,
                    "verdict": outcome.value,
                },
                now=now,
            )
