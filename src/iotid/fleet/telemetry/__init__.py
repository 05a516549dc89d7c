"""The telemetry slice: payloads devices sign with their identity key, verified on arrival.

Scope: re-exports of :mod:`iotid.fleet.telemetry.service`. Not in scope: the routes
(``api``: operator reads; ``gateway``: device posts), SQL (``repository``).
"""

from __future__ import annotations

from iotid.fleet.telemetry.service import (
    MAX_PAYLOAD,
    TelemetryService,
    TelemetryView,
    verify_identity_signature,
)

__all__ = ["MAX_PAYLOAD", "TelemetryService", "TelemetryView", "verify_identity_signature"]
