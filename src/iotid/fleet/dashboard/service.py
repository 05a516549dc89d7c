"""The dashboard's read model: what the overview and the device page show, and the revoke call.

Scope: :class:`DashboardService`, read-only except :meth:`DashboardService.revoke`, which is the
revocation slice's own :meth:`RevocationService.revoke_device` (the very call the API makes, so
the row locks, the audit entry, the revocation event and the gateways' drop are identical).
Queries reuse the slices: devices (:class:`DeviceService` listing, ``DeviceRepository.device``),
the audit trace (:meth:`AuditService.trace`: certificates, enrollment evidence, batch, root,
ceremony and the device's audit entries), telemetry (:meth:`TelemetryService.list`), firmware
(:meth:`FirmwareService.rollout`, :meth:`FirmwareService.release_for`) and revocation latency
(:class:`RevocationLatency`, as seen by this process); the aggregates no slice has are in
``repository``.

- :meth:`~DashboardService.overview`: devices by state and by batch, accepted enrollments per
  time bucket (the bucket width is chosen so that at most :data:`MAX_BUCKETS` cover the span),
  firmware rollout per group, recent revocation events with the latency this process measured;
- :meth:`~DashboardService.device`: one device's facts, trace, rotations, telemetry (with the
  numeric fields of JSON payloads as series to plot), commands, firmware reports, revocations.

A page is assembled from several read transactions (one per slice call): figures may be a few
milliseconds apart from each other, never torn within one.
Not in scope: HTTP, sessions and roles (``pages``, ``session``), rendering (``charts``, the
templates), any write other than the revocation.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from iotid.fleet.audit.service import AuditService
from iotid.fleet.audit.trace import AuditItem, Trace
from iotid.fleet.dashboard.repository import CommandRow, DashboardRepository, EventRow, RotationRow
from iotid.fleet.db import Database
from iotid.fleet.devices.repository import DeviceRepository
from iotid.fleet.devices.service import DevicePage, DeviceService, normalize_uid
from iotid.fleet.errors import NotFound
from iotid.fleet.firmware.repository import REPORT_ACTION
from iotid.fleet.firmware.service import FirmwareService, GroupRollout, ReleaseView
from iotid.fleet.models import DeviceState, utcnow
from iotid.fleet.revocation.latency import AppliedRevocation, LatencySummary, RevocationLatency
from iotid.fleet.revocation.service import RevocationResult, RevocationService
from iotid.fleet.telemetry.service import TelemetryService

if TYPE_CHECKING:
    from iotid.fleet.app import FleetServices

__all__ = [
    "MAX_BUCKETS",
    "BatchSummary",
    "DashboardService",
    "DeviceDetail",
    "DeviceFacts",
    "EnrollmentSeries",
    "Overview",
    "Revocation",
    "TelemetryItem",
]

MAX_BUCKETS = 48
#: Candidate bucket widths for "enrollments over time", seconds.
_WIDTHS = (1, 10, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)
RECENT_REVOCATIONS = 20
TELEMETRY_SHOWN = 50
COMMANDS_SHOWN = 20
#: Numeric telemetry fields plotted per device, and the preview length of a payload.
MAX_SERIES = 3
PREVIEW_CHARS = 160
STATE_ORDER = tuple(DeviceState)


@dataclass(frozen=True)
class BatchSummary:
    name: str
    algorithm: str
    imported_at: dt.datetime
    revoked_at: dt.datetime | None
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class EnrollmentSeries:
    total: int
    bucket: dt.timedelta
    points: tuple[tuple[dt.datetime, int], ...]


@dataclass(frozen=True)
class Revocation:
    """A revocation event and, when this process applied it, its measured latency."""

    event: EventRow
    applied: AppliedRevocation | None


@dataclass(frozen=True)
class Overview:
    generated_at: dt.datetime
    total: int
    states: tuple[tuple[str, int], ...]
    batches: tuple[BatchSummary, ...]
    enrollments: EnrollmentSeries
    rollout: tuple[GroupRollout, ...]
    revocations: tuple[Revocation, ...]
    latency: LatencySummary


@dataclass(frozen=True)
class DeviceFacts:
    uid: str
    batch: str
    algorithm: str
    state: str
    key_epoch: int
    group: str
    firmware_version: str | None
    enrolled_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_seen_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class TelemetryItem:
    id: int
    key_epoch: int
    received_at: dt.datetime
    size: int
    #: The payload as text (undecodable bytes replaced), cut to :data:`PREVIEW_CHARS`.
    preview: str


@dataclass(frozen=True)
class DeviceDetail:
    facts: DeviceFacts
    trace: Trace
    rotations: tuple[RotationRow, ...]
    telemetry: tuple[TelemetryItem, ...]
    #: Numeric fields of JSON-object payloads: field -> (received_at, value), oldest first.
    series: dict[str, tuple[tuple[dt.datetime, float], ...]]
    commands: tuple[CommandRow, ...]
    firmware_reports: tuple[AuditItem, ...]
    release: ReleaseView | None
    revocations: tuple[Revocation, ...]

    @property
    def revocable(self) -> bool:
        return self.facts.state not in (DeviceState.REVOKED.value, DeviceState.RETIRED.value)


def bucket_width(first: dt.datetime, last: dt.datetime) -> int:
    """The narrowest width in :data:`_WIDTHS` that covers first..last in MAX_BUCKETS buckets."""
    span = (last - first).total_seconds()
    for width in _WIDTHS:
        if span / width < MAX_BUCKETS:
            return width
    return math.ceil(span / (MAX_BUCKETS - 1))


def numeric_series(
    items: list[tuple[dt.datetime, bytes]],
) -> dict[str, tuple[tuple[dt.datetime, float], ...]]:
    """Per field, the numbers of JSON-object payloads (bools excluded), oldest first; the
    :data:`MAX_SERIES` fields seen most often (ties by name)."""
    found: dict[str, list[tuple[dt.datetime, float]]] = {}
    for when, payload in sorted(items, key=lambda item: item[0]):
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(doc, dict):
            continue
        for key, value in doc.items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and math.isfinite(value):
                found.setdefault(str(key)[:64], []).append((when, float(value)))
    chosen = sorted(found, key=lambda k: (-len(found[k]), k))[:MAX_SERIES]
    return {key: tuple(found[key]) for key in sorted(chosen)}


class DashboardService:
    """Everything the dashboard pages read, over one fleet's services."""

    def __init__(
        self,
        db: Database,
        *,
        devices: DeviceService,
        audit: AuditService,
        telemetry: TelemetryService,
        firmware: FirmwareService,
        revocation: RevocationService,
        latency: RevocationLatency,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._db = db
        self._devices = devices
        self._audit = audit
        self._telemetry = telemetry
        self._firmware = firmware
        self._revocation = revocation
        self.latency = latency
        self._clock = clock

    @classmethod
    def from_services(cls, services: FleetServices) -> DashboardService:
        return cls(
            services.db,
            devices=services.devices,
            audit=services.audit,
            telemetry=services.telemetry,
            firmware=services.firmware,
            revocation=services.revocation,
            latency=services.revocation_latency,
        )

    def __repr__(self) -> str:
        return f"DashboardService({self._db!r})"

    # -- overview -------------------------------------------------------------------------------
    def overview(self) -> Overview:
        with self._db.transaction(write=False) as session:
            repo = DashboardRepository(session)
            states = repo.state_counts()
            per_batch = repo.batch_state_counts()
            batches = repo.batches()
            enrollments = self._enrollments(repo)
            events = repo.recent_events(RECENT_REVOCATIONS)
        counts: dict[str, dict[str, int]] = {b.name: {} for b in batches}
        for name, state, n in per_batch:
            counts.setdefault(name, {})[state.value] = n
        return Overview(
            generated_at=self._clock(),
            total=sum(states.values()),
            states=tuple((s.value, states.get(s, 0)) for s in STATE_ORDER),
            batches=tuple(
                BatchSummary(b.name, b.algorithm, b.imported_at, b.revoked_at, counts[b.name])
                for b in batches
            ),
            enrollments=enrollments,
            rollout=tuple(self._firmware.rollout()),
            revocations=self._with_latency(events),
            latency=self.latency.summary(),
        )

    @staticmethod
    def _enrollments(repo: DashboardRepository) -> EnrollmentSeries:
        total, first, last = repo.enrollment_span()
        if total == 0 or first is None or last is None:
            return EnrollmentSeries(0, dt.timedelta(minutes=1), ())
        width = bucket_width(first, last)
        origin = dt.datetime.fromtimestamp(math.floor(first.timestamp() / width) * width, tz=dt.UTC)
        counted = dict(repo.enrollment_buckets(origin, width))
        top = max(counted, default=0)
        step = dt.timedelta(seconds=width)
        points = tuple((origin + i * step, counted.get(i, 0)) for i in range(top + 1))
        return EnrollmentSeries(total, step, points)

    def _with_latency(self, events: list[EventRow]) -> tuple[Revocation, ...]:
        seen = self.latency.by_event()
        return tuple(Revocation(event, seen.get(event.id)) for event in events)

    # -- devices --------------------------------------------------------------------------------
    def devices(
        self,
        *,
        state: str | None = None,
        batch: str | None = None,
        uid_prefix: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> DevicePage:
        return self._devices.list_devices(
            state=state, batch=batch, uid_prefix=uid_prefix, cursor=cursor, limit=limit
        )

    def device(self, uid: str) -> DeviceDetail:
        key = normalize_uid(uid)
        with self._db.transaction(write=False) as session:
            device = DeviceRepository(session).device(key)
            if device is None:
                raise NotFound("device.not_found", f"no device {key}")
            facts = DeviceFacts(
                uid=device.uid,
                batch=device.batch.name,
                algorithm=device.batch.algorithm,
                state=DeviceState(device.state).value,
                key_epoch=device.key_epoch,
                group=device.group_name,
                firmware_version=device.firmware_version,
                enrolled_at=device.enrolled_at,
                revoked_at=device.revoked_at,
                last_seen_at=device.last_seen_at,
                created_at=device.created_at,
                updated_at=device.updated_at,
            )
            repo = DashboardRepository(session)
            rotations = tuple(repo.rotations(device.id))
            commands = tuple(repo.commands(device.id, COMMANDS_SHOWN))
            events = repo.device_events(key, facts.batch)
        trace = self._audit.trace(key)
        telemetry = self._telemetry.list(key, TELEMETRY_SHOWN)
        return DeviceDetail(
            facts=facts,
            trace=trace,
            rotations=rotations,
            telemetry=tuple(
                TelemetryItem(
                    t.id,
                    t.key_epoch,
                    t.received_at,
                    len(t.payload),
                    t.payload[: PREVIEW_CHARS * 4].decode("utf-8", "replace")[:PREVIEW_CHARS],
                )
                for t in telemetry
            ),
            series=numeric_series([(t.received_at, t.payload) for t in telemetry]),
            commands=commands,
            firmware_reports=tuple(e for e in trace.audit if e.action == REPORT_ACTION),
            release=self._firmware.release_for(key),
            revocations=self._with_latency(events),
        )

    # -- the one write --------------------------------------------------------------------------
    def revoke(self, uid: str, reason: str, *, actor: str) -> RevocationResult:
        """Revoke a device exactly as ``POST /v1/devices/{uid}/revoke`` does."""
        return self._revocation.revoke_device(uid, reason, actor=actor)
