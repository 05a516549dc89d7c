"""Operator endpoint of the commands slice: ``POST /v1/devices/{uid}/commands`` (admin, operator).

Scope: the request/response schemas and one route calling :class:`CommandService` from
``app.state.command_service``; the plaintext arrives base64 and is encrypted at once by the
service. Not in scope: rules and encryption (``service``), wiring (``iotid.fleet.app``).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field

from iotid.fleet.auth import Principal, Role, require
from iotid.fleet.commands.service import MAX_PLAINTEXT, CommandService
from iotid.fleet.errors import InvalidInput

__all__ = ["SERVICE_STATE_KEY", "router"]

SERVICE_STATE_KEY = "command_service"
_MAX_B64 = 4 * (MAX_PLAINTEXT // 3 + 1)

router = APIRouter(prefix="/v1", tags=["commands"])


def _service(request: Request) -> CommandService:
    return cast(CommandService, getattr(request.app.state, SERVICE_STATE_KEY))


Service = Annotated[CommandService, Depends(_service)]
Writer = Annotated[Principal, Depends(require(Role.ADMIN, Role.OPERATOR))]


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plaintext: str = Field(
        min_length=1, max_length=_MAX_B64, description="The command bytes, standard base64"
    )


class CommandOut(BaseModel):
    id: int
    epoch: int = Field(description="The identity-key epoch the command is encrypted to")


@router.post(
    "/devices/{uid}/commands",
    response_model=CommandOut,
    status_code=status.HTTP_201_CREATED,
    responses={401: {}, 403: {}, 404: {}, 409: {}, 422: {}},
)
def create_command(
    uid: Annotated[str, Path(pattern=r"^(?:[0-9A-Fa-f]{2}){1,32}$")],
    body: CommandIn,
    principal: Writer,
    service: Service,
) -> CommandOut:
    """Queue a command for a device, encrypted to its current identity key (admin, operator)."""
    try:
        plaintext = base64.b64decode(body.plaintext, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("request.bad_base64", "plaintext is not standard base64") from None
    created = service.create(uid, plaintext, actor=principal.actor)
    return CommandOut(id=created.id, epoch=created.epoch)
