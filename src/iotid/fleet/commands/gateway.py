"""Device-facing routes of the commands slice.

Scope: :func:`register`: ``GET /v1/device/commands`` -> ``{"commands": [{"id", "epoch",
"ciphertext": b64}]}`` (undelivered, oldest first) and ``POST /v1/device/commands/{id}/ack`` ->
``{"id"}``. Always for the device the TLS client certificate names.

Not in scope: the rules (``service``), TLS and HTTP (``iotid.fleet.gateway.server``).
"""

from __future__ import annotations

import base64

from iotid.fleet.commands.service import CommandService
from iotid.fleet.errors import NotFound
from iotid.fleet.gateway.routing import DeviceContext, GatewayRequest, GatewayResponse, Routes

__all__ = ["register"]

_MAX_ID = 2**63 - 1


def register(routes: Routes, service: CommandService) -> None:
    def list_commands(ctx: DeviceContext, _request: GatewayRequest) -> GatewayResponse:
        commands = service.pending(ctx.uid)
        return GatewayResponse.of_json(
            {
                "commands": [
                    {
                        "id": c.id,
                        "epoch": c.epoch,
                        "ciphertext": base64.b64encode(c.ciphertext).decode("ascii"),
                    }
                    for c in commands
                ]
            }
        )

    def ack_command(ctx: DeviceContext, request: GatewayRequest) -> GatewayResponse:
        text = request.params["id"]
        if not text.isdigit() or not 0 < int(text) <= _MAX_ID:
            raise NotFound("command.not_found", "no such command for this device")
        return GatewayResponse.of_json({"id": service.ack(ctx.uid, int(text))})

    routes.add("GET", "/v1/device/commands", list_commands)
    routes.add("POST", "/v1/device/commands/{id}/ack", ack_command)
