"""The firmware endpoints of the operator API over HTTP on SQLite and PostgreSQL: roles (admin and
operator write, any role reads), publish (201, then 200 for the same bytes, 409 for others, 422
for malformed), group assignment, a device's group, rollout."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL

from iotid.factory.batch import BATCHES_DIR, FIRMWARE_KEY
from iotid.factory.firmware import sign_mcuboot
from iotid.factory.line import read_line_key
from iotid.factory.stores import open_store
from iotid.fleet.app import create_app
from iotid.fleet.auth import NewToken, Role, create_token
from iotid.fleet.db import Database
from iotid.spec.firmware import ImageVersion
from support.fleetworld import FleetWorld, build_world

HOUR = dt.timedelta(hours=1)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class World:
    world: FleetWorld
    image: bytes
    other: bytes


@pytest.fixture(scope="module")
def fw(tmp_path_factory: pytest.TempPathFactory) -> World:
    world = build_world(tmp_path_factory.mktemp("fwapi"), {"fwapi": ("p256", 2)})
    store = open_store(world.ceremony_dir)
    store.unlock_operational(read_line_key(world.ceremony_dir / BATCHES_DIR / "fwapi" / "line.key"))
    signer = store.signer(FIRMWARE_KEY)
    image = sign_mcuboot(b"app" * 500, signer, version=ImageVersion(1, 0, 0), security_counter=1)
    other = sign_mcuboot(b"app" * 501, signer, version=ImageVersion(1, 0, 1), security_counter=1)
    return World(world, image, other)


@dataclass
class Api:
    client: TestClient
    tokens: dict[Role, NewToken]

    def call(self, role: Role, method: str, path: str, body: object = None) -> tuple[int, object]:
        headers = {"Authorization": f"Bearer {self.tokens[role].secret}"}
        response = self.client.request(method, path, headers=headers, json=body)
        return response.status_code, response.json()


@pytest.fixture
def api(fleet_db: Database, fleet_db_url: URL, fw: World) -> Iterator[Api]:
    world = fw.world
    root_pem = world.root.public_bytes(serialization.Encoding.PEM)
    tokens = {role: create_token(fleet_db, role, HOUR) for role in Role}
    with TestClient(create_app(fleet_db_url, root_pem, keys=world.keys)) as client:
        batch = world.batches["fwapi"]
        body = {"manifest": _b64(batch.manifest_bytes), "signature": _b64(batch.signature)}
        headers = {"Authorization": f"Bearer {tokens[Role.ADMIN].secret}"}
        assert client.post("/v1/batches", json=body, headers=headers).status_code == 201
        yield Api(client, tokens)


def test_publish_list_assign_rollout(api: Api, fw: World) -> None:
    uid = fw.world.batches["fwapi"].cards[0].uid_hex
    publish = {"name": "app-1", "image": _b64(fw.image), "signature": None}
    assert api.call(Role.AUDITOR, "POST", "/v1/firmware", publish)[0] == 403
    status, body = api.call(Role.OPERATOR, "POST", "/v1/firmware", publish)
    assert status == 201
    assert isinstance(body, dict) and (body["kind"], body["version"]) == ("mcuboot", "1.0.0+0")
    assert api.call(Role.ADMIN, "POST", "/v1/firmware", publish)[0] == 200
    conflict = {**publish, "image": _b64(fw.other)}
    status, body = api.call(Role.ADMIN, "POST", "/v1/firmware", conflict)
    assert status == 409 and isinstance(body, dict) and body["error"] == "firmware.conflict"
    bad = {"name": "bad", "image": _b64(b"not firmware"), "signature": None}
    status, body = api.call(Role.ADMIN, "POST", "/v1/firmware", bad)
    assert status == 422 and isinstance(body, dict)
    assert body["error"] == "firmware.signature_required"
    assert api.call(Role.ADMIN, "POST", "/v1/firmware", {**bad, "image": "***"})[0] == 422

    status, body = api.call(Role.AUDITOR, "GET", "/v1/firmware")
    assert status == 200 and isinstance(body, dict)
    assert [r["name"] for r in body["items"]] == ["app-1"]

    assign = {"release": "app-1"}
    assert api.call(Role.AUDITOR, "PUT", "/v1/firmware/groups/canary", assign)[0] == 403
    assert api.call(Role.OPERATOR, "PUT", "/v1/firmware/groups/canary", assign)[0] == 200
    assert api.call(Role.OPERATOR, "PUT", "/v1/firmware/groups/canary", {"release": "x"})[0] == 404
    assert api.call(Role.OPERATOR, "PUT", "/v1/firmware/groups/a%20b", assign)[0] == 422
    group = {"group": "canary"}
    assert api.call(Role.AUDITOR, "PATCH", f"/v1/devices/{uid}/group", group)[0] == 403
    status, body = api.call(Role.ADMIN, "PATCH", f"/v1/devices/{uid.lower()}/group", group)
    assert status == 200 and body == {"uid": uid, "group": "canary", "previous": "default"}
    assert api.call(Role.ADMIN, "PATCH", "/v1/devices/00/group", group)[0] == 404

    status, body = api.call(Role.AUDITOR, "GET", "/v1/firmware/rollout")
    assert status == 200 and isinstance(body, dict)
    groups = {g["group"]: g for g in body["groups"]}
    assert groups["canary"] == {
        "group": "canary",
        "release": "app-1",
        "version": "1.0.0+0",
        "devices": 1,
        "reported_version_count": 0,
        "valid": 0,
        "invalid": 0,
    }
    assert groups["default"]["devices"] == 1 and groups["default"]["release"] is None
