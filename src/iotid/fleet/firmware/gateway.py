"""Device-facing firmware endpoints on the gateway (mutual TLS; the caller is its certificate).

Scope: :func:`register` adds to the gateway's :class:`~iotid.fleet.gateway.routing.Routes`:

- ``GET /v1/device/firmware`` -> ``{"release": {"name", "version", "kind", "sha256", "size"}}``
  or ``{"release": null}``: the release assigned to the caller's group;
- ``GET /v1/device/firmware/{name}`` -> the image bytes, only for that release (any other name
  is 404: a device cannot download arbitrary releases);
- ``GET /v1/device/firmware/{name}/signature`` -> the detached signature file (404 for MCUboot);
- ``POST /v1/device/firmware/report`` ``{"version", "verdict": "valid"|"invalid"|"applied"}``
  -> ``{"ok": true}``.

No rules here (:class:`~iotid.fleet.firmware.service.FirmwareService`). Not in scope: TLS,
revocation checks and the caller's identity (the gateway server).
"""

from __future__ import annotations

from typing import Any

from iotid.fleet.errors import InvalidInput
from iotid.fleet.firmware.service import FirmwareService, ReleaseView
from iotid.fleet.gateway.routing import DeviceContext, GatewayRequest, GatewayResponse, Routes

__all__ = ["register", "release_json"]


def release_json(release: ReleaseView) -> dict[str, Any]:
    return {
        "name": release.name,
        "version": release.version,
        "kind": release.kind,
        "sha256": release.sha256,
        "size": release.size,
    }


def register(routes: Routes, service: FirmwareService) -> None:
    def current(device: DeviceContext, _request: GatewayRequest) -> GatewayResponse:
        release = service.release_for(device.uid)
        return GatewayResponse.of_json(
            {"release": None if release is None else release_json(release)}
        )

    def image(device: DeviceContext, request: GatewayRequest) -> GatewayResponse:
        return GatewayResponse.of_bytes(service.device_image(device.uid, request.params["name"]))

    def signature(device: DeviceContext, request: GatewayRequest) -> GatewayResponse:
        return GatewayResponse.of_bytes(
            service.device_signature(device.uid, request.params["name"])
        )

    def report(device: DeviceContext, request: GatewayRequest) -> GatewayResponse:
        body = request.json()
        version, verdict = body.get("version"), body.get("verdict")
        if not isinstance(version, str) or not isinstance(verdict, str):
            raise InvalidInput("request.invalid", "version and verdict are strings")
        service.report(device.uid, version, verdict)
        return GatewayResponse.of_json({"ok": True})

    routes.add("GET", "/v1/device/firmware", current)
    routes.add("GET", "/v1/device/firmware/{name}", image)
    routes.add("GET", "/v1/device/firmware/{name}/signature", signature)
    routes.add("POST", "/v1/device/firmware/report", report)
