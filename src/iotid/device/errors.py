"""What the device's fleet client raises: one small hierarchy, mapped from HTTP and TLS.

Scope: :class:`FleetError` and its subclasses, the typed outcomes of a call to the fleet:
:class:`FleetRefused` (a 4xx with the fleet's ``{"error", "message"[, "reason"]}``),
:class:`FleetUnavailable` (5xx, connection failures, timeouts: worth retrying later),
:class:`DeviceRevoked` (the fleet said ``device.revoked`` / ``batch.revoked``: stop, do not
retry), :class:`GatewayUntrusted` (the gateway's certificate did not validate: a security
failure, never retried) and :class:`DeviceStateError` (the device is not in a state for the call,
e.g. not enrolled yet).
Not in scope: deciding what to retry (:mod:`iotid.device.http`), the card's own errors (the host
shim's types pass through unchanged).
"""

from __future__ import annotations

__all__ = [
    "DeviceRevoked",
    "DeviceStateError",
    "FleetError",
    "FleetRefused",
    "FleetUnavailable",
    "GatewayUntrusted",
]


class FleetError(Exception):
    """Base of every failure of a call to the fleet."""


class FleetRefused(FleetError):  # noqa: N818 - the fleet's vocabulary
    """The fleet answered 4xx: ``status``, its stable ``code``, ``message`` and, for refused
    quotes, the verifier's ``reason``. Retrying the same request will not help."""

    def __init__(self, status: int, code: str, message: str, reason: str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason
        text = f"{status} {code}: {message}"
        super().__init__(text if reason is None else f"{text} (reason: {reason})")


class FleetUnavailable(FleetError):  # noqa: N818 - the fleet's vocabulary
    """The fleet could not be reached or answered 5xx (``status`` is None for I/O failures)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class DeviceRevoked(FleetError):  # noqa: N818 - the fleet's vocabulary
    """The fleet said this device (or its batch) is revoked, over an authenticated channel.
    Terminal: the client stops calling the gateway (no retry storm)."""


class GatewayUntrusted(FleetError):  # noqa: N818 - the fleet's vocabulary
    """The gateway's certificate chain did not validate against the fleet CA bundle."""


class DeviceStateError(FleetError):
    """The device cannot make this call in its current state (e.g. not enrolled)."""
