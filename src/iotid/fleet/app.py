"""The fleet's operator API application: wiring of routers, errors, health and OpenAPI.

Scope: :func:`create_app` builds a FastAPI app over one :class:`Database` and the issuance root
the manifests are checked against; one handler renders every :class:`DomainError` as its status
with ``{"error": code, "message": ...}``; request validation failures become 422 with the reason;
``GET /healthz``; OpenAPI at ``/openapi.json``; the operator dashboard under ``/dashboard``
(``iotid.fleet.dashboard``, not in the OpenAPI document) with ``/`` redirecting to it.

Not in scope: migrations (run ``Database.upgrade`` / ``iotid fleet`` before serving), the server
process (``iotid fleet serve``), the device gateway (its own mutual-TLS listener), logging setup.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from iotid.fleet.audit.api import SERVICE_STATE_KEY as AUDIT_STATE_KEY
from iotid.fleet.audit.api import router as audit_router
from iotid.fleet.audit.service import AuditService
from iotid.fleet.auth import DB_STATE_KEY
from iotid.fleet.commands.api import SERVICE_STATE_KEY as COMMANDS_STATE_KEY
from iotid.fleet.commands.api import router as commands_router
from iotid.fleet.commands.service import CommandService
from iotid.fleet.dashboard import install as install_dashboard
from iotid.fleet.db import Database
from iotid.fleet.devices.api import SERVICE_STATE_KEY
from iotid.fleet.devices.api import router as devices_router
from iotid.fleet.devices.service import DeviceService
from iotid.fleet.enrollment.api import SERVICE_STATE_KEY as ENROLLMENT_STATE_KEY
from iotid.fleet.enrollment.api import router as enrollment_router
from iotid.fleet.enrollment.service import EnrollmentService
from iotid.fleet.errors import DomainError, Unauthenticated, Unavailable
from iotid.fleet.firmware.api import SERVICE_STATE_KEY as FIRMWARE_STATE_KEY
from iotid.fleet.firmware.api import router as firmware_router
from iotid.fleet.firmware.service import FirmwareService
from iotid.fleet.issuing import CLIENT_CERT_LIFETIME, FleetKeys
from iotid.fleet.metrics import FleetMetrics
from iotid.fleet.models import utcnow
from iotid.fleet.revocation.api import install as install_revocation
from iotid.fleet.revocation.latency import RevocationLatency
from iotid.fleet.revocation.service import RevocationService
from iotid.fleet.rotation.api import SERVICE_STATE_KEY as ROTATION_STATE_KEY
from iotid.fleet.rotation.api import router as rotation_router
from iotid.fleet.rotation.service import RotationService
from iotid.fleet.telemetry.api import SERVICE_STATE_KEY as TELEMETRY_STATE_KEY
from iotid.fleet.telemetry.api import router as telemetry_router
from iotid.fleet.telemetry.service import TelemetryService

__all__ = ["FleetServices", "create_app", "create_fleet_app"]


class Health(BaseModel):
    status: str


def _render_domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)  # noqa: S101 (registered for DomainError only)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
    return JSONResponse(
        status_code=exc.status,
        content={**exc.extra, "error": exc.code, "message": exc.message},
        headers=headers,
    )


def _render_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 (registered for it only)
    reasons = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        reasons.append(f"{where}: {error.get('msg', 'invalid')}")
    return JSONResponse(
        status_code=422,
        content={
            "error": "request.invalid",
            "message": "; ".join(reasons) or "invalid request",
            # Location and message only: never echo the submitted input back.
            "details": jsonable_encoder(
                [{"loc": e.get("loc"), "msg": e.get("msg")} for e in exc.errors()]
            ),
        },
    )


def _render_http_error(_request: Request, exc: Exception) -> JSONResponse:
    """The framework's own refusals (unknown path, wrong method, a body that is not JSON) in
    the same ``{"error", "message"}`` shape as ours."""
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101 (registered for it only)
    return JSONResponse(
        status_code=exc.status_code,
        content={"error": f"http.{exc.status_code}", "message": str(exc.detail)},
        headers=exc.headers,
    )


@dataclass(frozen=True)
class FleetServices:
    """Every slice's service of one fleet process, over one database and one set of keys."""

    db: Database
    keys: FleetKeys
    devices: DeviceService
    enrollment: EnrollmentService
    revocation: RevocationService
    rotation: RotationService
    telemetry: TelemetryService
    commands: CommandService
    firmware: FirmwareService
    audit: AuditService
    #: Revocations this process applied and how long each took (fed by the runtime's follower).
    revocation_latency: RevocationLatency = field(default_factory=RevocationLatency)

    @classmethod
    def build(
        cls,
        db: Database,
        keys: FleetKeys,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        cert_lifetime: dt.timedelta = CLIENT_CERT_LIFETIME,
        nonce_ttl: dt.timedelta = dt.timedelta(minutes=5),
        ceremony_record: Path | None = None,
    ) -> FleetServices:
        return cls(
            db=db,
            keys=keys,
            devices=DeviceService(db, keys.root, clock=clock),
            enrollment=EnrollmentService(
                db, keys, clock, cert_lifetime=cert_lifetime, nonce_ttl=nonce_ttl
            ),
            revocation=RevocationService(db, keys, clock=clock),
            rotation=RotationService(
                db, keys, clock=clock, cert_lifetime=cert_lifetime, nonce_ttl=nonce_ttl
            ),
            telemetry=TelemetryService(db, clock=clock),
            commands=CommandService(db, clock=clock),
            firmware=FirmwareService(db, clock=clock),
            audit=AuditService(db, keys, clock=clock, ceremony_record=ceremony_record),
        )


