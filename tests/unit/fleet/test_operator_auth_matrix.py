"""The operator API's authentication matrix, enumerated from the served OpenAPI document so that a
new endpoint is covered the day it is added; on SQLite and PostgreSQL, for both app variants
(registry-only ``create_app`` and the whole fleet app ``create_fleet_app``).

For every operation the document marks as secured: no token, a malformed one, another scheme,
an expired and a revoked token are 401 ``auth.unauthenticated`` with ``WWW-Authenticate:
Bearer``; a role outside the policy is 403 ``auth.forbidden``; a role inside it gets past
authentication. The policy: reads (GET) any role, every other method admin and operator (the
auditor reads only), unless :data:`POLICY` says otherwise. Every operation without security must
be in :data:`PUBLIC` (no token by design): an endpoint that forgets its dependency fails here.

Requests carry no body and a placeholder path parameter: authentication comes first (401, then
403, before any validation), so nothing is changed by an allowed role either (422/404).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update

from iotid.fleet.app import FleetServices, create_app, create_fleet_app
from iotid.fleet.auth import NewToken, Role, create_token
from iotid.fleet.db import Database
from iotid.fleet.metrics import FleetMetrics
from iotid.fleet.models.token import ApiToken
from support.fleetworld import FleetWorld, build_world

HOUR = dt.timedelta(hours=1)
READERS = frozenset(Role)
WRITERS = frozenset({Role.ADMIN, Role.OPERATOR})
#: Operations whose roles differ from the method rule ("METHOD /path" -> roles).
POLICY: dict[str, frozenset[Role]] = {}
#: Operations that take no token by design.
PUBLIC = frozenset(
    {
        "GET /healthz",
        "GET /readyz",
        "POST /v1/enrollment/nonce",  # the quote authenticates the device
        "POST /v1/enrollment",
        "POST /ocsp",  # RFC 6960 / RFC 5280 relying parties
        "GET /ocsp/{encoded}",
        "GET /crl/issuing.crl",
        "GET /crl/root.crl",
    }
)
#: Fits every path parameter pattern of the API (UIDs, batch and group names, OCSP requests).
PLACEHOLDER = "00AA"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FleetWorld:
    return build_world(tmp_path_factory.mktemp("authmatrix"), {"p256-a": ("p256", 1)})


class Matrix:
    def __init__(self, client: TestClient, db: Database) -> None:
        self.client = client
        self.tokens = {role: create_token(db, role, HOUR) for role in Role}
        self.expired = create_token(
            db, Role.ADMIN, dt.timedelta(minutes=1), now=dt.datetime.now(dt.UTC) - HOUR
        )
        self.revoked = create_token(db, Role.ADMIN, HOUR)
        with db.transaction() as session:
            session.execute(
                update(ApiToken)
                .where(ApiToken.id == self.revoked.token_id)
                .values(revoked_at=dt.datetime.now(dt.UTC))
            )

    def operations(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(method, path template, operation object) of every operation in the document."""
        paths = self.client.get("/openapi.json").json()["paths"]
        return [
            (method.upper(), path, op)
            for path, item in paths.items()
            for method, op in item.items()
            if method in ("get", "put", "post", "patch", "delete")
        ]

    def call(self, method: str, template: str, headers: dict[str, str]) -> Any:
        path = template
        for name in ("uid", "name", "group", "encoded"):
            path = path.replace("{" + name + "}", PLACEHOLDER)
        assert "{" not in path, f"{template}: add a placeholder for its parameter"
        return self.client.request(method, path, headers=headers)


def _bearer(token: NewToken | str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token if isinstance(token, str) else token.secret}"}


@pytest.fixture(params=["registry", "fleet"])
def matrix(
    request: pytest.FixtureRequest, fleet_db: Database, world: FleetWorld
) -> Iterator[Matrix]:
    app: FastAPI
    if request.param == "registry":
        app = create_app(fleet_db.url, world.root.public_bytes(serialization.Encoding.PEM))
    else:
        app = create_fleet_app(FleetServices.build(fleet_db, world.keys), FleetMetrics(fleet_db))
    with TestClient(app) as client:
        yield Matrix(client, fleet_db)


def test_every_secured_operation_refuses_bad_credentials(matrix: Matrix) -> None:
    operations = matrix.operations()
    secured = [(m, p, op) for m, p, op in operations if op.get("security")]
    public = {f"{m} {p}" for m, p, op in operations if not op.get("security")}
    assert secured, "no secured operation found"
    assert public <= PUBLIC, f"operations without a token requirement: {public - PUBLIC}"
    bad: list[dict[str, str]] = [
        {},
        _bearer("not-a-token"),
        {"Authorization": f"Basic {matrix.tokens[Role.ADMIN].secret}"},
        _bearer(matrix.expired),
        _bearer(matrix.revoked),
    ]
    for method, path, _op in secured:
        label = f"{method} {path}"
        for headers in bad:
            response = matrix.call(method, path, headers)
            assert response.status_code == 401, (label, list(headers), response.text)
            assert response.json()["error"] == "auth.unauthenticated", label
            assert response.headers["www-authenticate"] == "Bearer", label
        allowed = POLICY.get(label, READERS if method == "GET" else WRITERS)
        for role, token in matrix.tokens.items():
            response = matrix.call(method, path, _bearer(token))
            if role in allowed:
                assert response.status_code not in (401, 403), (label, role, response.text)
            else:
                assert response.status_code == 403, (label, role, response.text)
                assert response.json()["error"] == "auth.forbidden", (label, role)


def test_the_matrix_sees_every_slice(matrix: Matrix) -> None:
    labels = {f"{m} {p}" for m, p, _ in matrix.operations()}
    assert {"POST /v1/batches", "GET /v1/devices", "GET /v1/devices/{uid}"} <= labels
    if "POST /v1/firmware" in labels:  # the whole fleet app
        assert {
            "PUT /v1/firmware/groups/{group}",
            "PATCH /v1/devices/{uid}/group",
            "POST /v1/devices/{uid}/commands",
            "GET /v1/devices/{uid}/telemetry",
            "POST /v1/devices/{uid}/revoke",
            "POST /v1/batches/{name}/revoke",
            "GET /v1/audit",
            "GET /v1/devices/{uid}/trace",
        } <= labels
