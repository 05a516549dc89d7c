"""HTTP endpoints of the enrollment slice (operator API app, no token: the quote authenticates).

Scope: ``POST /v1/enrollment/nonce`` -> 201 ``{"nonce": b64, "expires_at"}`` and
``POST /v1/enrollment {"quote": b64}`` -> 201 ``{"uid", "epoch", "certificate": PEM, "chain":
PEM (issuing CA), "serial", "not_after", "gateway_ca": PEM bundle (issuing CA + root)}``; a
refusal is rendered by the app's DomainError handler as 422/403 ``{"error":
"enrollment.refused", "reason", "message"}``. The service is held in ``app.state`` under
:data:`SERVICE_STATE_KEY`. Base64 is transport encoding, decoded strictly here.

Not in scope: the rules (``service``), rendering errors (the app), rate limiting the unauthenticated
nonce endpoint (a proxy in front), the device gateway's renewal (``gateway``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, ConfigDict, Field

from iotid.fleet.enrollment.quote import MAX_QUOTE_LEN
from iotid.fleet.enrollment.service import EnrollmentResult, EnrollmentService
from iotid.fleet.errors import InvalidInput

__all__ = [
    "SERVICE_STATE_KEY",
    "EnrollmentOut",
    "EnrollRequest",
    "NonceOut",
    "decode_quote_b64",
    "enrollment_body",
    "router",
]

#: ``app.state`` attribute holding the :class:`EnrollmentService`.
SERVICE_STATE_KEY = "enrollment_service"
#: Largest base64 text of a quote.
MAX_QUOTE_B64 = 4 * ((MAX_QUOTE_LEN + 2) // 3)

router = APIRouter(prefix="/v1/enrollment", tags=["enrollment"])


def _service(request: Request) -> EnrollmentService:
    return cast(EnrollmentService, getattr(request.app.state, SERVICE_STATE_KEY))


Service = Annotated[EnrollmentService, Depends(_service)]


class NonceOut(BaseModel):
    nonce: str = Field(description="The challenge to put in the quote, standard base64")
    expires_at: dt.datetime


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quote: str = Field(
        min_length=1,
        max_length=MAX_QUOTE_B64,
        description="The attestation quote (tagged COSE_Sign1), standard base64",
    )


class EnrollmentOut(BaseModel):
    uid: str
    epoch: int
    certificate: str = Field(description="The client certificate, PEM")
    chain: str = Field(description="The issuing CA's certificate, PEM")
    serial: str = Field(description="The certificate serial, lower-case hex")
    not_after: dt.datetime
    gateway_ca: str = Field(description="Issuing CA then root, PEM: to validate the gateway")


def decode_quote_b64(text: object) -> bytes:
    """A quote from its standard base64 text (InvalidInput otherwise)."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_QUOTE_B64:
        raise InvalidInput("request.bad_quote", "quote is a standard base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("request.bad_base64", "quote is not standard base64") from None


def enrollment_body(result: EnrollmentResult) -> dict[str, str | int]:
    """The JSON body of an accepted enrollment or renewal (both APIs answer the same)."""
    return {
        "uid": result.uid,
        "epoch": result.epoch,
        "certificate": result.certificate_pem,
        "chain": result.chain_pem,
        "serial": result.serial,
        "not_after": result.not_after.isoformat(),
        "gateway_ca": result.gateway_ca_pem.decode("ascii"),
    }


_ERRORS: dict[int | str, dict[str, object]] = {
    403: {"description": "Quote refused (`reason` says which check)"},
    422: {"description": "Malformed request or quote (`reason` says which check)"},
}


@router.post("/nonce", response_model=NonceOut, status_code=status.HTTP_201_CREATED)
def new_nonce(service: Service) -> NonceOut:
    """A fresh single-use enrollment nonce (no token)."""
    nonce, expires_at = service.new_nonce()
    return NonceOut(nonce=base64.b64encode(nonce).decode("ascii"), expires_at=expires_at)


@router.post(
    "", response_model=EnrollmentOut, status_code=status.HTTP_201_CREATED, responses=_ERRORS
)
def enroll(body: EnrollRequest, service: Service) -> EnrollmentOut:
    """Enroll a device with an attestation quote answering a nonce (no token)."""
    result = service.enroll(decode_quote_b64(body.quote))
    return EnrollmentOut.model_validate(enrollment_body(result))
