"""The audit endpoints of the operator API over HTTP on SQLite and PostgreSQL: any role reads
the log (filters, paging), its verification (and the first edited entry after tampering) and a
device's trace; without a token, 401."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import URL

from iotid.fleet.app import create_app
from iotid.fleet.audit.service import AuditService
from iotid.fleet.auth import NewToken, Role, create_token
from iotid.fleet.db import Database
from iotid.fleet.errors import InvalidInput
from support.fleetworld import FleetWorld, build_world

HOUR = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FleetWorld:
    return build_world(tmp_path_factory.mktemp("audapi"), {"audapi": ("p256", 2)})


@dataclass
class Api:
    client: TestClient
    db: Database
    tokens: dict[Role, NewToken]

    def get(self, path: str, role: Role | None = Role.AUDITOR, **params: Any) -> Any:
        headers = {} if role is None else {"Authorization": f"Bearer {self.tokens[role].secret}"}
        response = self.client.get(path, headers=headers, params=params)
        return response.status_code, response.json()


@pytest.fixture
def api(fleet_db: Database, fleet_db_url: URL, world: FleetWorld) -> Iterator[Api]:
    root_pem = world.root.public_bytes(serialization.Encoding.PEM)
    tokens = {role: create_token(fleet_db, role, HOUR) for role in Role}
    with TestClient(create_app(fleet_db_url, root_pem, keys=world.keys)) as client:
        batch = world.batches["audapi"]
        body = {
            "manifest": base64.b64encode(batch.manifest_bytes).decode(),
            "signature": base64.b64encode(batch.signature).decode(),
        }
        headers = {"Authorization": f"Bearer {tokens[Role.OPERATOR].secret}"}
        assert client.post("/v1/batches", json=body, headers=headers).status_code == 201
        yield Api(client, fleet_db, tokens)


def test_log_verify_and_trace(api: Api, world: FleetWorld) -> None:
    uid = world.batches["audapi"].cards[1].uid_hex
    for path in ("/v1/audit", "/v1/audit/verify", f"/v1/devices/{uid}/trace"):
        assert api.get(path, role=None)[0] == 401
    status, page = api.get("/v1/audit")
    assert status == 200 and [e["action"] for e in page["items"]] == ["batch.imported"]
    assert page["items"][0]["subject"] == "batch:audapi" and page["next_after_seq"] is None
    assert api.get("/v1/audit", subject="batch:audapi", after_seq=1)[1]["items"] == []
    assert api.get("/v1/audit", action="Bad Action")[0] == 422
    assert api.get("/v1/audit", limit=0)[0] == 422

    status, verify = api.get("/v1/audit/verify", role=Role.OPERATOR)
    assert status == 200 and verify["ok"] is True and verify["head_seq"] == 1

    status, trace = api.get(f"/v1/devices/{uid}/trace", role=Role.ADMIN)
    assert status == 200
    assert (trace["uid"], trace["state"], trace["ok"], trace["complete"]) == (
        uid,
        "manufactured",
        True,
        False,
    )
    assert trace["certificates"] == [] and trace["enrollments"] == []
    assert trace["batch"]["name"] == "audapi" and trace["batch"]["ok"] is True
    assert trace["root"]["ceremony_reference"] == trace["ceremony"]["reference"]
    assert trace["ceremony"]["verified"] is False
    assert api.get("/v1/devices/00FF/trace")[0] == 404
    assert api.get("/v1/devices/xyz/trace")[0] == 422

    with api.db.connection() as conn:  # a privileged editor: triggers off, one detail changed
        if api.db.dialect == "postgresql":
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER audit_log_no_update"))
        conn.execute(text("UPDATE audit_log SET subject = 'batch:other' WHERE seq = 1"))
    status, verify = api.get("/v1/audit/verify")
    assert status == 200 and (verify["ok"], verify["seq"]) == (False, 1)
    assert "edited" in verify["reason"]


def test_control_characters_in_the_subject_filter_are_422(api: Api, world: FleetWorld) -> None:
    # Regression (schemathesis, PostgreSQL): a NUL in ``subject`` reached the query and the
    # driver refused it with a 500. Now the request is refused before the database.
    for subject in ("\x00", "batch:\x00audapi", "batch:audapi\n", "\x7f"):
        status, body = api.get("/v1/audit", subject=subject)
        assert status == 422, (subject, body)
        assert body["error"] == "request.invalid"
    with pytest.raises(InvalidInput, match="printable"):
        AuditService(api.db, world.keys).entries(subject="device:\x00")
