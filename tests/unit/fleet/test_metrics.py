"""The fleet's Prometheus metrics on the operator API: every served route of the whole fleet app
is counted under its template (``/v1/devices/{uid}``, never a UID), a path no route serves under
"other", a 405 under the route it missed, a mounted sub-application's routes under the mount's
prefix; the registry gauges at scrape time; on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from iotid.fleet.app import FleetServices, create_fleet_app
from iotid.fleet.auth import Role, create_token
from iotid.fleet.db import Database
from iotid.fleet.metrics import UNMATCHED_ROUTE, FleetMetrics
from support.fleetworld import FleetWorld, build_world
from support.gatewayworld import import_world

PLACEHOLDER = "00AA"
HOUR = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FleetWorld:
    return build_world(tmp_path_factory.mktemp("metrics"), {"p256-a": ("p256", 2)})


@pytest.fixture
def served(fleet_db: Database, world: FleetWorld) -> Iterator[tuple[FastAPI, FleetMetrics]]:
    import_world(fleet_db, world)
    metrics = FleetMetrics(fleet_db)
    app = create_fleet_app(FleetServices.build(fleet_db, world.keys), metrics)
    yield app, metrics


def _counted(metrics: FleetMetrics) -> dict[tuple[str, str], set[str]]:
    """(method, route) -> statuses of ``iotid_http_requests_total`` as scraped."""
    out: dict[tuple[str, str], set[str]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == "iotid_http_requests_total":
                key = (sample.labels["method"], sample.labels["route"])
                out.setdefault(key, set()).add(sample.labels["status"])
    return out


def _concrete(template: str) -> str:
    path = template
    while "{" in path:
        start = path.index("{")
        path = path[:start] + PLACEHOLDER + path[path.index("}", start) + 1 :]
    return path


def test_every_served_route_is_labelled_by_its_template(
    served: tuple[FastAPI, FleetMetrics], fleet_db: Database, world: FleetWorld
) -> None:
    app, metrics = served
    admin = {"Authorization": f"Bearer {create_token(fleet_db, Role.ADMIN, HOUR).secret}"}
    uid = world.batches["p256-a"].cards[0].uid_hex
    expected: set[tuple[str, str]] = set()
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as client:
        for route in iter_route_contexts(app.routes):  # included routers flattened
            methods = sorted(route.methods or {"GET"})
            method = "GET" if "GET" in methods else methods[0]
            assert isinstance(route.path_format, str)
            client.request(method, _concrete(route.path_format))
            expected.add((method, route.path_format))
        client.get("/v1/devices", params={"uid_prefix": "00"})
        client.get("/nowhere/0011223344")  # 404: no route
        client.get("/v1/devices/00AA/nowhere")
        client.delete("/v1/devices/00AA")  # 405 on a known route
        assert client.get(f"/v1/devices/{uid}", headers=admin).status_code == 200
    counted = _counted(metrics)
    missing = expected - set(counted)
    assert not missing, f"routes not counted under their template: {sorted(missing)}"
    assert ("GET", "/v1/devices/{uid}") in counted and "200" in counted["GET", "/v1/devices/{uid}"]
    assert counted["GET", UNMATCHED_ROUTE] == {"404"}
    assert counted["DELETE", "/v1/devices/{uid}"] == {"405"}
    labels = {route for _, route in counted}
    assert labels <= {r.path_format for r in iter_route_contexts(app.routes)} | {UNMATCHED_ROUTE}
    assert not [label for label in labels if PLACEHOLDER in label or "nowhere" in label]


def test_mounted_and_included_routes_carry_their_prefix(fleet_db: Database) -> None:
    metrics = FleetMetrics(fleet_db)
    inner = FastAPI()

    @inner.get("/items/{item}")
    def item(item: str) -> dict[str, str]:
        return {"item": item}

    router = APIRouter(prefix="/v2")

    @router.get("/things/{thing}")
    def thing(thing: str) -> dict[str, str]:
        return {"thing": thing}

    app = FastAPI()
    metrics.install(app)
    app.include_router(router, prefix="/api")  # an include-time prefix
    app.mount("/sub", inner)
    with TestClient(app) as client:
        assert client.get("/sub/items/42").json() == {"item": "42"}
        assert client.get("/sub/nothing/here").status_code == 404
        assert client.get("/elsewhere").status_code == 404
        assert client.get("/metrics").status_code == 200
        assert client.get("/api/v2/things/1").status_code == 200
    counted = _counted(metrics)
    assert counted["GET", "/api/v2/things/{thing}"] == {"200"}
    assert counted["GET", "/sub/items/{item}"] == {"200"}
    assert counted["GET", "/sub/{path}"] == {"404"}
    assert counted["GET", UNMATCHED_ROUTE] == {"404"}
    assert counted["GET", "/metrics"] == {"200"}


def test_registry_gauges_at_scrape_time(served: tuple[FastAPI, FleetMetrics]) -> None:
    _app, metrics = served
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    (devices,) = families["iotid_devices"].samples
    assert (devices.labels, devices.value) == ({"state": "manufactured"}, 2.0)
    (audit,) = families["iotid_audit_entries_total"].samples
    assert audit.value == 1.0  # the batch import
