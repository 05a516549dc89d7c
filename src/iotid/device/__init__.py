"""The host-MCU application's side of the fleet: enroll, then talk to the gateway.

Scope: :class:`FleetClient` (enrollment over the operator API, gateway sessions over mutual TLS
with the key in the SE), :class:`GatewaySession` (whoami, telemetry, commands, firmware,
certificate renewal, key rotation), the typed errors and the retry policy. Uses the host shim
(``iotid.host``) and never the card emulator or the fleet (import-linter contract).
Not in scope: choosing the secure element (``iotid.connect`` / the CLI), the fleet itself.
"""

from __future__ import annotations

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
from iotid.device.state import DeviceState

__all__ = [
    "Command",
    "DeviceRevoked",
    "DeviceState",
    "DeviceStateError",
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
    "RetryPolicy",
    "WhoAmI",
]
