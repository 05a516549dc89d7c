"""The device gateway: mutual-TLS HTTP/1.1 for devices (the client certificate is the identity).

Scope: re-exports of the request model and route table (``routing``), the server (``server``)
and the presence bookkeeping (``presence``). Not in scope: the slices' handlers (each slice's
``gateway.py``), the operator API (``iotid.fleet.app``).
"""

from __future__ import annotations

from iotid.fleet.gateway.presence import CONNECTABLE_STATES, PresenceService
from iotid.fleet.gateway.routing import (
    DeviceContext,
    GatewayRequest,
    GatewayResponse,
    Handler,
    Routes,
)
from iotid.fleet.gateway.server import GatewayServer, IsRevoked, RunningGateway, server_context

__all__ = [
    "CONNECTABLE_STATES",
    "DeviceContext",
    "GatewayRequest",
    "GatewayResponse",
    "GatewayServer",
    "Handler",
    "IsRevoked",
    "PresenceService",
    "Routes",
    "RunningGateway",
    "server_context",
]
