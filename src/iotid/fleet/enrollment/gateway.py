"""Device-gateway endpoints of the enrollment slice: certificate renewal over mutual TLS.

Scope: :func:`register` adds to the gateway's :class:`Routes`

- ``POST /v1/device/certificate/nonce`` -> 201 ``{"nonce": b64, "expires_at"}``: a renewal
  nonce bound to the calling device (another device cannot use it);
- ``POST /v1/device/certificate {"quote": b64}`` -> 201, the enrollment response shape
  (``uid``, ``epoch``, ``certificate``, ``chain``, ``serial``, ``not_after``, ``gateway_ca``):
  a fresh quote from the caller's card, for the registry's CURRENT key and epoch, earns a new
  short-lived certificate. The quote's UID must be the caller's (``uid_mismatch`` otherwise).

Refusals are :class:`~iotid.fleet.enrollment.service.EnrollmentRefused` (``enrollment.refused``
with ``reason`` in ``extra``), rendered by the gateway server like any DomainError.
Not in scope: TLS and who the caller is (the server builds the :class:`DeviceContext`), the
rules (``service``).
"""

from __future__ import annotations

import base64

from iotid.fleet.enrollment.api import decode_quote_b64, enrollment_body
from iotid.fleet.enrollment.service import EnrollmentService
from iotid.fleet.gateway.routing import DeviceContext, GatewayRequest, GatewayResponse, Routes

__all__ = ["NONCE_PATH", "RENEW_PATH", "register"]

NONCE_PATH = "/v1/device/certificate/nonce"
RENEW_PATH = "/v1/device/certificate"


def register(routes: Routes, service: EnrollmentService) -> None:
    """Add the renewal endpoints, served by ``service``, to ``routes``."""

    def renewal_nonce(ctx: DeviceContext, _request: GatewayRequest) -> GatewayResponse:
        nonce, expires_at = service.new_renewal_nonce(ctx.uid)
        return GatewayResponse.of_json(
            {
                "nonce": base64.b64encode(nonce).decode("ascii"),
                "expires_at": expires_at.isoformat(),
            },
            status=201,
        )

    def renew(ctx: DeviceContext, request: GatewayRequest) -> GatewayResponse:
        quote = decode_quote_b64(request.json().get("quote"))
        return GatewayResponse.of_json(enrollment_body(service.renew(ctx.uid, quote)), status=201)

    routes.add("POST", NONCE_PATH, renewal_nonce)
    routes.add("POST", RENEW_PATH, renew)
