"""Commands: encryption to the registry's current identity key of real cards (ECIES P-256/P-384,
the RSA-OAEP hybrid), the audit entry without plaintext, per-device isolation of fetch and ack,
refusals, the device routes and the operator endpoint; on SQLite and PostgreSQL.

Decryption by the card itself is in tests/integration/test_gateway_tls.py."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.engine import URL

from iotid.crypto.ecies import (
    SUITE_ECIES_P256,
    SUITE_ECIES_P384,
    SUITE_RSA_OAEP_HYBRID,
    blob_suite,
)
from iotid.fleet.app import create_app
from iotid.fleet.auth import Role, create_token
from iotid.fleet.commands import MAX_PLAINTEXT, CommandService
from iotid.fleet.commands.api import SERVICE_STATE_KEY
from iotid.fleet.commands.api import router as commands_router
from iotid.fleet.commands.gateway import register
from iotid.fleet.db import Database
from iotid.fleet.errors import Conflict, InvalidInput, NotFound
from iotid.fleet.gateway import DeviceContext, GatewayRequest, Routes
from iotid.fleet.issuing import serial_hex
from iotid.fleet.models import AuditEntry, Command
from support.fleetworld import FleetWorld, build_world
from support.gatewayworld import enroll, import_world

BATCHES = {"p256-a": ("p256", 2), "p384-a": ("p384", 1), "rsa-a": ("rsa2048", 1)}
SUITES = {"p256-a": SUITE_ECIES_P256, "p384-a": SUITE_ECIES_P384, "rsa-a": SUITE_RSA_OAEP_HYBRID}
SECRET = b"unlock door 7; pin 424242"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FleetWorld:
    return build_world(tmp_path_factory.mktemp("world"), BATCHES)


@pytest.fixture
def registry(world: FleetWorld, fleet_db: Database) -> dict[str, DeviceContext]:
    import_world(fleet_db, world)
    out = {}
    for name in BATCHES:
        card = world.batches[name].cards[0]
        cert = enroll(fleet_db, world.keys, card, epoch=1)
        out[name] = DeviceContext(card.uid_hex, cert, serial_hex(cert.serial_number))
    return out


@pytest.mark.parametrize("batch", list(BATCHES))
def test_create_encrypts_to_the_current_key(
    fleet_db: Database, registry: dict[str, DeviceContext], batch: str
) -> None:
    service = CommandService(fleet_db)
    ctx = registry[batch]
    created = service.create(ctx.uid.lower(), SECRET, actor="token:1")
    assert created.epoch == 1
    (pending,) = service.pending(ctx.uid)
    assert (pending.id, pending.epoch) == (created.id, 1)
    assert blob_suite(pending.ciphertext) == SUITES[batch]
    assert SECRET not in pending.ciphertext
    with fleet_db.transaction(write=False) as session:
        (entry,) = session.execute(
            select(AuditEntry).where(AuditEntry.action == "command.created")
        ).scalars()
        stored = session.execute(select(Command)).scalar_one()
    assert entry.subject == f"device:{ctx.uid}" and entry.actor == "token:1"
    assert entry.details["command_id"] == created.id and entry.details["epoch"] == 1
    text = json.dumps(entry.details)
    for form in (SECRET.decode(), base64.b64encode(SECRET).decode(), SECRET.hex()):
        assert form not in text
    assert stored.created_by == "token:1" and stored.delivered_at is None


def test_fetch_and_ack_are_per_device(
    fleet_db: Database, registry: dict[str, DeviceContext]
) -> None:
    service = CommandService(fleet_db)
    a, b = registry["p256-a"].uid, registry["p384-a"].uid
    first = service.create(a, b"one", actor="t").id
    second = service.create(a, b"two", actor="t").id
    assert [c.id for c in service.pending(a)] == [first, second]
    assert service.pending(b) == []
    with pytest.raises(NotFound) as other:
        service.ack(b, first)  # another device's command: as if it did not exist
    assert other.value.code == "command.not_found"
    with pytest.raises(NotFound):
        service.ack(a, 10**9)
    assert service.ack(a, first) == first
    assert service.ack(a, first) == first  # idempotent
    assert [c.id for c in service.pending(a)] == [second]


def test_refusals(
    world: FleetWorld, fleet_db: Database, registry: dict[str, DeviceContext]
) -> None:
    service = CommandService(fleet_db)
    with pytest.raises(NotFound):
        service.create("0102030405", b"x", actor="t")
    manufactured = world.batches["p256-a"].cards[1].uid_hex
    with pytest.raises(Conflict) as state:
        service.create(manufactured, b"x", actor="t")
    assert state.value.code == "device.wrong_state"
    uid = registry["p256-a"].uid
    with pytest.raises(InvalidInput):
        service.create(uid, b"", actor="t")
    with pytest.raises(InvalidInput) as large:
        service.create(uid, b"x" * (MAX_PLAINTEXT + 1), actor="t")
    assert large.value.code == "command.too_large"
    with pytest.raises(NotFound):
        service.pending("0102030405")


def test_device_routes(fleet_db: Database, registry: dict[str, DeviceContext]) -> None:
    routes = Routes()
    service = CommandService(fleet_db)
    register(routes, service)
    a, b = registry["p256-a"], registry["rsa-a"]
    created = service.create(a.uid, SECRET, actor="t")
    handler, params = routes.resolve("GET", "/v1/device/commands")
    listed = json.loads(handler(a, GatewayRequest("GET", "/", params=params)).body)
    (item,) = listed["commands"]
    assert (item["id"], item["epoch"]) == (created.id, 1)
    assert blob_suite(base64.b64decode(item["ciphertext"])) == SUITE_ECIES_P256
    assert json.loads(handler(b, GatewayRequest("GET", "/", params=params)).body) == {
        "commands": []
    }
    path = f"/v1/device/commands/{created.id}/ack"
    ack, params = routes.resolve("POST", path)
    with pytest.raises(NotFound):
        ack(b, GatewayRequest("POST", path, params=params))
    assert json.loads(ack(a, GatewayRequest("POST", path, params=params)).body) == {
        "id": created.id
    }
    bad, params = routes.resolve("POST", "/v1/device/commands/abc/ack")
    with pytest.raises(NotFound):
        bad(a, GatewayRequest("POST", "/", params=params))


@pytest.fixture
def client(fleet_db: Database, fleet_db_url: URL, world: FleetWorld) -> Iterator[TestClient]:
    app = create_app(fleet_db_url, world.root.public_bytes(Encoding.PEM))
    setattr(app.state, SERVICE_STATE_KEY, CommandService(fleet_db))
    app.include_router(commands_router)
    with TestClient(app) as test_client:
        yield test_client


def test_operator_endpoint(
    fleet_db: Database, registry: dict[str, DeviceContext], client: TestClient
) -> None:
    uid = registry["p384-a"].uid
    tokens = {role: create_token(fleet_db, role, dt.timedelta(hours=1)) for role in Role}
    body = {"plaintext": base64.b64encode(SECRET).decode()}
    path = f"/v1/devices/{uid}/commands"
    for role in (Role.ADMIN, Role.OPERATOR):
        got = client.post(
            path, json=body, headers={"Authorization": f"Bearer {tokens[role].secret}"}
        )
        assert got.status_code == 201, got.text
        assert set(got.json()) == {"id", "epoch"} and got.json()["epoch"] == 1
    auditor = {"Authorization": f"Bearer {tokens[Role.AUDITOR].secret}"}
    assert client.post(path, json=body, headers=auditor).status_code == 403
    assert client.post(path, json=body).status_code == 401
    admin = {"Authorization": f"Bearer {tokens[Role.ADMIN].secret}"}
    bad = client.post(path, json={"plaintext": "***"}, headers=admin)
    assert bad.status_code == 422 and bad.json()["error"] == "request.bad_base64"
    missing = client.post("/v1/devices/00/commands", json=body, headers=admin)
    assert missing.status_code == 404
