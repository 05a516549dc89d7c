"""Device-gateway endpoints of the rotation slice (mutual TLS: the client certificate is the
caller).

Scope: :func:`register` adds, for :class:`~iotid.fleet.rotation.service.RotationService`:

- ``POST /v1/device/rotation/nonce`` -> ``{"nonce": b64}``
- ``POST /v1/device/rotation`` ``{"nonce", "epoch", "new_spki", "proof", "quote"}`` (bytes as
  standard base64) -> ``{"ack": b64, "epoch", "certificate": PEM, "chain": PEM, "serial",
  "not_after"}``; a retry of the same pending rotation returns the same answer. The UID is the
  caller's (``DeviceContext.uid``): a device can only rotate itself (a body ``uid``, if sent,
  must be the caller's; the quote's UID must be too, which the service checks).
- ``POST /v1/device/rotation/complete`` (over a connection made with the NEW certificate)
  -> ``{"epoch"}``.

and :func:`on_new_certificate`, which the gateway server calls once per new connection (after
its revocation check) so a pending rotation completes as soon as the device shows the new key's
certificate. Decoding only; the rules are the service's.

Not in scope: TLS, HTTP parsing (``iotid.fleet.gateway.server``), the rules (``service``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization

from iotid.fleet.errors import Forbidden, InvalidInput
from iotid.fleet.gateway.routing import DeviceContext, GatewayRequest, GatewayResponse, Routes
from iotid.fleet.rotation.service import RotationService

__all__ = ["connection_hook", "on_new_certificate", "register"]

#: Upper bound of any base64 field (a quote is the largest: two certificates and claims).
_MAX_B64 = 16 * 1024


def _b64(body: dict[str, Any], name: str) -> bytes:
    value = body.get(name)
    if not isinstance(value, str) or not value or len(value) > _MAX_B64:
        raise InvalidInput("request.bad_field", f"{name} must be a non-empty base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("request.bad_field", f"{name} is not standard base64") from None


def _pem(*certs: Any) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)


def register(routes: Routes, service: RotationService) -> None:
    """Add the rotation endpoints to the gateway's route table."""

    def nonce(ctx: DeviceContext, _request: GatewayRequest) -> GatewayResponse:
        value = service.new_nonce(ctx.uid)
        return GatewayResponse.of_json({"nonce": base64.b64encode(value).decode("ascii")})

    def prepare(ctx: DeviceContext, request: GatewayRequest) -> GatewayResponse:
        body = request.json()
        claimed = body.get("uid")
        if claimed is not None and (not isinstance(claimed, str) or claimed.upper() != ctx.uid):
            raise Forbidden("rotation.other_device", "a device may only rotate its own key")
        epoch = body.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise InvalidInput("request.bad_field", "epoch must be an integer")
        result = service.prepare(
            ctx.uid,
            _b64(body, "nonce"),
            epoch,
            _b64(body, "new_spki"),
            _b64(body, "proof"),
            _b64(body, "quote"),
        )
        return GatewayResponse.of_json(
            {
                "ack": base64.b64encode(result.ack).decode("ascii"),
                "epoch": result.epoch,
                "certificate": _pem(result.certificate),
                "chain": _pem(*result.chain),
                "serial": result.serial,
                "not_after": result.not_after.isoformat(),
            }
        )

    def complete(ctx: DeviceContext, _request: GatewayRequest) -> GatewayResponse:
        return GatewayResponse.of_json({"epoch": service.complete(ctx.uid, ctx.serial)})

    routes.add("POST", "/v1/device/rotation/nonce", nonce)
    routes.add("POST", "/v1/device/rotation", prepare)
    routes.add("POST", "/v1/device/rotation/complete", complete)


def on_new_certificate(service: RotationService, ctx: DeviceContext) -> int | None:
    """Call once per new gateway connection: completes the caller's pending rotation when it
    connects with the new key's certificate (the new epoch then), else None. Never raises a
    domain error; cheap (one read) when no rotation is pending."""
    return service.observe_certificate(ctx.uid, ctx.serial)


def connection_hook(service: RotationService) -> Callable[[DeviceContext], None]:
    """:func:`on_new_certificate` bound to ``service``, in the shape of the gateway server's
    ``on_connect`` hook (``GatewayServer(..., on_connect=connection_hook(rotation_service))``)."""

    def hook(ctx: DeviceContext) -> None:
        on_new_certificate(service, ctx)

    return hook
