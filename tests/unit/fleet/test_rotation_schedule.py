"""Rotation on the operator's schedule, on SQLite and PostgreSQL, with real cards.

Covered: ``POST /v1/rotation/schedule`` by UIDs, group and batch (only enrolled/active devices
marked, one ``rotation.scheduled`` audit entry each, the chain intact), the gateway's whoami
answering ``rotation_due`` before and after, a completed rotation clearing the schedule,
``POST /v1/devices/{uid}/rotation/abort`` (a rotation in flight, a schedule only), the role
checks (auditor 403, no token 401) and the refusals (422 without a selector or with a bad UID,
404 unknown device or batch, 409 nothing to abort), the migration's column matching the model.
Not covered: the device acting on it (tests/integration/test_device_app.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select, update
from sqlalchemy.engine import URL
from test_rotation_service import (  # the module-scoped world is built again for this module
    Fleet,
    card_request,
    fleet,
)

from iotid.fleet.app import create_app
from iotid.fleet.auth import Role, create_token
from iotid.fleet.db import Database
from iotid.fleet.gateway.presence import PresenceService
from iotid.fleet.gateway.routing import DeviceContext
from iotid.fleet.issuing.ca import serial_hex
from iotid.fleet.models import AuditEntry, AuditLog, Certificate, Device, DeviceState
from support.fleetworld import FleetWorld, build_world

__all__ = ["fleet"]  # a fixture, re-registered for this module

HOUR = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FleetWorld:
    return build_world(
        tmp_path_factory.mktemp("schedule-world"), {"p256-r": ("p256", 3), "p384-s": ("p384", 1)}
    )


@dataclass
class Api:
    fleet: Fleet
    client: TestClient
    headers: dict[Role, dict[str, str]]

    def post(
        self, path: str, body: object = None, role: Role | None = Role.OPERATOR
    ) -> httpx.Response:
        headers = {} if role is None else self.headers[role]
        return self.client.post(path, json=body, headers=headers)


@pytest.fixture
def api(fleet: Fleet, fleet_db_url: URL) -> Iterator[Api]:
    root_pem = fleet.world.root.public_bytes(serialization.Encoding.PEM)
    headers = {
        role: {"Authorization": f"Bearer {create_token(fleet.db, role, HOUR).secret}"}
        for role in Role
    }
    with TestClient(create_app(fleet_db_url, root_pem, keys=fleet.world.keys)) as client:
        yield Api(fleet, client, headers)


def whoami(fleet: Fleet, uid: str) -> dict[str, object]:
    with fleet.db.transaction(write=False) as session:
        row = session.execute(
            select(Certificate).join(Device).where(Device.uid == uid).order_by(Certificate.id)
        ).scalars()
        cert = x509.load_der_x509_certificate(list(row)[-1].der)
    ctx = DeviceContext(uid, cert, serial_hex(cert.serial_number))
    return PresenceService(fleet.db).whoami(ctx)


def scheduled_actions(db: Database) -> list[tuple[str, str]]:
    with db.transaction(write=False) as session:
        return [
            (e.subject, e.actor)
            for e in session.execute(
                select(AuditEntry)
                .where(AuditEntry.action == "rotation.scheduled")
                .order_by(AuditEntry.seq)
            ).scalars()
        ]


def test_schedule_by_uids_then_whoami_then_rotation_clears_it(api: Api) -> None:
    fleet = api.fleet
    card = fleet.card()
    manufactured = fleet.world.batches["p256-r"].cards[2].uid_hex  # never enrolled
    assert whoami(fleet, card.uid_hex)["rotation_due"] is False

    response = api.post("/v1/rotation/schedule", {"uids": [card.uid_hex.lower(), manufactured]})
    assert response.status_code == 200, response.text
    assert response.json() == {"scheduled": 1, "uids": [card.uid_hex]}
    assert whoami(fleet, card.uid_hex)["rotation_due"] is True
    (entry,) = scheduled_actions(fleet.db)
    assert entry[0] == f"device:{card.uid_hex}" and entry[1].startswith("token:")
    with fleet.db.transaction(write=False) as s:
        assert AuditLog(s).verify() is not None

    # The device rotates: completion clears the schedule.
    se = card.se()
    result = fleet.service.prepare(*card_request(fleet, card, se).args(card.uid_hex))
    assert whoami(fleet, card.uid_hex)["rotation_due"] is True  # prepared, not yet complete
    assert se.rotation.commit(result.ack) == 2
    assert fleet.service.complete(card.uid_hex, result.serial) == 2
    assert fleet.device(card.uid_hex).rotation_due_at is None
    assert whoami(fleet, card.uid_hex)["rotation_due"] is False


def test_schedule_in_the_future_is_not_due_yet(api: Api) -> None:
    card = api.fleet.card()
    later = (dt.datetime.now(dt.UTC) + HOUR).isoformat()
    response = api.post("/v1/rotation/schedule", {"uids": [card.uid_hex], "at": later})
    assert response.json()["scheduled"] == 1
    assert whoami(api.fleet, card.uid_hex)["rotation_due"] is False


def test_schedule_by_group_and_batch(api: Api) -> None:
    fleet = api.fleet
    a, b = fleet.card(index=0), fleet.card(index=1)
    c = fleet.card("p384-s")
    with fleet.db.transaction() as session:
        session.execute(update(Device).where(Device.uid == b.uid_hex).values(group_name="east"))
    response = api.post("/v1/rotation/schedule", {"group": "east"})
    assert response.json() == {"scheduled": 1, "uids": [b.uid_hex]}
    response = api.post("/v1/rotation/schedule", {"batch": "p384-s"})
    assert response.json() == {"scheduled": 1, "uids": [c.uid_hex]}
    response = api.post("/v1/rotation/schedule", {"batch": "p256-r", "group": "default"})
    # The batch's third card is manufactured: skipped.
    assert response.json() == {"scheduled": 1, "uids": [a.uid_hex]}
    response = api.post("/v1/rotation/schedule", {"group": "nobody-here"})
    assert response.json() == {"scheduled": 0, "uids": []}
    assert len(scheduled_actions(fleet.db)) == 3


def test_revoked_devices_are_not_scheduled(api: Api) -> None:
    fleet = api.fleet
    card = fleet.card()
    with fleet.db.transaction() as session:
        session.execute(
            update(Device).where(Device.uid == card.uid_hex).values(state=DeviceState.REVOKED)
        )
    response = api.post("/v1/rotation/schedule", {"uids": [card.uid_hex]})
    assert response.json() == {"scheduled": 0, "uids": []}
    assert scheduled_actions(fleet.db) == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 422, "rotation.no_selector"),
        ({"uids": None, "group": None, "batch": None}, 422, "rotation.no_selector"),
        ({"uids": ["xyz"]}, 422, "request.invalid"),
        ({"uids": [], "surprise": 1}, 422, "request.invalid"),
        ({"group": "a b"}, 422, "request.invalid"),
        ({"uids": ["00112233445566778899"]}, 404, "device.not_found"),
        ({"batch": "no-such-batch"}, 404, "batch.not_found"),
        ({"uids": ["AA"], "at": "2026-01-01T00:00:00"}, 422, "rotation.naive_time"),
    ],
)
def test_schedule_refusals(api: Api, body: object, status: int, code: str) -> None:
    if "at" in (body if isinstance(body, dict) else {}):
        body = {**body, "uids": [api.fleet.card().uid_hex]}  # type: ignore[dict-item]
    response = api.post("/v1/rotation/schedule", body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert scheduled_actions(api.fleet.db) == []


def test_roles(api: Api) -> None:
    card = api.fleet.card()
    for path in ("/v1/rotation/schedule", f"/v1/devices/{card.uid_hex}/rotation/abort"):
        response = api.post(path, {"uids": [card.uid_hex]}, role=Role.AUDITOR)
        assert response.status_code == 403
        assert response.json()["error"] == "auth.forbidden"
        assert api.post(path, {"uids": [card.uid_hex]}, role=None).status_code == 401
    assert scheduled_actions(api.fleet.db) == []
    response = api.post("/v1/rotation/schedule", {"uids": [card.uid_hex]}, role=Role.ADMIN)
    assert response.status_code == 200


def test_abort(api: Api) -> None:
    fleet = api.fleet
    card = fleet.card()
    path = f"/v1/devices/{card.uid_hex}/rotation/abort"
    response = api.post(path)
    assert response.status_code == 409
    assert response.json()["error"] == "rotation.nothing_to_abort"
    unknown = api.post("/v1/devices/00112233445566778899/rotation/abort")
    assert unknown.status_code == 404
    assert api.post("/v1/devices/not-hex/rotation/abort").status_code == 422

    # Scheduled, not started: the schedule is withdrawn.
    api.post("/v1/rotation/schedule", {"uids": [card.uid_hex]})
    response = api.post(path)
    assert response.json() == {
        "uid": card.uid_hex,
        "aborted_epoch": None,
        "unscheduled": True,
    }
    assert whoami(fleet, card.uid_hex)["rotation_due"] is False

    # Scheduled and in flight: the rotation is aborted and the schedule withdrawn.
    api.post("/v1/rotation/schedule", {"uids": [card.uid_hex]})
    se = card.se()
    result = fleet.service.prepare(*card_request(fleet, card, se).args(card.uid_hex))
    assert fleet.device(card.uid_hex).state == DeviceState.ROTATING
    # The device holds the acknowledgement and may have committed on its card: not without force.
    refused = api.post(path, role=Role.ADMIN)
    assert refused.status_code == 409
    assert refused.json()["error"] == "rotation.acknowledged"
    assert fleet.device(card.uid_hex).state == DeviceState.ROTATING
    response = api.post(path + "?force=true", role=Role.ADMIN)
    assert response.json() == {
        "uid": card.uid_hex,
        "aborted_epoch": 2,
        "unscheduled": True,
    }
    device = fleet.device(card.uid_hex)
    assert (device.state, device.key_epoch, device.rotation_due_at) == (
        DeviceState.ACTIVE,
        1,
        None,
    )
    assert {c.serial: c for c in fleet.certificates(card.uid_hex)}[result.serial].revoked_at
    assert api.post(path).status_code == 409
    actions = fleet.actions(card.uid_hex)
    assert actions.count("rotation.aborted") == 1 and actions.count("rotation.unscheduled") == 2


def test_migration_adds_the_column(fleet: Fleet) -> None:
    with fleet.db.engine.connect() as conn:
        columns = {c["name"]: c for c in inspect(conn).get_columns("devices")}
    assert columns["rotation_due_at"]["nullable"] is True
