"""The firmware slice: releases (MCUboot or raw + detached signature), per-group rollout,
distribution to devices over the gateway, and their reports.

Scope: re-exports of :mod:`iotid.fleet.firmware.service`. Not in scope: verifying signatures (the
device's secure element does), the HTTP layers (``api``, ``gateway``).
"""

from __future__ import annotations

from iotid.fleet.firmware.service import (
    MAX_IMAGE_SIZE,
    FirmwareService,
    GroupRollout,
    PublishResult,
    ReleaseView,
    ReportVerdict,
)

__all__ = [
    "MAX_IMAGE_SIZE",
    "FirmwareService",
    "GroupRollout",
    "PublishResult",
    "ReleaseView",
    "ReportVerdict",
]
