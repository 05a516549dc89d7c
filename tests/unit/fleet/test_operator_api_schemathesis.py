"""Schemathesis against the registry-only operator API (``create_app`` without fleet keys) on
SQLite and PostgreSQL, admin token: no 5xx, responses as documented.

The registry holds one imported batch so that list and detail also reach populated paths.
Examples are bounded and derandomized so the module runs in seconds, the same every time. The
whole fleet app (every slice) is fuzzed in test_fleet_api_schemathesis.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)
from sqlalchemy.engine import URL

from iotid.fleet.app import create_app
from iotid.fleet.auth import DB_STATE_KEY, Role, create_token
from iotid.fleet.db import Database
from iotid.fleet.devices import DeviceService


@pytest.fixture
def operator_app(fleet_db_url: URL, manifests: Any) -> Iterator[tuple[FastAPI, str]]:
    url = fleet_db_url
    db = Database(url)
    try:
        db.upgrade()
        data, sig = manifests.make("fuzz-1", manifests.uids(0x10, 5))
        DeviceService(db, manifests.root).import_manifest(data, sig, actor="test")
        token = create_token(db, Role.ADMIN, dt.timedelta(hours=1))
    finally:
        db.dispose()
    app = create_app(url, manifests.root.public_bytes(serialization.Encoding.PEM))
    yield app, token.secret
    getattr(app.state, DB_STATE_KEY).dispose()  # the lifespan does not run under schemathesis


OPERATIONS = ("POST /v1/batches", "GET /v1/devices", "GET /v1/devices/{uid}", "GET /healthz")


def test_no_server_errors(operator_app: tuple[FastAPI, str]) -> None:
    app, secret = operator_app
    # Hypothesis driven directly: schemathesis' pytest loader (from_fixture) breaks on pytest 9.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the served OpenAPI is valid
        operations.append(result.ok())
    assert sorted(f"{op.method.upper()} {op.path}" for op in operations) == sorted(OPERATIONS)
    seen: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=30,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {secret}"})
            seen.append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, response.text)
            case.validate_response(
                response,
                checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
            )

        fuzz()
    assert 200 in seen  # the token worked: the fuzzing reached past authentication
