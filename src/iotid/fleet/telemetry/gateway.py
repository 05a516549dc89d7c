"""Device-facing route of the telemetry slice: ``POST /v1/device/telemetry``.

Scope: :func:`register` adds the handler to the gateway's :class:`Routes`; the body is
``{"payload": b64, "signature": b64}`` (standard base64), the answer 201 ``{"id"}``. The caller is
the device the TLS client certificate names; there is no way to post for another device.

Not in scope: the checks (``service``), TLS and HTTP (``iotid.fleet.gateway.server``).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from iotid.fleet.errors import InvalidInput
from iotid.fleet.gateway.routing import DeviceContext, GatewayRequest, GatewayResponse, Routes
from iotid.fleet.telemetry.service import TelemetryService

__all__ = ["b64_field", "register"]


def b64_field(body: dict[str, Any], name: str) -> bytes:
    """A standard-base64 string field of a JSON body, decoded strictly."""
    value = body.get(name)
    if not isinstance(value, str):
        raise InvalidInput("request.invalid", f"{name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("request.bad_base64", f"{name} is not standard base64") from None


def register(routes: Routes, service: TelemetryService) -> None:
    def post_telemetry(ctx: DeviceContext, request: GatewayRequest) -> GatewayResponse:
        body = request.json()
        telemetry_id = service.accept(ctx, b64_field(body, "payload"), b64_field(body, "signature"))
        return GatewayResponse.of_json({"id": telemetry_id}, 201)

    routes.add("POST", "/v1/device/telemetry", post_telemetry)
