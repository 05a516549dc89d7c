"""Schemathesis over the whole served OpenAPI of the fleet app, on SQLite and PostgreSQL: no 5xx.

The app is the one ``iotid fleet serve`` runs (``create_fleet_app`` over every slice, with the
metrics middleware) on a registry with rows to hit: two imported batches, enrolled devices with
telemetry and a queued command, a published firmware release. Every operation of the document is
fuzzed with an admin token, the state-changing ones too (revocations last, so the other
operations also meet live devices), with cases of three kinds: valid (schemathesis' positive
mode), invalid (negative mode) and valid with a NUL appended to every string (PostgreSQL refuses
NUL in text: it must be refused as input, never reach the driver). Path parameters are swapped
for real UIDs, batch and group names and the body's release for a real one, some of the time.

Checks: no 5xx, and the response matches its documented schema and content type. The status
code itself is not checked: a body that is not JSON is FastAPI's 400 and a newline in the OCSP
GET path is Starlette's 404, neither documented per operation. Hypothesis is derandomized and
bounded (``MAX_EXAMPLES`` per operation) so a run is the same every time and takes seconds.
Schemathesis' pytest loader breaks on our pytest, so Hypothesis drives the strategies directly.

The dashboard's HTML pages are not part of the document (``include_in_schema=False``): this
module asserts it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)
from sqlalchemy.engine import URL

from iotid.factory.batch import BATCHES_DIR, FIRMWARE_KEY
from iotid.factory.firmware import sign_mcuboot
from iotid.factory.line import read_line_key
from iotid.factory.stores import open_store
from iotid.fleet.app import FleetServices, create_fleet_app
from iotid.fleet.auth import Role, create_token
from iotid.fleet.db import Database
from iotid.fleet.gateway import DeviceContext
from iotid.fleet.issuing import serial_hex
from iotid.fleet.metrics import FleetMetrics
from iotid.spec.firmware import ImageVersion
from support.fleetworld import FleetWorld, build_world
from support.gatewayworld import enroll, import_world

BATCHES = {"p256-a": ("p256", 3), "p384-a": ("p384", 2)}
MAX_EXAMPLES = 15
RELEASE = "rel-1"
GROUPS = ["default", "canary"]
REASONS = ["superseded", "key_compromise", "unspecified", "ca_compromise"]
#: Operations run last, in this order: they revoke what the others work on.
LAST = ("POST /v1/devices/{uid}/revoke", "POST /v1/batches/{name}/revoke")

# The OCSP request body is DER, sent as it is.
schemathesis.serializer.alias("application/ocsp-request", "application/octet-stream")


@dataclass(frozen=True)
class Fleet:
    app: FastAPI
    secret: str
    uids: list[str]
    world: FleetWorld
    image: bytes


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[FleetWorld, bytes]:
    world = build_world(tmp_path_factory.mktemp("fleetfuzz"), BATCHES)
    store = open_store(world.ceremony_dir)
    store.unlock_operational(
        read_line_key(world.ceremony_dir / BATCHES_DIR / "p256-a" / "line.key")
    )
    image = sign_mcuboot(
        b"app" * 300, store.signer(FIRMWARE_KEY), version=ImageVersion(1, 0, 0), security_counter=1
    )
    return world, image


@pytest.fixture
def fleet(
    fleet_db: Database, fleet_db_url: URL, world: tuple[FleetWorld, bytes]
) -> Iterator[Fleet]:
    fw, image = world
    import_world(fleet_db, fw)
    services = FleetServices.build(fleet_db, fw.keys)
    uids = []
    for batch in fw.batches.values():
        for card in batch.cards:
            uids.append(card.uid_hex)
        card = batch.cards[0]  # the first of each batch enrolled, with telemetry and a command
        cert = enroll(fleet_db, fw.keys, card)
        ctx = DeviceContext(card.uid_hex, cert, serial_hex(cert.serial_number))
        if batch.alg == "p256":
            payload = b'{"t": 21.5}'
            digest = hashlib.sha256(payload).digest()
            signature = card.se().mtls.sign_digest(digest, "sha256", "ecdsa")
            services.telemetry.accept(ctx, payload, signature)
        services.commands.create(card.uid_hex, b"reboot", actor="test")
    services.firmware.publish(RELEASE, image, None, actor="test")
    services.firmware.assign(GROUPS[1], RELEASE, actor="test")
    token = create_token(fleet_db, Role.ADMIN, dt.timedelta(hours=1))
    app = create_fleet_app(services, FleetMetrics(fleet_db))
    yield Fleet(app, token.secret, uids, fw, image)


def _poison(value: Any) -> Any:
    """``value`` with a NUL appended to every string in it."""
    if isinstance(value, str):
        return value + "\x00"
    if isinstance(value, list):
        return [_poison(v) for v in value]
    if isinstance(value, dict):
        return {k: _poison(v) for k, v in value.items()}
    return value


def _with_nul(case: Any) -> Any:
    if case.query:
        case.query = _poison(case.query)
    if isinstance(case.body, dict | list | str):
        case.body = _poison(case.body)
    return case


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _realistic(case: Any, pick: int, fleet: Fleet, batches: list[str]) -> None:
    """Swap path parameters and the release for rows that exist, on ``pick``."""
    params = case.path_parameters or {}
    if "uid" in params:
        params["uid"] = fleet.uids[pick % len(fleet.uids)]
    if "name" in params:
        params["name"] = batches[pick % len(batches)]
    if "group" in params:
        params["group"] = GROUPS[pick % len(GROUPS)]
    if isinstance(case.body, dict) and "release" in case.body:
        case.body["release"] = RELEASE
    if isinstance(case.body, dict) and "reason" in case.body:
        case.body["reason"] = REASONS[pick % len(REASONS)]
    if isinstance(case.body, dict) and "plaintext" in case.body:
        case.body["plaintext"] = "cmVib290"  # b"reboot"
    if isinstance(case.body, dict) and "manifest" in case.body:  # already imported: 200
        batch = fleet.world.batches[batches[pick % len(batches)]]
        case.body.update(manifest=_b64(batch.manifest_bytes), signature=_b64(batch.signature))
    if isinstance(case.body, dict) and "image" in case.body:  # already published: 200
        case.body.update(name=RELEASE, image=_b64(fleet.image), signature=None)
    if isinstance(case.body, dict) and isinstance(case.body.get("uids"), list):
        case.body["uids"] = [fleet.uids[pick % len(fleet.uids)]]


def _operations(app: FastAPI) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the served OpenAPI is valid
        operations.append(result.ok())

    def order(op: Any) -> tuple[int, str]:
        label = f"{op.method.upper()} {op.path}"
        return (LAST.index(label) + 1 if label in LAST else 0, label)

    return sorted(operations, key=order)


def test_openapi_has_every_operation_and_no_dashboard(fleet: Fleet) -> None:
    with TestClient(fleet.app) as client:
        paths = client.get("/openapi.json").json()["paths"]
        assert client.get("/metrics").status_code == 200  # served, but not in the document
    assert not [p for p in paths if p.startswith(("/dashboard", "/metrics"))]
    labels = {f"{m.upper()} {p}" for p, item in paths.items() for m in item}
    assert {
        "POST /v1/batches",
        "POST /v1/enrollment/nonce",
        "POST /v1/firmware",
        "PUT /v1/firmware/groups/{group}",
        "POST /v1/devices/{uid}/commands",
        "POST /v1/devices/{uid}/revoke",
        "POST /v1/batches/{name}/revoke",
        "POST /ocsp",
    } <= labels
    assert set(LAST) <= labels


def _fuzz(operation: Any, fleet: Fleet, statuses: set[int]) -> None:
    """Run ``MAX_EXAMPLES`` cases of ``operation``; every status seen goes to ``statuses``."""
    label = f"{operation.method.upper()} {operation.path}"
    batches = list(fleet.world.batches)
    headers = {"Authorization": f"Bearer {fleet.secret}"}
    cases = st.one_of(
        operation.as_strategy(),
        operation.as_strategy(GenerationMode.NEGATIVE),
        operation.as_strategy().map(_with_nul),
    )

    @given(case=cases, pick=st.integers(min_value=-1, max_value=7))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any, pick: int) -> None:
        if pick >= 0:
            _realistic(case, pick, fleet, batches)
        response = case.call(headers=headers)
        statuses.add(response.status_code)
        assert response.status_code < 500, (label, case.path_parameters, response.text)
        case.validate_response(
            response,
            checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
        )

    fuzz()


def test_no_server_errors(fleet: Fleet) -> None:
    seen: dict[str, set[int]] = {}
    for operation in _operations(fleet.app):
        _fuzz(
            operation, fleet, seen.setdefault(f"{operation.method.upper()} {operation.path}", set())
        )
    # The fuzzing got past authentication and validation to real rows, reads and writes alike.
    for label in ("GET /v1/devices/{uid}", "GET /v1/devices/{uid}/telemetry", "GET /v1/audit"):
        assert 200 in seen[label], (label, seen[label])
    assert 201 in seen["POST /v1/devices/{uid}/commands"], seen
    for label in ("POST /v1/batches", "POST /v1/firmware", "POST /v1/devices/{uid}/revoke"):
        assert 200 in seen[label], (label, seen[label])
