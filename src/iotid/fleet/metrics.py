"""Prometheus metrics of one fleet process: HTTP traffic, gateway connections, registry gauges.

Scope: :class:`FleetMetrics` owns a private ``CollectorRegistry`` (several apps in one test
process never collide) with

- ``iotid_http_requests_total{face,method,route,status}`` and
  ``iotid_http_request_duration_seconds{face,route}``: every operator API request (``face="api"``,
  by route template, never by raw path, so a UID is not a label; "other" for a path no route
  serves) and gateway request
  (``face="gateway"``);
- ``iotid_gateway_connections`` (live mutual-TLS connections) and
  ``iotid_gateway_dropped_total`` (connections closed because of a revocation);
- at scrape time, from the registry: ``iotid_devices{state}``, ``iotid_revocation_events_total``
  and ``iotid_audit_entries_total``.

:meth:`FleetMetrics.install` adds the API middleware and ``GET /metrics`` (text exposition
format, no token: put it behind the network's own controls). Each worker process exposes its
own counters; the registry gauges are the same in all of them.

Not in scope: logging, tracing, alert rules.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Sequence

from fastapi import FastAPI, Request, Response
from fastapi.routing import iter_route_contexts
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import Scope

from iotid.fleet.db import Database
from iotid.fleet.models import AuditEntry, Device, RevocationEvent

__all__ = ["UNMATCHED_ROUTE", "FleetMetrics"]

#: The route label of a request no served route matched (bounded: never the raw path).
UNMATCHED_ROUTE = "other"


class _RegistryCollector(Collector):
    def __init__(self, db: Database) -> None:
        self._db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        devices = GaugeMetricFamily(
            "iotid_devices", "Registered devices by state", labels=["state"]
        )
        events = GaugeMetricFamily("iotid_revocation_events_total", "Revocation events recorded")
        audit = GaugeMetricFamily("iotid_audit_entries_total", "Audit log entries")
        try:
            with self._db.transaction(write=False) as session:
                rows = session.execute(
                    select(Device.state, func.count()).group_by(Device.state)
                ).all()
                for state, count in rows:
                    devices.add_metric([str(getattr(state, "value", state))], float(count))
                events.add_metric(
                    [], float(session.scalar(select(func.count(RevocationEvent.id))) or 0)
                )
                audit.add_metric([], float(session.scalar(select(func.count(AuditEntry.seq))) or 0))
        except SQLAlchemyError:
            return  # the database is down: /readyz says so; metrics show what they can
        yield devices
        yield events
        yield audit


class FleetMetrics:
    def __init__(self, db: Database) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "iotid_http_requests",
            "HTTP requests served",
            ["face", "method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "iotid_http_request_duration_seconds",
            "HTTP request handling time",
            ["face", "route"],
            registry=self.registry,
        )
        self.connections = Gauge(
            "iotid_gateway_connections", "Live device connections", registry=self.registry
        )
        self.dropped = Counter(
            "iotid_gateway_dropped", "Connections closed on revocation", registry=self.registry
        )
        self.registry.register(_RegistryCollector(db))

    def observe(self, face: str, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(face, method, route, str(status)).inc()
        self.latency.labels(face, route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def install(self, app: FastAPI) -> None:
        """The API middleware (requests by route template) and ``GET /metrics``."""

        @app.middleware("http")
        async def _measure(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            started = time.perf_counter()
            route = _route_template(app.routes, request.scope)  # before the router changes it
            response = await call_next(request)
            self.observe(
                "api",
                request.method,
                route,
                response.status_code,
                time.perf_counter() - started,
            )
            return response

        @app.get("/metrics", include_in_schema=False)
        def metrics() -> Response:
            return Response(self.exposition(), media_type=CONTENT_TYPE_LATEST)


def _route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The template of the route ``scope`` is dispatched to (``/v1/devices/{uid}``), or "other".

    The routes are walked as the router walks them, flattened by FastAPI's
    ``iter_route_contexts`` (an included router is one entry of ``app.routes`` whose routes carry
    the include prefixes): the first full match, else the first partial one (answered 405). A
    mounted application's routes are walked in turn under the mount's prefix; when none matches
    the label is the mount's ``<prefix>/{path}``. A path no route serves is "other", so a client
    cannot grow the label set by probing paths.
    """
    partial: str | None = None
    for context in iter_route_contexts(routes):
        match, child_scope = context.matches(scope)
        template = context.path_format
        if match is Match.FULL:
            if not isinstance(template, str):
                return UNMATCHED_ROUTE
            route = context.original_route
            if isinstance(route, Mount):
                inner = _route_template(route.routes, {**scope, **child_scope})
                if inner != UNMATCHED_ROUTE:
                    return template.removesuffix("/{path}") + inner
            return template
        if match is Match.PARTIAL and partial is None and isinstance(template, str):
            partial = template
    return partial or UNMATCHED_ROUTE
