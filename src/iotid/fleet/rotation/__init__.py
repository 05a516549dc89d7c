"""The rotation slice: two-phase identity-key rotation of enrolled devices (DESIGN.md section 9).

Scope: re-exports :class:`~iotid.fleet.rotation.service.RotationService` and its result type.
The device-facing endpoints are in ``gateway`` (``register``, ``on_new_certificate``); the
cryptographic checks in ``checks``; SQL in ``repository``.
Not in scope: the card's side (``iotid.se.applets.rotation``, ``iotid.host.rotation``).
"""

from __future__ import annotations

from iotid.fleet.rotation.service import PrepareResult, RotationService

__all__ = ["PrepareResult", "RotationService"]
