"""Telemetry: payloads signed by real cards (P-256, P-384 ECDSA; RSA-2048 PSS) verified against
the registry's current identity key, refusals, the device route (always the caller's own
device) and the operator read endpoint; on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL

from iotid.fleet.app import create_app
from iotid.fleet.auth import Role, create_token
from iotid.fleet.db import Database
from iotid.fleet.devices.service import DeviceService
from iotid.fleet.errors import Forbidden, InvalidInput, NotFound
from iotid.fleet.gateway import DeviceContext, GatewayRequest, Routes
from iotid.fleet.issuing import serial_hex
from iotid.fleet.models import DeviceState
from iotid.fleet.telemetry import MAX_PAYLOAD, TelemetryService, verify_identity_signature
from iotid.fleet.telemetry.api import SERVICE_STATE_KEY
from iotid.fleet.telemetry.api import router as telemetry_router
from iotid.fleet.telemetry.gateway import register
from support.fleetworld import FleetWorld, WorldCard, build_world
from support.gatewayworld import enroll, import_world

BATCHES = {"p256-a": ("p256", 2), "p384-a": ("p384", 1), "rsa-a": ("rsa2048", 1)}
SIGN_AS = {"p256": ("sha256", "ecdsa"), "p384": ("sha384", "ecdsa"), "rsa2048": ("sha256", "pss")}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FleetWorld:
    return build_world(tmp_path_factory.mktemp("world"), BATCHES)


def card_sign(card: WorldCard, alg: str, payload: bytes) -> bytes:
    hash_name, scheme = SIGN_AS[alg]
    return card.se().mtls.sign_digest(hashlib.new(hash_name, payload).digest(), hash_name, scheme)


def _card(world: FleetWorld, batch: str, i: int = 0) -> WorldCard:
    return world.batches[batch].cards[i]


@pytest.fixture
def registry(world: FleetWorld, fleet_db: Database) -> dict[str, DeviceContext]:
    """Every card but the second P-256 one enrolled; their DeviceContexts by batch name."""
    import_world(fleet_db, world)
    out = {}
    for name in BATCHES:
        card = _card(world, name)
        cert = enroll(fleet_db, world.keys, card)
        out[name] = DeviceContext(card.uid_hex, cert, serial_hex(cert.serial_number))
    return out


@pytest.mark.parametrize("batch", list(BATCHES))
def test_card_signed_payload_is_stored(
    world: FleetWorld, fleet_db: Database, registry: dict[str, DeviceContext], batch: str
) -> None:
    service = TelemetryService(fleet_db)
    payload = json.dumps({"temp": 21.5, "batch": batch}).encode()
    signature = card_sign(_card(world, batch), BATCHES[batch][0], payload)
    first = service.accept(registry[batch], payload, signature)
    second = service.accept(
        registry[batch], b"second", card_sign(_card(world, batch), BATCHES[batch][0], b"second")
    )
    assert second > first
    items = service.list(registry[batch].uid.lower(), limit=10)
    assert [t.id for t in items] == [second, first]  # newest first
    assert items[1].payload == payload and items[1].signature == signature
    assert items[1].key_epoch == 1
    assert service.list(registry[batch].uid, limit=1)[0].id == second


def test_refusals(
    world: FleetWorld, fleet_db: Database, registry: dict[str, DeviceContext]
) -> None:
    service = TelemetryService(fleet_db)
    ctx = registry["p256-a"]
    card = _card(world, "p256-a")
    payload = b"reading"
    good = card_sign(card, "p256", payload)
    with pytest.raises(InvalidInput) as bad:
        service.accept(ctx, payload + b"!", good)
    assert bad.value.code == "telemetry.bad_signature" and bad.value.status == 422
    # signed by another device's key (the P-384 card), or garbage: refused
    other = card_sign(_card(world, "p384-a"), "p384", payload)
    for signature in (other, b"\x30\x00", b"x" * 2000):
        with pytest.raises(InvalidInput, match="signature"):
            service.accept(ctx, payload, signature)
    # another device's valid signature does not let it post as that device
    with pytest.raises(InvalidInput):
        service.accept(registry["rsa-a"], payload, good)
    with pytest.raises(InvalidInput) as large:
        big = b"x" * (MAX_PAYLOAD + 1)
        service.accept(ctx, big, card_sign(card, "p256", big))
    assert large.value.code == "telemetry.too_large"
    with pytest.raises(InvalidInput):
        service.accept(ctx, b"", good)
    # a device that is not enrolled/active/rotating
    manufactured = _card(world, "p256-a", 1)
    fake = DeviceContext(manufactured.uid_hex, ctx.certificate, ctx.serial)
    with pytest.raises(Forbidden):
        service.accept(fake, payload, card_sign(manufactured, "p256", payload))
    DeviceService(fleet_db, world.root).transition(
        ctx.uid, {DeviceState.ENROLLED}, DeviceState.REVOKED, actor="t"
    )
    with pytest.raises(Forbidden) as revoked:
        service.accept(ctx, payload, good)
    assert revoked.value.code == "device.not_allowed"
    with pytest.raises(NotFound):
        service.list("0102030405")
    with pytest.raises(InvalidInput):
        service.list(ctx.uid, limit=0)
    assert service.list(ctx.uid) == []


def test_verify_identity_signature_rejects_junk_keys() -> None:
    assert not verify_identity_signature(b"not a key", b"m", b"s")


def test_device_route_posts_for_the_caller_only(
    world: FleetWorld, fleet_db: Database, registry: dict[str, DeviceContext]
) -> None:
    routes = Routes()
    service = TelemetryService(fleet_db)
    register(routes, service)
    handler, params = routes.resolve("POST", "/v1/device/telemetry")
    payload = b"from the card"
    body = {
        "payload": base64.b64encode(payload).decode(),
        "signature": base64.b64encode(card_sign(_card(world, "p384-a"), "p384", payload)).decode(),
    }
    request = GatewayRequest(
        "POST", "/v1/device/telemetry", json.dumps(body).encode(), params=params
    )
    response = handler(registry["p384-a"], request)
    assert response.status == 201 and json.loads(response.body)["id"] > 0
    with pytest.raises(InvalidInput):  # the same body from another device's connection
        handler(registry["p256-a"], request)
    assert service.list(registry["p256-a"].uid) == []
    with pytest.raises(InvalidInput) as b64:
        handler(
            registry["p384-a"], GatewayRequest("POST", "/", b'{"payload": "***", "signature": ""}')
        )
    assert b64.value.code == "request.bad_base64"


@pytest.fixture
def client(fleet_db: Database, fleet_db_url: URL, world: FleetWorld) -> Iterator[TestClient]:
    app = create_app(fleet_db_url, world.root.public_bytes(Encoding.PEM))
    setattr(app.state, SERVICE_STATE_KEY, TelemetryService(fleet_db))
    app.include_router(telemetry_router)
    with TestClient(app) as test_client:
        yield test_client


def test_operator_read_endpoint(
    world: FleetWorld,
    fleet_db: Database,
    registry: dict[str, DeviceContext],
    client: TestClient,
) -> None:
    ctx = registry["rsa-a"]
    TelemetryService(fleet_db).accept(ctx, b"p", card_sign(_card(world, "rsa-a"), "rsa2048", b"p"))
    auditor = create_token(fleet_db, Role.AUDITOR, dt.timedelta(hours=1))
    headers = {"Authorization": f"Bearer {auditor.secret}"}
    got = client.get(f"/v1/devices/{ctx.uid.lower()}/telemetry", headers=headers)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["uid"] == ctx.uid and len(body["items"]) == 1
    assert base64.b64decode(body["items"][0]["payload"]) == b"p"
    assert body["items"][0]["key_epoch"] == 1
    assert client.get(f"/v1/devices/{ctx.uid}/telemetry").status_code == 401
    missing = client.get("/v1/devices/00/telemetry", headers=headers)
    assert missing.status_code == 404 and missing.json()["error"] == "device.not_found"
