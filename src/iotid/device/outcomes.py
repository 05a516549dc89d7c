"""What the device application reports: its status, its configuration and one record per step.

Scope: :class:`DeviceStatus` (the application's state machine, as a monitoring system would
show it), :class:`DeviceConfig`, :class:`BootReport`, :class:`CycleReport`, :class:`RunSummary`,
:class:`SecureElementUnavailable` (the SE cannot be reached: removed, reader gone) and
:class:`Backoff` (exponential backoff with jitter between attempts after an outage).
Not in scope: doing any of it (:mod:`iotid.device.app`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from iotid.device.gateway import Command, FirmwareOutcome
from iotid.device.issued import EnrollmentInfo

__all__ = [
    "Backoff",
    "BootReport",
    "CycleReport",
    "DeviceConfig",
    "DeviceStatus",
    "RunSummary",
    "SecureElementUnavailable",
]


class DeviceStatus(StrEnum):
    """Where the application stands. ``REVOKED`` and ``FAILED`` are terminal: nothing more goes
    to the fleet (no retry storm); ``SE_UNAVAILABLE`` and ``FLEET_UNAVAILABLE`` are outages the
    application recovers from by itself, with backoff."""

    NEW = "new"
    PROVISIONED = "provisioned"
    ENROLLED = "enrolled"
    RUNNING = "running"
    SE_UNAVAILABLE = "se_unavailable"
    FLEET_UNAVAILABLE = "fleet_unavailable"
    REVOKED = "revoked"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (DeviceStatus.REVOKED, DeviceStatus.FAILED)


class SecureElementUnavailable(Exception):  # noqa: N818 - reads as a status
    """The secure element cannot be reached (removed, reader gone). Nothing on the card is lost;
    the application re-opens it on a later call."""


@dataclass(frozen=True)
class DeviceConfig:
    """Tunables of one device application.

    ``telemetry_interval``: seconds between cycles in ``run()``; ``backoff_initial`` /
    ``backoff_max``: the exponential backoff (with jitter) after an SE or fleet outage;
    ``firmware_dir``: where update images are staged (default ``<state_dir>/firmware``);
    ``renew_before``: renew the client certificate when it expires within this many seconds;
    ``reboot_after_update``: after a VALID image, reboot at once (the bootloader applies it and
    the new firmware confirms it through the SE) instead of at the next ``boot()``.
    """

    telemetry_interval: float = 5.0
    backoff_initial: float = 0.5
    backoff_max: float = 60.0
    firmware_dir: Path | None = None
    renew_before: float = 3600.0
    reboot_after_update: bool = True

    def __post_init__(self) -> None:
        if self.telemetry_interval < 0 or self.backoff_initial <= 0 or self.backoff_max <= 0:
            raise ValueError("intervals must be positive")
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must be at least backoff_initial")


@dataclass(frozen=True)
class BootReport:
    """What one boot did."""

    uid: str
    epoch: int
    provisioned_now: bool
    enrolled_now: bool
    #: The firmware version confirmed at this boot (it booted after a VALID verdict), if any.
    firmware_confirmed: str | None
    #: The running firmware version as the device records it (None: the factory image).
    firmware_version: str | None


@dataclass
class CycleReport:
    """One pass of the device loop. ``error`` is one line when the pass stopped early."""

    index: int
    status: DeviceStatus
    error: str | None = None
    telemetry_id: str | None = None
    commands: list[Command] = field(default_factory=list)
    firmware: FirmwareOutcome | None = None
    rotated: EnrollmentInfo | None = None
    renewed: bool = False
    rebooted: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.status.terminal

    def line(self) -> str:
        """A one-line summary (the CLI prints it)."""
        parts = [f"#{self.index}", self.status.value]
        if self.telemetry_id is not None:
            parts.append(f"telemetry {self.telemetry_id}")
        if self.commands:
            parts.append(f"{len(self.commands)} command(s)")
        if self.firmware is not None:
            verdict = "applied" if self.firmware.applied else self.firmware.verdict.reason
            parts.append(f"firmware {self.firmware.release.version}: {verdict}")
        if self.rotated is not None:
            parts.append(f"rotated to epoch {self.rotated.epoch}")
        if self.renewed:
            parts.append("certificate renewed")
        if self.error is not None:
            parts.append(f"error: {self.error}")
        return "  ".join(parts)


@dataclass
class RunSummary:
    """What ``run()`` did, and how it ended."""

    status: DeviceStatus = DeviceStatus.NEW
    cycles: int = 0
    ok: int = 0
    failed: int = 0
    telemetry: int = 0
    commands: int = 0
    firmware_applied: int = 0
    rotations: int = 0
    last_error: str | None = None
    wall_seconds: float = 0.0

    def add(self, report: CycleReport) -> None:
        self.cycles += 1
        self.status = report.status
        if report.ok:
            self.ok += 1
        else:
            self.failed += 1
            self.last_error = report.error or self.last_error
        self.telemetry += report.telemetry_id is not None
        self.commands += len(report.commands)
        self.firmware_applied += report.firmware is not None and report.firmware.applied
        self.rotations += report.rotated is not None


class Backoff:
    """Exponential backoff with "equal jitter": after the n-th consecutive failure wait
    ``d/2 + uniform(0, d/2)`` with ``d = min(maximum, initial * 2**(n-1))``: never zero (no
    hot loop), spread out (thousands of devices losing the fleet at once do not return at
    once)."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret

    def __repr__(self) -> str:
        return f"Backoff(failures={self.failures})"

    def failure(self) -> float:
        """Count a failure; the delay before the next attempt."""
        self.failures += 1
        ceiling = min(self.maximum, self.initial * 2.0 ** min(self.failures - 1, 62))
        return float(ceiling / 2 + self._rng.uniform(0.0, ceiling / 2))

    def success(self) -> None:
        self.failures = 0
