"""The device gateway's request model and route table, shared by the server and the slices.

Scope: what a device-facing handler sees and returns, independent of the server that runs it:
:class:`DeviceContext` (who is calling: the UID and the client certificate the TLS handshake
proved), :class:`GatewayRequest`, :class:`GatewayResponse` (JSON or bytes) and :class:`Routes`,
the table the slices register their handlers in (``routes.add("POST", "/v1/device/telemetry",
handler)``; ``{name}`` segments become ``request.params``). A handler raises
``iotid.fleet.errors.DomainError`` for a refusal; the server renders it as its status with
``{"error": code, "message": ...}``, exactly as the operator API does.

Not in scope: TLS, HTTP parsing, connection tracking (``iotid.fleet.gateway.server``); the
handlers themselves (each slice's ``gateway.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from iotid.fleet.errors import InvalidInput, NotFound

__all__ = [
    "DeviceContext",
    "GatewayRequest",
    "GatewayResponse",
    "Handler",
    "Routes",
]


@dataclass(frozen=True)
class DeviceContext:
    """The authenticated caller: the TLS layer verified the chain to the issuing CA; the server
    checked that the certificate is not revoked and names exactly one device (SAN URI)."""

    uid: str  # upper-case hex
    certificate: x509.Certificate
    serial: str  # registry spelling: lower-case hex

    def __repr__(self) -> str:
        return f"DeviceContext(uid={self.uid!r}, serial={self.serial!r})"


@dataclass(frozen=True)
class GatewayRequest:
    method: str
    path: str
    body: bytes = b""
    query: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        """The body as a JSON object, or InvalidInput (400-class) with the reason."""
        try:
            value = json.loads(self.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput("request.bad_json", "the body is not JSON") from None
        if not isinstance(value, dict):
            raise InvalidInput("request.bad_json", "the body is not a JSON object")
        return value


@dataclass(frozen=True)
class GatewayResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    #: Close the connection after this response (``Connection: close``).
    close: bool = False

    @classmethod
    def of_json(cls, value: Any, status: int = 200, *, close: bool = False) -> GatewayResponse:
        body = json.dumps(value, separators=(",", ":")).encode()
        return cls(status, body, "application/json", close)

    @classmethod
    def of_bytes(
        cls, data: bytes, content_type: str = "application/octet-stream"
    ) -> GatewayResponse:
        return cls(200, data, content_type)


Handler = Callable[[DeviceContext, GatewayRequest], GatewayResponse]

_SEGMENT = re.compile(r"\{([a-z_]+)\}")


class Routes:
    """Method + path template -> handler. Handlers are synchronous (the server runs them in a
    worker thread: they may use the database and the CPU freely)."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], str, Handler]] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        pattern = "^" + _SEGMENT.sub(r"(?P<\1>[A-Za-z0-9._-]{1,128})", template) + "$"
        self._routes.append((method.upper(), re.compile(pattern), template, handler))

    def templates(self) -> list[tuple[str, str]]:
        return [(m, t) for m, _p, t, _h in self._routes]

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler and path parameters, or NotFound / MethodNotAllowed-as-NotFound."""
        allowed = False
        for route_method, pattern, _template, handler in self._routes:
            match = pattern.match(path)
            if match is None:
                continue
            if route_method == method.upper():
                return handler, match.groupdict()
            allowed = True
        if allowed:
            raise NotFound("request.method_not_allowed", f"{method} is not allowed on {path}")
        raise NotFound("request.no_route", f"no endpoint {path}")
