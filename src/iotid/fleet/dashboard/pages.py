"""The operator dashboard's pages: server-rendered HTML under ``/dashboard``.

Scope: :data:`router` (every route ``include_in_schema=False``: the OpenAPI document stays the
API's) and :func:`install`, which puts a :class:`DashboardService` on ``app.state``, includes
the router and redirects ``/`` to the overview. Pages:

- ``GET/POST /dashboard/login`` (paste an API token; see ``session``), ``POST /dashboard/logout``;
- ``GET /dashboard``: the fleet overview (devices by state and batch, enrollments over time,
  firmware rollout per group, recent revocations with the latency this process measured);
- ``GET /dashboard/devices``: devices filtered by state / batch / UID prefix, paged by UID;
- ``GET /dashboard/devices/{uid}``: one device (facts, certificates, rotations, telemetry with
  plots, commands, firmware reports, revocations, and the trace as a chain of links from its
  certificates down to the ceremony record, then its audit entries);
- ``GET /dashboard/devices/{uid}/revoke`` (the confirmation form) and ``POST`` to it: operator or
  admin, the session's CSRF token, the device's UID typed again, a CRLReason; then the revocation
  slice's service. Any other role gets a 403 page saying so, on viewing the form and on posting.

Every response carries a strict Content-Security-Policy (no scripts at all, styles only from
the dashboard's stylesheet), ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer`` and
``Cache-Control: no-store``. Templates are Jinja2 with autoescaping on; a refusal or a domain
error is a page with its status and reason, never a traceback or the API's JSON. Without a
session, pages redirect to the login page (303) and posts answer 401.

Not in scope: the queries (``service``), the charts' markup (``charts``), cookies and CSRF
(``session``), the rules of revocation (the revocation slice).
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.resources
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, urlencode

from cryptography import x509
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException

from iotid.fleet.auth import DB_STATE_KEY, Principal, authenticate
from iotid.fleet.dashboard import charts
from iotid.fleet.dashboard.service import DashboardService
from iotid.fleet.dashboard.session import (
    LOGIN_COOKIE,
    REVOKERS,
    check_token,
    clear_session,
    csrf_token,
    new_login_token,
    principal_of,
    session_secret,
    set_login_cookie,
    set_session,
)
from iotid.fleet.db import Database
from iotid.fleet.devices.service import normalize_uid
from iotid.fleet.errors import DomainError, InvalidInput, Unauthenticated
from iotid.fleet.revocation.service import DEVICE_REASONS

if TYPE_CHECKING:
    from iotid.fleet.app import FleetServices

__all__ = ["SERVICE_STATE_KEY", "install", "router"]

#: ``app.state`` attribute holding the :class:`DashboardService`.
SERVICE_STATE_KEY = "dashboard_service"
BASE = "/dashboard"
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
#: Device reasons offered on the form, most likely first (names as the API spells them).
REASONS = tuple(
    r.name
    for r in (
        x509.ReasonFlags.key_compromise,
        x509.ReasonFlags.cessation_of_operation,
        x509.ReasonFlags.affiliation_changed,
        x509.ReasonFlags.superseded,
        x509.ReasonFlags.unspecified,
    )
    if r in DEVICE_REASONS
)
_FORM_LIMITS: Mapping[str, int] = {"max_files": 0, "max_fields": 8, "max_part_size": 4096}
_DEVICES_PAGE = 100

router = APIRouter(prefix=BASE, include_in_schema=False)


# -- rendering --------------------------------------------------------------------------------
def _when(value: dt.datetime | None) -> str:
    return "\u2014" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ms(seconds: float | None) -> str:
    return "\u2014" if seconds is None else f"{seconds * 1000:,.1f} ms"


@functools.cache
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("iotid.fleet.dashboard", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["ms"] = _ms
    env.filters["num"] = charts.format_number
    env.filters["short"] = lambda text, n=16: text if len(text) <= n else text[:n] + "\u2026"
    env.globals["base"] = BASE
    env.globals["q"] = lambda text: quote(str(text), safe="")
    return env


@functools.cache
def _stylesheet() -> bytes:
    return (
        importlib.resources.files("iotid.fleet.dashboard")
        .joinpath("static/dashboard.css")
        .read_bytes()
    )


def _secured(response: Response) -> Response:
    response.headers.update(_HEADERS)
    return response


def _render(
    request: Request,
    template: str,
    *,
    status: int = 200,
    principal: Principal | None = None,
    **context: Any,
) -> HTMLResponse:
    secret = session_secret(request) if principal is not None else None
    html = (
        _environment()
        .get_template(template)
        .render(
            principal=principal,
            csrf=None if secret is None else csrf_token(secret),
            can_revoke=principal is not None and principal.role in REVOKERS,
            **context,
        )
    )
    return cast(HTMLResponse, _secured(HTMLResponse(html, status_code=status)))


def _error(
    request: Request, principal: Principal | None, status: int, title: str, message: str
) -> HTMLResponse:
    return _render(
        request, "error.html", status=status, principal=principal, title=title, message=message
    )


def _domain_error(request: Request, principal: Principal | None, exc: DomainError) -> HTMLResponse:
    titles = {404: "Not found", 409: "Conflict", 422: "Invalid input", 503: "Unavailable"}
    return _error(request, principal, exc.status, titles.get(exc.status, "Refused"), exc.message)


def _redirect(url: str) -> Response:
    return _secured(RedirectResponse(url, status_code=303))


def _service(request: Request) -> DashboardService:
    return cast(DashboardService, getattr(request.app.state, SERVICE_STATE_KEY))


def _page(
    request: Request, build: Callable[[DashboardService, Principal], HTMLResponse]
) -> Response:
    """A GET page for any signed-in role; the login page otherwise; domain errors as pages."""
    principal = principal_of(request)
    if principal is None:
        return _redirect(f"{BASE}/login")
    try:
        return build(_service(request), principal)
    except DomainError as exc:
        return _domain_error(request, principal, exc)


async def _form(request: Request) -> FormData | None:
    try:
        return await request.form(**_FORM_LIMITS)
    except (MultiPartException, ValueError):
        return None


def _refuse_role(request: Request, principal: Principal) -> HTMLResponse:
    allowed = " or ".join(sorted(r.value for r in REVOKERS))
    return _error(
        request,
        principal,
        403,
        "Not allowed to revoke",
        f"You are signed in with the {principal.role.value} role, which may look but not "
        f"revoke. Revoking a device needs the {allowed} role; nothing was changed.",
    )


# -- static -----------------------------------------------------------------------------------
@router.get("/static/dashboard.css", include_in_schema=False)
def stylesheet() -> Response:
    response = Response(_stylesheet(), media_type="text/css")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "max-age=300"
    return response


# -- login / logout ---------------------------------------------------------------------------
@router.get("/login", include_in_schema=False)
def login_form(request: Request) -> Response:
    if principal_of(request) is not None:
        return _redirect(BASE)
    token = new_login_token()
    response = _render(request, "login.html", login_csrf=token, error=None)
    set_login_cookie(request, response, token)
    return response


@router.post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    form = await _form(request)
    expected = request.cookies.get(LOGIN_COOKIE)
    if form is None or not check_token(expected, form.get("login_csrf")):
        return _error(
            request,
            None,
            403,
            "Login form expired",
            "The login form expired or did not come from this dashboard. Open the login page "
            "again and paste your token.",
        )
    token = form.get("token")
    db = cast(Database, getattr(request.app.state, DB_STATE_KEY))
    try:
        authenticate(db, token.strip() if isinstance(token, str) else None)
    except Unauthenticated:
        fresh = new_login_token()
        response = _render(
            request,
            "login.html",
            status=401,
            login_csrf=fresh,
            error="That token was refused: it is missing, unknown, expired or revoked.",
        )
        set_login_cookie(request, response, fresh)
        return response
    done = _redirect(BASE)
    set_session(request, done, cast(str, token).strip())
    return done


@router.post("/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    form = await _form(request)
    secret = session_secret(request)
    if secret is not None and (
        form is None or not check_token(csrf_token(secret), form.get("csrf"))
    ):
        return _error(request, principal_of(request), 403, "Refused", "The form expired.")
    response = _redirect(f"{BASE}/login")
    clear_session(request, response)
    return response


# -- pages ------------------------------------------------------------------------------------
@router.get("", include_in_schema=False)
def overview(request: Request) -> Response:
    def build(service: DashboardService, principal: Principal) -> HTMLResponse:
        data = service.overview()
        state_keys = [name for name, _ in data.states]
        return _render(
            request,
            "overview.html",
            principal=principal,
            data=data,
            states_chart=charts.bar_chart(
                list(data.states), title="Devices by state", colors=charts.STATE_COLORS
            ),
            batches_chart=charts.stacked_bars(
                [(b.name, b.counts) for b in data.batches],
                state_keys,
                title="Devices by batch and state",
                colors=charts.STATE_COLORS,
            ),
            enrollments_chart=charts.time_series(
                [(when, float(n)) for when, n in data.enrollments.points],
                title="Accepted enrollments over time",
                bucket=data.enrollments.bucket,
            ),
            rollout_charts=[
                charts.progress_bar(
                    [
                        ("applied", g.valid, "#2e9d5b"),
                        ("refused as invalid", g.invalid, "#d64545"),
                    ],
                    g.devices,
                    title=f"Rollout of {g.release or 'no release'} to group {g.group}",
                )
                for g in data.rollout
            ],
            latency_chart=charts.bar_chart(
                [
                    (f"#{r.event.id} {r.event.subject}", r.applied.latency_s * 1000)
                    for r in reversed(data.revocations)
                    if r.applied is not None
                ],
                title="Revocation latency as seen by this process",
                unit="ms",
                colors=None,
            ),
        )

    return _page(request, build)


@router.get("/devices", include_in_schema=False)
def devices(request: Request) -> Response:
    params = request.query_params
    wanted = {k: (params.get(k) or None) for k in ("state", "batch", "prefix", "cursor")}

    def build(service: DashboardService, principal: Principal) -> HTMLResponse:
        page = service.devices(
            state=wanted["state"],
            batch=wanted["batch"],
            uid_prefix=wanted["prefix"],
            cursor=wanted["cursor"],
            limit=_DEVICES_PAGE,
        )
        filters = {k: v for k, v in wanted.items() if v is not None and k != "cursor"}
        next_url = None
        if page.next_cursor is not None:
            next_url = f"{BASE}/devices?" + urlencode({**filters, "cursor": page.next_cursor})
        return _render(
            request,
            "devices.html",
            principal=principal,
            page=page,
            filters=filters,
            next_url=next_url,
            states=[s for s, _ in charts.STATE_COLORS.items()],
        )

    return _page(request, build)


@router.get("/devices/{uid}", include_in_schema=False)
def device(request: Request, uid: str) -> Response:
    def build(service: DashboardService, principal: Principal) -> HTMLResponse:
        detail = service.device(uid)
        return _render(
            request,
            "device.html",
            principal=principal,
            d=detail,
            t=detail.trace,
            reasons=REASONS,
            flash=request.query_params.get("done") == "revoked",
            series_charts=[
                (
                    name,
                    charts.time_series(
                        list(points), title=f"Telemetry: {name}", style="line", width=420
                    ),
                )
                for name, points in detail.series.items()
            ],
            telemetry_chart=charts.time_series(
                [(t.received_at, float(t.size)) for t in detail.telemetry],
                title="Telemetry payload sizes",
                style="line",
                unit="bytes",
            ),
        )

    return _page(request, build)


@router.get("/devices/{uid}/revoke", include_in_schema=False)
def revoke_form(request: Request, uid: str) -> Response:
    def build(service: DashboardService, principal: Principal) -> HTMLResponse:
        if principal.role not in REVOKERS:
            return _refuse_role(request, principal)
        detail = service.device(uid)
        return _render(
            request, "revoke.html", principal=principal, d=detail, reasons=REASONS, error=None
        )

    return _page(request, build)


@router.post("/devices/{uid}/revoke", include_in_schema=False)
async def revoke(request: Request, uid: str) -> Response:
    principal = principal_of(request)
    secret = session_secret(request)
    if principal is None or secret is None:
        return _error(
            request,
            None,
            401,
            "Signed out",
            "Your session has ended (or the token expired or was revoked). Log in again; "
            "nothing was changed.",
        )
    form = await _form(request)
    if form is None or not check_token(csrf_token(secret), form.get("csrf")):
        return _error(
            request,
            principal,
            403,
            "Form refused",
            "The form expired or did not come from this dashboard (CSRF check failed). Open "
            "the device page again and retry; nothing was changed.",
        )
    if principal.role not in REVOKERS:
        return _refuse_role(request, principal)
    service = _service(request)
    try:
        key = normalize_uid(uid)
        detail = service.device(key)
    except DomainError as exc:
        return _domain_error(request, principal, exc)
    confirm, reason = form.get("confirm_uid"), form.get("reason")
    problem = None
    try:
        typed = normalize_uid(confirm) if isinstance(confirm, str) else ""
    except InvalidInput:
        typed = ""
    if typed != key:
        problem = "The UID you typed does not match this device's UID; nothing was revoked."
    elif not isinstance(reason, str) or reason not in REASONS:
        problem = "Choose one of the listed reasons; nothing was revoked."
    if problem is not None:
        return _render(
            request,
            "revoke.html",
            status=422,
            principal=principal,
            d=detail,
            reasons=REASONS,
            error=problem,
        )
    try:
        service.revoke(key, cast(str, reason), actor=principal.actor)
    except DomainError as exc:
        return _domain_error(request, principal, exc)
    return _redirect(f"{BASE}/devices/{key}?done=revoked")


def install(app: FastAPI, services: FleetServices) -> DashboardService:
    """Mount the dashboard on ``app`` over ``services``; ``/`` redirects to it."""
    service = DashboardService.from_services(services)
    setattr(app.state, SERVICE_STATE_KEY, service)
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return _redirect(BASE)

    return service
