"""HTTP endpoints of the revocation slice: operator revocations, OCSP and CRL distribution.

Scope:

- ``POST /v1/devices/{uid}/revoke`` and ``POST /v1/batches/{name}/revoke`` (admin, operator;
  401 before 403): 200 with the event id, also when nothing new was revoked (``created`` false);
- ``POST /ocsp`` (``application/ocsp-request``) and ``GET /ocsp/{request}`` (RFC 6960 A.1:
  base64 of the DER, URL-encoded; base64url accepted too), answering ``application/ocsp-response``
  always with HTTP 200: a bad request gets an OCSP ``malformedRequest``, never a 4xx/5xx;
- ``GET /crl/issuing.crl`` and ``GET /crl/root.crl`` (``application/pkix-crl``, DER; the root's
  is 404 when the fleet has none). OCSP and CRLs need no token.

:func:`install` puts the slice's objects on ``app.state`` and includes :data:`router`.
Not in scope: the rules (``service``, ``ocsp``, ``crl``), rendering domain errors (the app).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable
from typing import Annotated, cast
from urllib.parse import unquote

from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp
from fastapi import APIRouter, Depends, FastAPI, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from iotid.fleet.auth import Principal, Role, require
from iotid.fleet.db import Database
from iotid.fleet.errors import NotFound
from iotid.fleet.issuing import FleetKeys
from iotid.fleet.models import utcnow
from iotid.fleet.revocation.crl import CrlPublisher
from iotid.fleet.revocation.ocsp import MAX_REQUEST_BYTES, OcspResponder
from iotid.fleet.revocation.service import RevocationResult, RevocationService

__all__ = [
    "CRL_STATE_KEY",
    "OCSP_STATE_KEY",
    "SERVICE_STATE_KEY",
    "install",
    "router",
]

#: ``app.state`` attributes holding the slice's objects.
SERVICE_STATE_KEY = "revocation_service"
OCSP_STATE_KEY = "ocsp_responder"
CRL_STATE_KEY = "crl_publisher"
OCSP_REQUEST = "application/ocsp-request"
OCSP_RESPONSE = "application/ocsp-response"
PKIX_CRL = "application/pkix-crl"

router = APIRouter(tags=["revocation"])


def _service(request: Request) -> RevocationService:
    return cast(RevocationService, getattr(request.app.state, SERVICE_STATE_KEY))


def _ocsp(request: Request) -> OcspResponder:
    return cast(OcspResponder, getattr(request.app.state, OCSP_STATE_KEY))


def _crl(request: Request) -> CrlPublisher:
    return cast(CrlPublisher, getattr(request.app.state, CRL_STATE_KEY))


Service = Annotated[RevocationService, Depends(_service)]
Responder = Annotated[OcspResponder, Depends(_ocsp)]
Publisher = Annotated[CrlPublisher, Depends(_crl)]
Writer = Annotated[Principal, Depends(require(Role.ADMIN, Role.OPERATOR))]


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        max_length=32,
        description="RFC 5280 CRLReason: key_compromise, superseded, cessation_of_operation, "
        "affiliation_changed, unspecified (a batch also: ca_compromise)",
    )


class DeviceRevoked(BaseModel):
    event_id: int | None
    revoked_at: dt.datetime | None
    certificates: int
    created: bool = Field(description="False when the device was already revoked")


class BatchRevoked(DeviceRevoked):
    devices: int


_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"description": "Missing, unknown, expired or revoked token"},
    403: {"description": "The token's role may not do this"},
    404: {"description": "No such device or batch"},
    422: {"description": "Invalid reason"},
}


def _device_out(result: RevocationResult) -> DeviceRevoked:
    return DeviceRevoked(
        event_id=result.event_id,
        revoked_at=result.revoked_at,
        certificates=result.certificates,
        created=result.created,
    )


@router.post("/v1/devices/{uid}/revoke", response_model=DeviceRevoked, responses=_ERRORS)
def revoke_device(
    uid: Annotated[str, Path(pattern=r"^(?:[0-9A-Fa-f]{2}){1,32}$")],
    body: RevokeRequest,
    principal: Writer,
    service: Service,
) -> DeviceRevoked:
    """Revoke a device and all its certificates (admin, operator)."""
    return _device_out(service.revoke_device(uid, body.reason, actor=principal.actor))


@router.post("/v1/batches/{name}/revoke", response_model=BatchRevoked, responses=_ERRORS)
def revoke_batch(
    name: Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")],
    body: RevokeRequest,
    principal: Writer,
    service: Service,
) -> BatchRevoked:
    """Revoke a batch attestation CA: every device of the batch and its certificates."""
    result = service.revoke_batch(name, body.reason, actor=principal.actor)
    return BatchRevoked(**_device_out(result).model_dump(), devices=result.devices)


def _ocsp_response(der: bytes) -> Response:
    return Response(content=der, media_type=OCSP_RESPONSE)


#: OpenAPI schema of a DER body (OCSP request or response).
_BINARY = {"type": "string", "format": "binary"}


def _malformed() -> Response:
    return _ocsp_response(
        ocsp.OCSPResponseBuilder.build_unsuccessful(
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        ).public_bytes(serialization.Encoding.DER)
    )


@router.post(
    "/ocsp",
    response_class=Response,
    responses={200: {"content": {OCSP_RESPONSE: {"schema": _BINARY}}}},
    openapi_extra={
        "requestBody": {"content": {OCSP_REQUEST: {"schema": _BINARY}}, "required": True}
    },
)
async def ocsp_post(request: Request, responder: Responder) -> Response:
    """OCSP over HTTP POST (RFC 6960 A.1.1); no token."""
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_REQUEST_BYTES:
            return _malformed()
    return _ocsp_response(responder.respond(bytes(body)))


def decode_get_request(encoded: str) -> bytes | None:
    """The DER of an RFC 6960 A.1 GET path segment (base64 or base64url, URL-encoded)."""
    text = unquote(encoded).strip().strip("/")
    if not text or len(text) > 2 * MAX_REQUEST_BYTES:
        return None
    text += "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text.encode("ascii"))
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


@router.get("/ocsp/{encoded:path}", response_class=Response)
def ocsp_get(encoded: str, responder: Responder) -> Response:
    """OCSP over HTTP GET (RFC 6960 A.1.1); no token."""
    der = decode_get_request(encoded)
    if der is None:
        return _malformed()
    return _ocsp_response(responder.respond(der))


@router.get("/crl/issuing.crl", response_class=Response)
def issuing_crl(publisher: Publisher) -> Response:
    """The fleet issuing CA's CRL (DER); no token."""
    return Response(content=publisher.issuing_crl(), media_type=PKIX_CRL)


@router.get("/crl/root.crl", response_class=Response, responses={404: {}})
def root_crl(publisher: Publisher) -> Response:
    """The issuance root's CRL as the factory issued it (DER); no token."""
    der = publisher.root_crl()
    if der is None:
        raise NotFound("crl.not_found", "this fleet has no root CRL")
    return Response(content=der, media_type=PKIX_CRL)


def install(
    app: FastAPI,
    db: Database,
    keys: FleetKeys,
    *,
    clock: Callable[[], dt.datetime] = utcnow,
    service: RevocationService | None = None,
) -> RevocationService:
    """Put the slice's service, responder and publisher on ``app.state``; include the router."""
    service = service or RevocationService(db, keys, clock=clock)
    setattr(app.state, SERVICE_STATE_KEY, service)
    setattr(app.state, OCSP_STATE_KEY, OcspResponder(db, keys, clock=clock))
    setattr(app.state, CRL_STATE_KEY, CrlPublisher(db, keys, clock=clock))
    app.include_router(router)
    return service
