"""HTTP endpoints of the firmware slice (operator API): publish, list, assign, group, rollout.

Scope: ``POST /v1/firmware`` (admin, operator; ``{"name", "image": b64, "signature": b64|null}``
-> 201, or 200 when the same release was already published), ``GET /v1/firmware`` (any role),
``PUT /v1/firmware/groups/{group}`` ``{"release"}`` and ``PATCH /v1/devices/{uid}/group``
``{"group"}`` (admin, operator), ``GET /v1/firmware/rollout`` (any role). Each calls
:class:`FirmwareService` from ``app.state``; base64 is decoded strictly here; no rules.

Not in scope: the rules (``service``), the device side (``gateway``), error rendering (the app).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from iotid.fleet.auth import Principal, Role, require
from iotid.fleet.errors import InvalidInput
from iotid.fleet.firmware.service import MAX_IMAGE_SIZE, FirmwareService, ReleaseView

__all__ = ["SERVICE_STATE_KEY", "router"]

#: ``app.state`` attribute holding the :class:`FirmwareService`.
SERVICE_STATE_KEY = "firmware_service"
_MAX_IMAGE_B64 = (MAX_IMAGE_SIZE + 2) // 3 * 4
_MAX_SIGNATURE_B64 = 2048
_GROUP = r"^[A-Za-z0-9._-]{1,64}$"
_RELEASE = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"

router = APIRouter(prefix="/v1", tags=["firmware"])


def _service(request: Request) -> FirmwareService:
    return cast(FirmwareService, getattr(request.app.state, SERVICE_STATE_KEY))


Service = Annotated[FirmwareService, Depends(_service)]
Writer = Annotated[Principal, Depends(require(Role.ADMIN, Role.OPERATOR))]
Reader = Annotated[Principal, Depends(require())]

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"description": "Missing, unknown, expired or revoked token"},
    403: {"description": "The token's role may not do this"},
    422: {"description": "Invalid request (the body names the reason)"},
}


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_RELEASE, description="Unique release name")
    image: str = Field(min_length=1, max_length=_MAX_IMAGE_B64, description="Standard base64")
    signature: str | None = Field(
        default=None,
        min_length=1,
        max_length=_MAX_SIGNATURE_B64,
        description="Detached signature file of a raw image, standard base64 (null for MCUboot)",
    )


class ReleaseOut(BaseModel):
    name: str
    version: str
    kind: str
    sha256: str
    size: int
    created_by: str
    created_at: dt.datetime

    @classmethod
    def of(cls, view: ReleaseView) -> ReleaseOut:
        return cls(
            name=view.name,
            version=view.version,
            kind=view.kind,
            sha256=view.sha256,
            size=view.size,
            created_by=view.created_by,
            created_at=view.created_at,
        )


class ReleaseListOut(BaseModel):
    items: list[ReleaseOut]


class AssignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    release: str = Field(pattern=_RELEASE)


class AssignOut(BaseModel):
    group: str
    release: ReleaseOut


class GroupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group: str = Field(pattern=_GROUP)


class GroupOut(BaseModel):
    uid: str
    group: str
    previous: str


class GroupRolloutOut(BaseModel):
    group: str
    release: str | None
    version: str | None
    devices: int
    reported_version_count: int = Field(description="Devices running the release's version")
    valid: int = Field(description="Devices that reported the release applied")
    invalid: int = Field(description="Devices whose secure element refused the release")


class RolloutOut(BaseModel):
    groups: list[GroupRolloutOut]


def _b64(field: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("request.bad_base64", f"{field} is not standard base64") from None


@router.post(
    "/firmware",
    response_model=ReleaseOut,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Already published; nothing changed"}, 409: {}, **_ERRORS},
)
def publish(
    body: PublishRequest, response: Response, principal: Writer, service: Service
) -> ReleaseOut:
    """Publish a release: an MCUboot image, or a raw image with its detached signature file."""
    signature = None if body.signature is None else _b64("signature", body.signature)
    result = service.publish(body.name, _b64("image", body.image), signature, actor=principal.actor)
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return ReleaseOut.of(result.release)


@router.get("/firmware", response_model=ReleaseListOut, responses=_ERRORS)
def list_releases(_principal: Reader, service: Service) -> ReleaseListOut:
    """Every published release, oldest first (any role)."""
    return ReleaseListOut(items=[ReleaseOut.of(r) for r in service.releases()])


@router.get("/firmware/rollout", response_model=RolloutOut, responses=_ERRORS)
def rollout(_principal: Reader, service: Service) -> RolloutOut:
    """Per group: the assigned release and how many devices run or refused it (any role)."""
    return RolloutOut(
        groups=[
            GroupRolloutOut(
                group=g.group,
                release=g.release,
                version=g.version,
                devices=g.devices,
                reported_version_count=g.reported_version_count,
                valid=g.valid,
                invalid=g.invalid,
            )
            for g in service.rollout()
        ]
    )


@router.put("/firmware/groups/{group}", response_model=AssignOut, responses={404: {}, **_ERRORS})
def assign(
    group: Annotated[str, Path(pattern=_GROUP)],
    body: AssignRequest,
    principal: Writer,
    service: Service,
) -> AssignOut:
    """Assign a release to a group of devices (admin, operator)."""
    release = service.assign(group, body.release, actor=principal.actor)
    return AssignOut(group=group, release=ReleaseOut.of(release))


@router.patch("/devices/{uid}/group", response_model=GroupOut, responses={404: {}, **_ERRORS})
def set_group(
    uid: Annotated[str, Path(pattern=r"^(?:[0-9A-Fa-f]{2}){1,32}$")],
    body: GroupRequest,
    principal: Writer,
    service: Service,
) -> GroupOut:
    """Move a device to another rollout group (admin, operator)."""
    previous = service.set_group(uid, body.group, actor=principal.actor)
    return GroupOut(uid=uid.upper(), group=body.group, previous=previous)
