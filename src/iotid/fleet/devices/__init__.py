"""The devices slice: batch manifest import, the device registry and its state machine.

Scope: ``repository`` (all SQL of the slice) and ``service`` (the rules; raises
``iotid.fleet.errors`` domain errors). The HTTP endpoints (``api``) arrive with the operator API.
Not in scope: enrollment, rotation, revocation (their own slices, which compose
``service.transition_device`` inside their transactions).
"""

from __future__ import annotations

from iotid.fleet.devices.service import (
    DevicePage,
    DeviceService,
    DeviceView,
    ImportResult,
    ManifestCardRecord,
    normalize_uid,
    transition_device,
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
