"""The host-MCU application and its side of the fleet.

Scope: :class:`DeviceApp` (the device application: boot, provision, enroll, telemetry,
commands, firmware, rotation on the operator's schedule, revocation and SE outages handled),
:class:`Swarm` (many devices in one process), :class:`FleetClient` (enrollment over the
operator API, gateway sessions over mutual TLS with the key in the SE),
:class:`GatewaySession` (whoami, telemetry, commands, firmware, certificate renewal, key
rotation), the typed errors and the retry policy. Uses the host shim (``iotid.host``) and never
the card emulator or the fleet (import-linter contract).
Not in scope: choosing the secure element (``iotid.connect`` / the CLI), the fleet itself.
"""

from __future__ import annotations

from iotid.device.app import DeviceApp
from iotid.device.errors import (
    DeviceRevoked,
    DeviceStateError,
    FleetError,
    FleetRefused,
    FleetUnavailable,
    GatewayUntrusted,
)
from iotid.device.fleetclient import FleetClient
from iotid.device.gateway import (
    Command,
    FirmwareOutcome,
    FirmwareRelease,
    GatewaySession,
    WhoAmI,
)
from iotid.device.http import JsonChannel, RetryPolicy
from iotid.device.issued import EnrollmentInfo
from iotid.device.outcomes import (
    BootReport,
    CycleReport,
    DeviceConfig,
    DeviceStatus,
    RunSummary,
    SecureElementUnavailable,
)
from iotid.device.state import DeviceState
from iotid.device.swarm import PhaseResult, Swarm

__all__ = [
    "BootReport",
    "Command",
    "CycleReport",
    "DeviceApp",
    "DeviceConfig",
    "DeviceRevoked",
    "DeviceState",
    "DeviceStateError",
    "DeviceStatus",
    "EnrollmentInfo",
    "FirmwareOutcome",
    "FirmwareRelease",
    "FleetClient",
    "FleetError",
    "FleetRefused",
    "FleetUnavailable",
    "GatewaySession",
    "GatewayUntrusted",
    "JsonChannel",
    "PhaseResult",
    "RetryPolicy",
    "RunSummary",
    "SecureElementUnavailable",
    "Swarm",
    "WhoAmI",
]
