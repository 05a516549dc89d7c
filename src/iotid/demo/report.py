"""What ``iotid demo`` found: steps, phase timings, rates, revocation latency, audit and trace.

Scope: the plain data of the demo's outcome, :class:`DemoReport` (``ok`` when at least one step
ran and every step succeeded; :meth:`DemoReport.to_json` for machines), the per-device phase
figures (:class:`PhaseTiming`), the revocation measurement (:class:`RevocationResult`) and one
device's chain of evidence down to the ceremony record (:class:`TraceChain`), plus
:class:`DemoEvent`, what :func:`iotid.demo.run_demo` emits while it runs (progress bars).
Nothing here is secret: UIDs, public fingerprints, counts and timings only.

Not in scope: running anything (``iotid.demo``), rendering (the CLI).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "DemoEvent",
    "DemoReport",
    "EventKind",
    "PhaseTiming",
    "RevocationResult",
    "Step",
    "TraceChain",
    "TraceLink",
]


class EventKind(StrEnum):
    #: A phase over the devices begins (``total`` devices).
    PHASE = "phase"
    #: One device finished the current phase (``ok`` says how).
    ADVANCE = "advance"
    #: A step finished (``ok``, ``detail``).
    STEP = "step"


@dataclass(frozen=True)
class DemoEvent:
    kind: EventKind
    name: str
    total: int = 0
    ok: bool = True
    detail: str = ""


@dataclass
class Step:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


@dataclass
class PhaseTiming:
    """One phase over the devices: wall time, outcome counts and per-device durations."""

    name: str
    devices: int
    ok: int
    failed: int
    wall_seconds: float
    #: Mean and median seconds one device spent in the phase (its own work, not waiting).
    per_device_mean: float
    per_device_median: float
    #: Successful devices per second of wall time.
    rate: float
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        name: str,
        durations: list[float],
        ok: int,
        failed: int,
        wall: float,
        errors: dict[str, str] | None = None,
    ) -> PhaseTiming:
        return cls(
            name=name,
            devices=ok + failed,
            ok=ok,
            failed=failed,
            wall_seconds=wall,
            per_device_mean=statistics.fmean(durations) if durations else 0.0,
            per_device_median=statistics.median(durations) if durations else 0.0,
            rate=ok / wall if wall > 0 else 0.0,
            errors=dict(list((errors or {}).items())[:10]),  # a few reasons are enough
        )


@dataclass
class RevocationResult:
    uid: str
    #: Seconds from the operator's revoke call returning to the device's live connection being
    #: cut or its next request refused (what the device saw).
    latency_seconds: float | None
    #: Seconds from the revocation time the fleet recorded (``revoked_at``) to the same moment.
    fleet_recorded_latency_seconds: float | None
    revoked_at: str | None
    #: A fresh mutual-TLS connection with the revoked credential was refused.
    new_connection_refused: bool
    ocsp_status: str | None
    crl_lists_serial: bool
    #: The device application's status after the revocation (REVOKED: it stopped calling).
    app_status: str | None


@dataclass
class TraceLink:
    name: str
    ok: bool
    detail: str


@dataclass
class TraceChain:
    """One device's chain of evidence, top (its certificates) to bottom (the ceremony)."""

    uid: str
    state: str
    key_epoch: int
    links: list[TraceLink]
    #: The fleet walked every link and the ceremony record copy verified against the root.
    complete: bool
    ceremony_entry_seq: int | None = None
    ceremony_action: str | None = None
    quorum: str | None = None
    custodians_present: list[str] = field(default_factory=list)


@dataclass
class DemoReport:
    devices: int
    directory: str = ""
    steps: list[Step] = field(default_factory=list)
    phases: list[PhaseTiming] = field(default_factory=list)
    #: Per-second rates of the fleet-wide phases (enrollments/s, telemetry/s, ...).
    rates: dict[str, float] = field(default_factory=dict)
    #: Per device, in UID order: what each went through (enrolled, epochs, firmware verdicts).
    enrolled: int = 0
    telemetry_sent: int = 0
    firmware_valid: int = 0
    firmware_applied: int = 0
    firmware_confirmed: int = 0
    tampered_invalid: int = 0
    tampered_applied: int = 0
    #: How the tampered image was produced (said plainly in the report).
    tampered_method: str = ""
    epochs_before: dict[str, int] = field(default_factory=dict)
    epochs_after: dict[str, int] = field(default_factory=dict)
    rotated: int = 0
    revocation: RevocationResult | None = None
    audit_ok: bool = False
    audit_entries: int = 0
    audit_head: str | None = None
    trace: TraceChain | None = None
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    @property
    def failed_steps(self) -> list[Step]:
        return [s for s in self.steps if not s.ok]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ok"] = self.ok
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