def _base_app(db: Database, *, dispose: bool) -> FastAPI:
    """The app every variant shares: metadata, error rendering, ``/healthz``."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if dispose:
            db.dispose()

    app = FastAPI(
        title="iotid fleet operator API",
        version="1",
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    setattr(app.state, DB_STATE_KEY, db)
    app.add_exception_handler(DomainError, _render_domain_error)
    app.add_exception_handler(RequestValidationError, _render_validation_error)
    app.add_exception_handler(StarletteHTTPException, _render_http_error)

    @app.get("/healthz", response_model=Health, tags=["operations"])
    def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    return app


def create_fleet_app(
    services: FleetServices, metrics: FleetMetrics | None = None, *, dispose: bool = False
) -> FastAPI:
    """The operator API over ``services``: every slice's router, errors, health, metrics."""
    db = services.db
    app = _base_app(db, dispose=dispose)
    for key, service, router in (
        (SERVICE_STATE_KEY, services.devices, devices_router),
        (ENROLLMENT_STATE_KEY, services.enrollment, enrollment_router),
        (FIRMWARE_STATE_KEY, services.firmware, firmware_router),
        (AUDIT_STATE_KEY, services.audit, audit_router),
        (TELEMETRY_STATE_KEY, services.telemetry, telemetry_router),
        (COMMANDS_STATE_KEY, services.commands, commands_router),
        (ROTATION_STATE_KEY, services.rotation, rotation_router),
    ):
        setattr(app.state, key, service)
        app.include_router(router)
    install_revocation(app, db, services.keys, service=services.revocation)
    install_dashboard(app, services)  # /dashboard (operator pages) and / -> /dashboard
    if metrics is not None:
        metrics.install(app)

    @app.get("/readyz", response_model=Health, tags=["operations"], responses={503: {}})
    def readyz() -> Health:
        """Readiness: the database answers."""
        try:
            with db.transaction(write=False) as session:
                session.execute(text("SELECT 1"))
        except SQLAlchemyError:
            raise Unavailable(
                "fleet.database_unavailable", "the database does not answer"
            ) from None
        return Health(status="ready")

    return app


def create_app(
    db_url: str | URL, issuance_root_pem: bytes, keys: FleetKeys | None = None
) -> FastAPI:
    """The operator API over the database at ``db_url`` (already migrated).

    With the fleet's ``keys``: every slice (:func:`create_fleet_app`). Without: the registry
    endpoints only (batch import, devices), for tools that hold no fleet keys.
    """
    root = x509.load_pem_x509_certificate(issuance_root_pem)
    if keys is not None and root != keys.root:
        raise ValueError("the issuance root is not the fleet keys' root")
    db = Database(db_url)
    if keys is not None:
        return create_fleet_app(FleetServices.build(db, keys), dispose=True)
    app = _base_app(db, dispose=True)
    setattr(app.state, SERVICE_STATE_KEY, DeviceService(db, root))
    app.include_router(devices_router)
    return app
