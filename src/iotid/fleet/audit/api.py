"""HTTP endpoints of the audit slice (operator API): the log, its verification, device traces.

Scope: ``GET /v1/audit`` (filters ``subject``, ``action``, keyset paging ``after_seq``,
``limit``), ``GET /v1/audit/verify`` and ``GET /v1/devices/{uid}/trace``, any role (the auditor
is the intended reader), each calling :class:`AuditService` from ``app.state``; no rules here.

Not in scope: the rules and checks (``service``, ``trace``), error rendering (the app).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from iotid.fleet.audit.service import MAX_PAGE, AuditService, AuditVerification
from iotid.fleet.audit.trace import AuditItem, Trace
from iotid.fleet.auth import Principal, require

__all__ = ["SERVICE_STATE_KEY", "router"]

#: ``app.state`` attribute holding the :class:`AuditService`.
SERVICE_STATE_KEY = "audit_service"

router = APIRouter(prefix="/v1", tags=["audit"])


def _service(request: Request) -> AuditService:
    return cast(AuditService, getattr(request.app.state, SERVICE_STATE_KEY))


Service = Annotated[AuditService, Depends(_service)]
Reader = Annotated[Principal, Depends(require())]

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"description": "Missing, unknown, expired or revoked token"},
    422: {"description": "Invalid request (the body names the reason)"},
}


class AuditEntryOut(BaseModel):
    seq: int
    time: dt.datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    hash: str

    @classmethod
    def of(cls, item: AuditItem) -> AuditEntryOut:
        return cls(**dataclasses.asdict(item))


class AuditPageOut(BaseModel):
    items: list[AuditEntryOut]
    next_after_seq: int | None = Field(description="Pass as `after_seq` for the next page")


class VerifyOut(BaseModel):
    ok: bool
    head_seq: int | None = None
    head_hash: str | None = None
    seq: int | None = Field(default=None, description="The first bad entry (when not ok)")
    reason: str | None = None

    @classmethod
    def of(cls, result: AuditVerification) -> VerifyOut:
        return cls(**dataclasses.asdict(result))


class TraceOut(BaseModel):
    uid: str
    state: str
    key_epoch: int
    ok: bool = Field(description="Every link holds")
    complete: bool = Field(description="Every link holds and the ceremony record was verified")
    certificates: list[dict[str, Any]]
    enrollments: list[dict[str, Any]]
    batch: dict[str, Any]
    root: dict[str, Any]
    ceremony: dict[str, Any]
    audit: list[AuditEntryOut]

    @classmethod
    def of(cls, trace: Trace) -> TraceOut:
        return cls(
            uid=trace.uid,
            state=trace.state,
            key_epoch=trace.key_epoch,
            ok=trace.ok,
            complete=trace.complete,
            certificates=[dataclasses.asdict(c) for c in trace.certificates],
            enrollments=[dataclasses.asdict(e) for e in trace.enrollments],
            batch=dataclasses.asdict(trace.batch),
            root=dataclasses.asdict(trace.root),
            ceremony=dataclasses.asdict(trace.ceremony),
            audit=[AuditEntryOut.of(a) for a in trace.audit],
        )


@router.get("/audit", response_model=AuditPageOut, responses=_ERRORS)
def list_audit(
    _principal: Reader,
    service: Service,
    subject: Annotated[
        str | None, Query(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")
    ] = None,
    action: Annotated[
        str | None, Query(max_length=64, pattern=r"^[a-z0-9][a-z0-9_]*(\.[a-z0-9][a-z0-9_]*)*$")
    ] = None,
    after_seq: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> AuditPageOut:
    """Audit entries in order, filtered, with keyset paging (any role)."""
    page = service.entries(subject=subject, action=action, after_seq=after_seq, limit=limit)
    return AuditPageOut(
        items=[AuditEntryOut.of(i) for i in page.items], next_after_seq=page.next_after_seq
    )


@router.get("/audit/verify", response_model=VerifyOut, responses=_ERRORS)
def verify_audit(_principal: Reader, service: Service) -> VerifyOut:
    """Walk the whole hash chain: ok with the head, or the first bad entry (any role)."""
    return VerifyOut.of(service.verify())


@router.get("/devices/{uid}/trace", response_model=TraceOut, responses={404: {}, **_ERRORS})
def trace_device(
    uid: Annotated[str, Path(pattern=r"^(?:[0-9A-Fa-f]{2}){1,32}$")],
    _principal: Reader,
    service: Service,
) -> TraceOut:
    """A device's chain of evidence, certificate to ceremony record (any role)."""
    return TraceOut.of(service.trace(uid))
