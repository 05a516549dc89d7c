"""The fleet's operator API application: wiring of routers, errors, health and OpenAPI.

Scope: :func:`create_app` builds a FastAPI app over one :class:`Database` and the issuance root
the manifests are checked against; one handler renders every :class:`DomainError` as its status
with ``{"error": code, "message": ...}``; request validation failures become 422 with the reason;
``GET /healthz``; OpenAPI at ``/openapi.json``.

Not in scope: migrations (run ``Database.upgrade`` / ``iotid fleet`` before serving), the server
process (``iotid fleet serve``), the device gateway (its own mutual-TLS listener), logging setup.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cryptography import x509
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.engine import URL

from iotid.fleet.auth import DB_STATE_KEY
from iotid.fleet.db import Database
from iotid.fleet.devices.api import SERVICE_STATE_KEY
from iotid.fleet.devices.api import router as devices_router
from iotid.fleet.devices.service import DeviceService
from iotid.fleet.errors import DomainError, Unauthenticated

__all__ = ["create_app"]


class Health(BaseModel):
    status: str


def _render_domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)  # noqa: S101 (registered for DomainError only)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
    return JSONResponse(
        status_code=exc.status,
        content={"error": exc.code, "message": exc.message},
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


def create_app(db_url: str | URL, issuance_root_pem: bytes) -> FastAPI:
    """The operator API over the database at ``db_url`` (already migrated)."""
    root = x509.load_pem_x509_certificate(issuance_root_pem)
    db = Database(db_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        db.dispose()

    app = FastAPI(
        title="iotid fleet operator API",
        version="1",
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    setattr(app.state, DB_STATE_KEY, db)
    setattr(app.state, SERVICE_STATE_KEY, DeviceService(db, root))
    app.add_exception_handler(DomainError, _render_domain_error)
    app.add_exception_handler(RequestValidationError, _render_validation_error)
    app.include_router(devices_router)

    @app.get("/healthz", response_model=Health, tags=["operations"])
    def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    return app
