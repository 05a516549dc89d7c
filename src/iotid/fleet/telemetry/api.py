"""Operator endpoint of the telemetry slice: ``GET /v1/devices/{uid}/telemetry`` (any role).

Scope: the response schema and one route calling :class:`TelemetryService` from
``app.state.telemetry_service``. Not in scope: rules (``service``), wiring (``iotid.fleet.app``).
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from iotid.fleet.auth import Principal, require
from iotid.fleet.telemetry.service import MAX_LIST, TelemetryService

__all__ = ["SERVICE_STATE_KEY", "router"]

SERVICE_STATE_KEY = "telemetry_service"

router = APIRouter(prefix="/v1", tags=["telemetry"])


def _service(request: Request) -> TelemetryService:
    return cast(TelemetryService, getattr(request.app.state, SERVICE_STATE_KEY))


Service = Annotated[TelemetryService, Depends(_service)]
Reader = Annotated[Principal, Depends(require())]


class TelemetryOut(BaseModel):
    id: int
    key_epoch: int
    payload: str = Field(description="The signed payload, standard base64")
    signature: str = Field(description="The identity key's signature, standard base64")
    received_at: dt.datetime


class TelemetryListOut(BaseModel):
    uid: str
    items: list[TelemetryOut]


@router.get(
    "/devices/{uid}/telemetry",
    response_model=TelemetryListOut,
    responses={401: {}, 403: {}, 404: {}, 422: {}},
)
def list_telemetry(
    uid: Annotated[str, Path(pattern=r"^(?:[0-9A-Fa-f]{2}){1,32}$")],
    _principal: Reader,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
) -> TelemetryListOut:
    """A device's newest telemetry, newest first (any role)."""
    items = service.list(uid, limit)
    return TelemetryListOut(
        uid=uid.upper(),
        items=[
            TelemetryOut(
                id=t.id,
                key_epoch=t.key_epoch,
                payload=base64.b64encode(t.payload).decode("ascii"),
                signature=base64.b64encode(t.signature).decode("ascii"),
                received_at=t.received_at,
            )
            for t in items
        ],
    )
