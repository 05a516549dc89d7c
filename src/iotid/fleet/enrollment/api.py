"""HTTP endpoints of the enrollment slice (operator API app, no token: the quote authenticates).

Scope: ``POST /v1/enrollment/nonce`` -> 201 ``{"nonce": b64, "expires_at"}`` and
``POST /v1/enrollment {"quote": b64}`` -> 201 ``{"uid", "epoch", "certificate": PEM, "chain":
PEM (issuing CA), "serial", "not_after", "gateway_ca": PEM bundle (issuing CA + root)}``; a
refusal is rendered by the app's DomainError handler as 422/403 ``{"error":
"enrollment.refused", "reason", "message"}``. The service is held in ``app.state`` under
:data:`SERVICE_STATE_KEY`. Base64 is transport encoding, decoded strictly here.

The token-free nonce endpoint is rate limited per client address in process
(:mod:`iotid.fleet.ratelimit`, default 50/s with a burst of 100): beyond it, 429 with
``Retry-After`` and ``{"error": "enrollment.rate_limited", "message", "retry_after"}``. The
limiter lives in ``app.state`` under :data:`NONCE_LIMITER_STATE_KEY`; :func:`install_nonce_limit`
sets it (configuration, an off switch for benches), otherwise the default is made on first use.

Not in scope: the rules (``service``), rendering errors (the app), a limit shared by several fleet
processes (a proxy in front), the device gateway's renewal (``gateway``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Annotated, cast

from fastapi import APIRouter, Depends, FastAPI, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from iotid.fleet.enrollment.quote import MAX_QUOTE_LEN
from iotid.fleet.enrollment.service import EnrollmentResult, EnrollmentService
from iotid.fleet.errors import InvalidInput
from iotid.fleet.ratelimit import RateLimit, TokenBucketLimiter

__all__ = [
    "NONCE_LIMITER_STATE_KEY",
    "SERVICE_STATE_KEY",
    "EnrollmentOut",
    "EnrollRequest",
    "NonceOut",
    "decode_quote_b64",
    "enrollment_body",
    "install_nonce_limit",
    "router",
]

#: ``app.state`` attribute holding the :class:`EnrollmentService`.
SERVICE_STATE_KEY = "enrollment_service"
#: ``app.state`` attribute holding the nonce endpoint's :class:`TokenBucketLimiter`.
NONCE_LIMITER_STATE_KEY = "enrollment_nonce_limiter"
#: Largest base64 text of a quote.
MAX_QUOTE_B64 = 4 * ((MAX_QUOTE_LEN + 2) // 3)

router = APIRouter(prefix="/v1/enrollment", tags=["enrollment"])


def _service(request: Request) -> EnrollmentService:
    return cast(EnrollmentService, getattr(request.app.state, SERVICE_STATE_KEY))


Service = Annotated[EnrollmentService, Depends(_service)]
_default_limiter_lock = threading.Lock()


def install_nonce_limit(
    app: FastAPI, limit: RateLimit | None = None, *, clock: Callable[[], float] = time.monotonic
) -> TokenBucketLimiter:
    """Rate limit ``POST /v1/enrollment/nonce`` of ``app`` per client address (``limit``)."""
    limiter = TokenBucketLimiter(limit, clock=clock)
    setattr(app.state, NONCE_LIMITER_STATE_KEY, limiter)
    return limiter


def _nonce_limiter(request: Request) -> TokenBucketLimiter:
    limiter = getattr(request.app.state, NONCE_LIMITER_STATE_KEY, None)
    if limiter is None:
        with _default_limiter_lock:
            limiter = getattr(request.app.state, NONCE_LIMITER_STATE_KEY, None)
            if limiter is None:
                limiter = install_nonce_limit(request.app)
    return cast(TokenBucketLimiter, limiter)


NonceLimiter = Annotated[TokenBucketLimiter, Depends(_nonce_limiter)]


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


class RateLimitedOut(BaseModel):
    error: str = Field(description='"enrollment.rate_limited"')
    message: str
    retry_after: int = Field(description="Seconds to wait, as in the Retry-After header")


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


_RATE_LIMITED: dict[int | str, dict[str, object]] = {
    429: {
        "description": "Too many nonce requests from this client address",
        "model": RateLimitedOut,
        "headers": {
            "Retry-After": {
                "description": "Seconds before a new request can succeed",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    },
}


@router.post(
    "/nonce",
    response_model=NonceOut,
    status_code=status.HTTP_201_CREATED,
    responses=_RATE_LIMITED,
)
def new_nonce(request: Request, service: Service, limiter: NonceLimiter) -> NonceOut | JSONResponse:
    """A fresh single-use enrollment nonce (no token; rate limited per client address)."""
    decision = limiter.take(request.client.host if request.client else "unknown")
    if not decision.allowed:
        wait = decision.retry_after_header
        return JSONResponse(
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            content={
                "error": "enrollment.rate_limited",
                "message": f"too many enrollment nonce requests; retry after {wait} s",
                "retry_after": int(wait),
            },
            headers={"Retry-After": wait},
        )
    nonce, expires_at = service.new_nonce()
    return NonceOut(nonce=base64.b64encode(nonce).decode("ascii"), expires_at=expires_at)


@router.post(
    "", response_model=EnrollmentOut, status_code=status.HTTP_201_CREATED, responses=_ERRORS
)
def enroll(body: EnrollRequest, service: Service) -> EnrollmentOut:
    """Enroll a device with an attestation quote answering a nonce (no token)."""
    result = service.enroll(decode_quote_b64(body.quote))
    return EnrollmentOut.model_validate(enrollment_body(result))
