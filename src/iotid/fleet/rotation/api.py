"""Operator endpoints of the rotation slice (roles admin and operator; an auditor gets 403).

Scope:

- ``POST /v1/rotation/schedule`` ``{"uids": [..] | null, "group": str | null, "batch": str |
  null, "at": ISO time | null}`` -> ``{"scheduled": n, "uids": [...]}``: ask the selected
  enrolled/active devices to rotate (at least one selector, else 422; an unknown UID or batch is
  404). Devices learn it from the gateway's whoami (``rotation_due``).
- ``POST /v1/devices/{uid}/rotation/abort`` -> ``{"uid", "aborted_epoch", "unscheduled"}``:
  abort the device's in-flight rotation (:meth:`RotationService.abort`: back to active, the new
  key's certificate revoked) and withdraw its schedule, so it does not start again at once.
  404 unknown device; 409 when there is neither a rotation in flight nor a schedule.

Decoding and wiring only; the rules are in :mod:`~iotid.fleet.rotation.schedule` and
:mod:`~iotid.fleet.rotation.service`. Not in scope: the device-facing endpoints (``gateway``).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from iotid.fleet.auth import DB_STATE_KEY, Principal, Role, require
from iotid.fleet.db import Database
from iotid.fleet.errors import Conflict
from iotid.fleet.rotation.schedule import MAX_UIDS, RotationSchedule
from iotid.fleet.rotation.service import RotationService

__all__ = ["SERVICE_STATE_KEY", "router"]

#: ``app.state`` attribute holding the :class:`RotationService`.
SERVICE_STATE_KEY = "rotation_service"

router = APIRouter(prefix="/v1", tags=["rotation"])

Writer = Annotated[Principal, Depends(require(Role.ADMIN, Role.OPERATOR))]
_UID = r"^(?:[0-9A-Fa-f]{2}){1,32}$"
_NAME = r"^[A-Za-z0-9._-]{1,64}$"


def _service(request: Request) -> RotationService:
    return cast(RotationService, getattr(request.app.state, SERVICE_STATE_KEY))


def _schedule(request: Request) -> RotationSchedule:
    return RotationSchedule(cast(Database, getattr(request.app.state, DB_STATE_KEY)))


Service = Annotated[RotationService, Depends(_service)]
Schedule = Annotated[RotationSchedule, Depends(_schedule)]


class ScheduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uids: list[Annotated[str, Field(pattern=_UID)]] | None = Field(
        default=None, max_length=MAX_UIDS, description="Device UIDs (hex)"
    )
    group: str | None = Field(default=None, pattern=_NAME, description="A rollout group")
    batch: str | None = Field(default=None, pattern=_NAME, description="A batch name")
    at: dt.datetime | None = Field(
        default=None, description="When the rotation becomes due (default: now); with a zone"
    )


class ScheduleOut(BaseModel):
    scheduled: int
    uids: list[str]


class AbortOut(BaseModel):
    uid: str
    aborted_epoch: int | None = Field(description="The epoch of the aborted rotation, if any")
    unscheduled: bool = Field(description="A pending schedule was withdrawn")


@router.post(
    "/rotation/schedule", response_model=ScheduleOut, responses={401: {}, 403: {}, 404: {}, 422: {}}
)
def schedule_rotation(body: ScheduleIn, principal: Writer, schedule: Schedule) -> ScheduleOut:
    """Ask the selected enrolled/active devices to rotate their identity key (admin, operator)."""
    result = schedule.schedule(
        uids=body.uids, group=body.group, batch=body.batch, actor=principal.actor, at=body.at
    )
    return ScheduleOut(scheduled=result.scheduled, uids=list(result.uids))


@router.post(
    "/devices/{uid}/rotation/abort",
    response_model=AbortOut,
    responses={401: {}, 403: {}, 404: {}, 409: {}, 422: {}},
)
def abort_rotation(
    uid: Annotated[str, Path(pattern=_UID)],
    principal: Writer,
    service: Service,
    schedule: Schedule,
    force: Annotated[bool, Query()] = False,
) -> AbortOut:
    """Abort the device's rotation in flight and withdraw its schedule (admin, operator).

    A pending rotation means the device holds the fleet's acknowledgement and may already have
    committed the new key on its card (retiring the old one); aborting it then would strand the
    device. So a pending rotation is aborted only with ``force=true`` (the device is known not to
    have committed, e.g. it is being replaced); otherwise 409 ``rotation.acknowledged``.
    """
    pending = service.pending_epoch(uid)
    if pending is not None and not force:
        raise Conflict(
            "rotation.acknowledged",
            f"device {uid.upper()} holds the acknowledgement for epoch {pending} and may "
            "already have committed it on its card; let it complete, revoke the device, or "
            "pass force=true if it is known not to have committed",
        )
    aborted: int | None = None
    try:
        aborted = service.abort(uid, actor=principal.actor)
    except Conflict as exc:
        if exc.code != "rotation.not_pending":
            raise
    unscheduled = schedule.cancel(uid, actor=principal.actor)
    if aborted is None and not unscheduled:
        raise Conflict(
            "rotation.nothing_to_abort", f"device {uid.upper()} has no rotation to abort"
        )
    return AbortOut(uid=uid.upper(), aborted_epoch=aborted, unscheduled=unscheduled)
