"""HTTP endpoints of the devices slice (operator API): batch import, device list and detail.

Scope: request/response schemas and three routes, each authenticating through
``iotid.fleet.auth.require`` and calling :class:`DeviceService` (held in ``app.state``); no rules
here. Base64 in the import body is transport encoding, decoded strictly before the service sees
the bytes.

Not in scope: the rules (``service``), rendering domain errors (the app's handler), wiring
(``iotid.fleet.app``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from iotid.fleet.auth import Principal, Role, require
from iotid.fleet.devices.service import MAX_PAGE, DeviceService, DeviceView
from iotid.fleet.errors import InvalidInput
from iotid.fleet.models import DeviceState

__all__ = ["SERVICE_STATE_KEY", "router"]

#: ``app.state`` attribute holding the :class:`DeviceService`.
SERVICE_STATE_KEY = "device_service"
#: Largest base64 text accepted for a manifest (a 100k-card manifest is well below this).
_MAX_MANIFEST_B64 = 64 * 1024 * 1024
_MAX_SIGNATURE_B64 = 4096

router = APIRouter(prefix="/v1", tags=["devices"])


def _service(request: Request) -> DeviceService:
    return cast(DeviceService, getattr(request.app.state, SERVICE_STATE_KEY))


Service = Annotated[DeviceService, Depends(_service)]
Importer = Annotated[Principal, Depends(require(Role.ADMIN, Role.OPERATOR))]
Reader = Annotated[Principal, Depends(require())]


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest: str = Field(
        min_length=1,
        max_length=_MAX_MANIFEST_B64,
        description="The canonical manifest bytes, standard base64",
    )
    signature: str = Field(
        min_length=1,
        max_length=_MAX_SIGNATURE_B64,
        description="The batch CA's signature over the manifest bytes, standard base64",
    )


class ImportResponse(BaseModel):
    batch: str
    manifest_sha256: str
    devices: int
    created: bool = Field(description="False when this manifest had already been imported")


class DeviceOut(BaseModel):
    uid: str
    batch: str
    algorithm: str
    state: DeviceState
    identity_spki: str | None = Field(description="DER SubjectPublicKeyInfo, standard base64")
    attestation_cert_sha256: str
    key_epoch: int
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, view: DeviceView) -> DeviceOut:
        spki = view.identity_spki
        return cls(
            uid=view.uid,
            batch=view.batch,
            algorithm=view.algorithm,
            state=view.state,
            identity_spki=None if spki is None else base64.b64encode(spki).decode("ascii"),
            attestation_cert_sha256=view.attestation_cert_sha256,
            key_epoch=view.key_epoch,
            created_at=view.created_at,
            updated_at=view.updated_at,
        )


class DevicePageOut(BaseModel):
    items: list[DeviceOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


def _b64(field: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("request.bad_base64", f"{field} is not standard base64") from None


_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"description": "Missing, unknown, expired or revoked token"},
    403: {"description": "The token's role may not do this"},
    422: {"description": "Invalid request (the body names the reason)"},
}


@router.post(
    "/batches",
    response_model=ImportResponse,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Already imported; nothing changed"}, 409: {}, **_ERRORS},
)
def import_batch(
    body: ImportRequest, response: Response, principal: Importer, service: Service
) -> ImportResponse:
    """Import a signed batch manifest (admin, operator)."""
    result = service.import_manifest(
        _b64("manifest", body.manifest), _b64("signature", body.signature), actor=principal.actor
    )
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return ImportResponse(
        batch=result.batch,
        manifest_sha256=result.manifest_sha256,
        devices=result.devices,
        created=result.created,
    )


@router.get("/devices", response_model=DevicePageOut, responses=_ERRORS)
def list_devices(
    _principal: Reader,
    service: Service,
    state: DeviceState | None = None,
    batch: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] = None,
    uid_prefix: Annotated[str | None, Query(pattern=r"^[0-9A-Fa-f]{1,64}$")] = None,
    cursor: Annotated[str | None, Query(pattern=r"^(?:[0-9A-Fa-f]{2}){1,32}$")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> DevicePageOut:
    """Devices ordered by UID, filtered, with keyset paging (any role)."""
    page = service.list_devices(
        state=state, batch=batch, uid_prefix=uid_prefix, cursor=cursor, limit=limit
    )
    return DevicePageOut(items=[DeviceOut.of(d) for d in page.items], next_cursor=page.next_cursor)


@router.get("/devices/{uid}", response_model=DeviceOut, responses={404: {}, **_ERRORS})
def get_device(
    uid: Annotated[str, Path(pattern=r"^(?:[0-9A-Fa-f]{2}){1,32}$")],
    _principal: Reader,
    service: Service,
) -> DeviceOut:
    """One device by UID, hex (any role)."""
    return DeviceOut.of(service.get_device(uid))
